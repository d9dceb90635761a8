"""LeakageMonitor: the size-weighted mean of the batch dCor(x, client(x)) on validation, logged and summarized."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl.callbacks import LeakageMonitor, RunSummary
from lightning_dsl.privacy import distance_correlation

from .conftest import INPUT_SHAPE


def uneven_val_loader() -> DataLoader:
    """13 samples in batches of 8 and 5, so the weighting by batch size shows."""
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(13, *INPUT_SHAPE, generator=generator)
    return DataLoader(TensorDataset(inputs, torch.randint(0, 3, (13,), generator=generator)), batch_size=8)


def expected_dcor(module: Any, loader: DataLoader, batches: int | None) -> float:
    module.eval()
    total, samples = 0.0, 0
    with torch.no_grad():
        for index, (x, _) in enumerate(loader):
            if batches is not None and index >= batches:
                break
            total += distance_correlation(x.double(), module.client(x).double()).item() * len(x)
            samples += len(x)
    return total / samples


@pytest.mark.parametrize(("max_batches", "measured"), [(None, 2), (1, 1)])
def test_logs_the_batch_size_weighted_mean(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path, max_batches: int | None, measured: int
) -> None:
    monitor = LeakageMonitor(max_batches=max_batches)
    summary = RunSummary(print_summary=False)
    logger = CSVLogger(tmp_path, name="csv")
    module = make_module("dsl")
    trainer = make_trainer([monitor, summary], max_epochs=2, logger=logger, num_sanity_val_steps=1)
    train, _ = loaders()
    val = uneven_val_loader()
    trainer.fit(module, train, val)

    expected = expected_dcor(module, val, measured)
    assert monitor.value == pytest.approx(expected, abs=1e-6)
    assert trainer.callback_metrics["privacy/dcor"].item() == pytest.approx(expected, abs=1e-6)
    assert len(monitor.history) == 2  # one per epoch; the sanity check is no epoch
    written = json.loads(summary.path.read_text())
    assert written["privacy/dcor"] == pytest.approx(expected, abs=1e-6)
    assert [row["privacy/dcor"] for row in written["history"]] == pytest.approx(monitor.history, abs=1e-6)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("privacy/dcor")]
    assert [float(r["privacy/dcor"]) for r in rows] == pytest.approx(monitor.history, abs=1e-6)


def test_identity_client_leaks_everything(make_trainer: Any, loaders: Any) -> None:
    from lightning_dsl import DecoupledSplitModule

    network = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Flatten(), torch.nn.Linear(25, 3))
    module = DecoupledSplitModule(network, split_index=1, mode="dsl", num_classes=3, aux_head="linear")
    monitor = LeakageMonitor()
    make_trainer([monitor]).fit(module, *loaders())
    assert monitor.value == pytest.approx(1.0, abs=1e-9)


def test_off_and_in_validate(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    off = LeakageMonitor(max_batches=0)
    trainer = make_trainer([off])
    trainer.fit(make_module("sl"), *loaders())
    assert off.value is None and off.summary() == {} and "privacy/dcor" not in trainer.callback_metrics
    monitor = LeakageMonitor()
    trainer = make_trainer([monitor])
    trainer.validate(make_module("sl"), loaders()[1])
    assert monitor.value is not None and monitor.history == []  # validate() alone is no epoch of a fit


def test_state_dict_round_trip() -> None:
    monitor = LeakageMonitor()
    monitor.value, monitor.history = 0.5, [0.7, 0.5]
    restored = LeakageMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert (restored.value, restored.history) == (0.5, [0.7, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batches": -1}, "`max_batches` to be >= 0"),
        ({"max_batches": 2.5}, "`max_batches` to be an int"),
        ({"max_batches": True}, "`max_batches` to be an int"),
        ({"dtype": "int32"}, "`dtype` to be one of"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LeakageMonitor(**kwargs)


def test_reads_z_from_the_modules_own_forward_and_leaves_no_hook(
    make_module: Any, make_trainer: Any, loaders: Any
) -> None:
    module = make_module("dsl")
    calls = []
    module.client.register_forward_hook(lambda *_: calls.append(1))
    monitor = LeakageMonitor(max_batches=None)
    trainer = make_trainer([monitor], limit_train_batches=0)
    threads = torch.get_num_threads()
    trainer.validate(module, loaders()[1])
    assert torch.get_num_threads() == threads  # the monitor computes on one thread and restores the count
    assert len(calls) == 2  # one client forward per validation batch: the monitor added none
    assert len(module.client._forward_hooks) == 1  # only the test's own hook is left
    assert monitor.value == pytest.approx(expected_dcor(module, loaders()[1], None), abs=1e-6)


def test_computes_z_when_the_evaluation_skips_the_client(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    module = make_module("dsl")
    module.validation_step = lambda batch, batch_idx: None  # evaluates nothing through the client
    monitor = LeakageMonitor(max_batches=None)
    make_trainer([monitor]).validate(module, loaders()[1])
    assert monitor.value == pytest.approx(expected_dcor(module, loaders()[1], None), abs=1e-6)
