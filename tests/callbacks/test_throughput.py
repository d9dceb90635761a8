"""SplitThroughputMonitor: samples per second of each side and of the step, against a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_dsl.callbacks import SplitThroughputMonitor
from lightning_dsl.callbacks.throughput import default_batch_size

from .conftest import BATCH


class Clock:
    """A clock that only moves when a :class:`Tick` runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tick(nn.Module):
    """Identity whose forward takes ``seconds[i]`` on the clock in training (the last value repeats)."""

    def __init__(self, clock: Clock, *seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, list(seconds)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.clock.now += self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]
        return x


def timed_network(clock: Clock, client: tuple[float, ...], server: tuple[float, ...]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        Tick(clock, *client),
        nn.Flatten(),
        Tick(clock, *server),
        nn.Linear(100, 3),
    )


@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_rates_against_a_fake_clock(make_module: Any, make_trainer: Any, loaders: Any, mode: str) -> None:
    clock = Clock()
    monitor = SplitThroughputMonitor()
    monitor.clock = clock
    module = make_module(mode, network=timed_network(clock, (0.25,), (1.0,)), split_index=3)
    trainer = make_trainer([monitor], max_epochs=2)
    trainer.fit(module, *loaders())
    # Nothing but the two ticks moves the clock: client 0.25 s, server 1 s, step 1.25 s per batch of 8.
    expected = {"client_samples_per_sec": 32.0, "server_samples_per_sec": 8.0, "samples_per_sec": 6.4}
    assert monitor.summary() == pytest.approx({f"throughput/{k}": v for k, v in expected.items()})
    for name, value in expected.items():
        assert trainer.callback_metrics[f"throughput/{name}"].item() == pytest.approx(value)
    assert monitor._phase not in module._phase_hooks


def test_skip_first_and_batch_size_fn(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    clock = Clock()
    monitor = SplitThroughputMonitor(skip_first=1, batch_size_fn=lambda batch: 2 * len(batch[0]))
    monitor.clock = clock
    module = make_module("dsl", network=timed_network(clock, (4.0, 0.5), (0.5,)), split_index=3)
    make_trainer([monitor]).fit(module, *loaders())
    # The slow first batch (4 s on the client) is left out; each batch "holds" 16 samples.
    assert monitor.summary() == pytest.approx(
        {
            "throughput/client_samples_per_sec": 2 * BATCH / 0.5,
            "throughput/server_samples_per_sec": 2 * BATCH / 0.5,
            "throughput/samples_per_sec": 2 * BATCH / 1.0,
        }
    )


def test_real_clock_step_is_slower_than_each_side(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    monitor = SplitThroughputMonitor()
    trainer = make_trainer([monitor])
    trainer.fit(make_module("sl"), *loaders())
    rates = monitor.summary()
    assert 0 < rates["throughput/samples_per_sec"] <= rates["throughput/client_samples_per_sec"]
    assert rates["throughput/samples_per_sec"] <= rates["throughput/server_samples_per_sec"]


def test_default_batch_size() -> None:
    assert default_batch_size((torch.zeros(5, 3), torch.zeros(5))) == 5
    assert default_batch_size({"image": torch.zeros(7, 1)}) == 7
    with pytest.raises(ValueError, match="batch_size_fn"):
        default_batch_size("not a batch")


def test_bad_skip_first() -> None:
    with pytest.raises(ValueError, match="`skip_first`.*-1"):
        SplitThroughputMonitor(skip_first=-1)
