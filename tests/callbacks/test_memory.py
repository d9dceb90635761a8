"""PeakMemoryMonitor: saved-activation peaks per side against hand-worked numbers, and dsl below sl."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_dsl.callbacks import PeakMemoryMonitor

from .conftest import TRAIN_BATCHES

F32 = 4


def balanced_mlp() -> nn.Sequential:
    """Two hidden layers of width 32 on each side of the cut (split_index=4)."""
    return nn.Sequential(
        *(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()),  # client
        *(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)),  # server
    )


# Bytes autograd saves in one step, batch 8, float32 (parameters and their transposed views left out):
ACTIVATION = 8 * 32 * F32  # one hidden activation: 1024
INPUT = 8 * 16 * F32  # the batch, saved by the first linear layer: 512
# cross_entropy: log_softmax saves its output (8 x 3), nll_loss the int64 labels and a float32 scalar.
LOSS = 8 * 3 * F32
LABELS = 8 * 8 + F32
# Client forward: input, two ReLU outputs (the second is z, saved again by the auxiliary head's
# linear layer), the auxiliary loss.
CLIENT = INPUT + 2 * ACTIVATION + LOSS + LABELS  # 2724
# dsl: the client's graph is freed before the server runs; the server saves z (as its input),
# two ReLU outputs and its loss, the labels included.
DSL_SERVER = 3 * ACTIVATION + LOSS + LABELS  # 3236
# sl: z and the labels are still held by the client's graph (charged there once), so the server
# adds its two ReLU outputs and its loss; the client's second phase saves the gradient that came
# down (z * gradient) while its forward graph is alive.
SL_SERVER = 2 * ACTIVATION + LOSS + F32  # 2148
SL_CLIENT = CLIENT + ACTIVATION  # 3748


@pytest.mark.parametrize(
    ("mode", "client", "server", "combined"),
    [
        ("dsl", CLIENT, DSL_SERVER, max(CLIENT, DSL_SERVER)),
        ("sl", SL_CLIENT, SL_SERVER, CLIENT + SL_SERVER),
    ],
)
def test_saved_peaks_by_hand(
    make_module: Any, make_trainer: Any, loaders: Any, mode: str, client: int, server: int, combined: int
) -> None:
    monitor = PeakMemoryMonitor()
    module = make_module(mode, network=balanced_mlp(), split_index=4, input_shape=(16,))
    trainer = make_trainer([monitor])
    trainer.fit(module, *loaders(shape=(16,)))
    assert monitor.saved_client_peak_bytes == client
    assert monitor.saved_server_peak_bytes == server
    assert monitor.saved_activation_peak_bytes == combined
    assert trainer.callback_metrics["memory/saved_client_peak_bytes"].item() == client
    assert trainer.callback_metrics["memory/saved_server_peak_bytes"].item() == server
    assert trainer.callback_metrics["memory/saved_peak_bytes"].item() == combined
    assert monitor.tracker.live_bytes == 0  # nothing of a step outlives it
    assert monitor._phase not in module._phase_hooks  # removed at the end of fit
    assert monitor.summary() == {
        "memory/saved_peak_bytes": combined,
        "memory/saved_client_peak_bytes": client,
        "memory/saved_server_peak_bytes": server,
    }


def test_dsl_holds_less_than_sl_when_the_sides_are_balanced(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    peaks = {}
    for mode in ("dsl", "sl"):
        monitor = PeakMemoryMonitor()
        make_trainer([monitor]).fit(
            make_module(mode, network=balanced_mlp(), split_index=4, input_shape=(16,)), *loaders(shape=(16,))
        )
        peaks[mode] = monitor.saved_activation_peak_bytes
    assert peaks["dsl"] < 0.7 * peaks["sl"]  # 3236 / 4872 = 0.66: max(client, server) / (client + server)


def test_step_interval_logs_every_step(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    monitor = PeakMemoryMonitor(logging_interval="step")
    module = make_module("dsl", network=balanced_mlp(), split_index=4, input_shape=(16,))
    make_trainer([monitor], logger=logger).fit(module, *loaders(shape=(16,)))
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["memory/saved_peak_bytes"]]
    assert [float(row["memory/saved_peak_bytes"]) for row in rows] == [DSL_SERVER] * TRAIN_BATCHES
    assert [float(row["memory/saved_client_peak_bytes"]) for row in rows] == [CLIENT] * TRAIN_BATCHES


def test_saved_tensors_off_tracks_nothing(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    monitor = PeakMemoryMonitor(saved_tensors=False)
    module = make_module("dsl", network=balanced_mlp(), split_index=4, input_shape=(16,))
    trainer = make_trainer([monitor])
    trainer.fit(module, *loaders(shape=(16,)))
    assert monitor.saved_activation_peak_bytes == 0 and monitor.tracker.peak_bytes == 0
    assert monitor.summary() == {}  # on CPU: no CUDA peaks either
    assert not [key for key in trainer.logged_metrics if key.startswith("memory/")]


def test_peaks_survive_a_resume() -> None:
    monitor = PeakMemoryMonitor()
    monitor.saved_activation_peak_bytes, monitor.saved_client_peak_bytes, monitor.saved_server_peak_bytes = 9, 5, 7
    restored = PeakMemoryMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert (
        restored.summary()
        == monitor.summary()
        == {
            "memory/saved_peak_bytes": 9,
            "memory/saved_client_peak_bytes": 5,
            "memory/saved_server_peak_bytes": 7,
        }
    )


def test_bad_logging_interval() -> None:
    with pytest.raises(ValueError, match="`logging_interval`.*'batch'"):
        PeakMemoryMonitor(logging_interval="batch")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peaks(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    monitor = PeakMemoryMonitor(logging_interval="step")
    module = make_module("sl", network=balanced_mlp(), split_index=4, input_shape=(16,))
    trainer = make_trainer([monitor], accelerator="cuda")
    trainer.fit(module, *loaders(shape=(16,)))
    metrics = trainer.callback_metrics
    client, server = metrics["memory/cuda_client_peak_bytes"].item(), metrics["memory/cuda_server_peak_bytes"].item()
    assert 0 < client <= metrics["memory/cuda_step_peak_bytes"].item()
    assert 0 < server <= metrics["memory/cuda_step_peak_bytes"].item()
    assert monitor.cuda_step_peak_bytes is not None and monitor.cuda_step_peak_bytes >= max(client, server)
    assert monitor.saved_activation_peak_bytes == CLIENT + SL_SERVER  # the same count on any device
    assert "memory/cuda_step_peak_bytes" in monitor.summary()
