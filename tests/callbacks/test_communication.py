"""CommunicationMonitor: exact bytes across the cut, epoch sums, totals across a resume, and the loggers."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor, SplitThroughputMonitor

from .conftest import BATCH, TRAIN_BATCHES, VAL_BATCHES

# The tiny network's cut activation z is (8, 4, 5, 5): 800 values per batch, labels are 8 int64.
VALUES = BATCH * 4 * 5 * 5
LABELS = BATCH * 8


@pytest.mark.parametrize(
    ("mode", "options", "precision", "up", "down"),
    [
        ("dsl", {}, "32-true", VALUES * 4 + LABELS, 0),
        ("sl", {}, "32-true", VALUES * 4 + LABELS, VALUES * 4),
        ("sl", {"codec": "fp16", "grad_codec": "fp16"}, "32-true", VALUES * 2 + LABELS, VALUES * 2),
        ("dsl", {"codec": "int8"}, "32-true", VALUES + 2 * 4 + LABELS, 0),  # uint8 codes + float32 scale, offset
        ("sl", {"codec": "int8-channel", "grad_codec": "bf16"}, "32-true", VALUES + 2 * 4 * 4 + LABELS, VALUES * 2),
        ("sl", {}, "bf16-true", VALUES * 2 + LABELS, VALUES * 2),  # a bfloat16 network sends bfloat16
        ("dsl", {}, "16-true", VALUES * 2 + LABELS, 0),
    ],
)
def test_exact_bytes_per_step_and_epoch(
    make_module: Any, make_trainer: Any, loaders: Any, mode: str, options: dict, precision: str, up: int, down: int
) -> None:
    monitor = CommunicationMonitor()
    trainer = make_trainer([monitor], precision=precision)
    trainer.fit(make_module(mode, **options), *loaders())
    metrics = trainer.callback_metrics
    assert metrics["comm/bytes_up_step"].item() == up
    assert metrics["comm/bytes_down_step"].item() == down
    assert metrics["comm/bytes_up_epoch"].item() == TRAIN_BATCHES * up
    assert metrics["comm/bytes_down_epoch"].item() == TRAIN_BATCHES * down
    assert (monitor.total_bytes_up, monitor.total_bytes_down) == (TRAIN_BATCHES * up, TRAIN_BATCHES * down)
    assert isinstance(monitor.total_bytes_up, int)
    assert metrics["comm/total_bytes_up"].item() == TRAIN_BATCHES * up
    # Evaluation sends activations and labels up through the same codec, nothing down.
    assert metrics["comm/val_bytes_up"].item() == VAL_BATCHES * up
    assert metrics["comm/val_bytes_down"].item() == 0
    assert (monitor.val_bytes_up, monitor.val_bytes_down) == (VAL_BATCHES * up, 0)
    assert monitor.bytes_per_sample_up == up / BATCH
    assert monitor.bytes_per_sample_down == down / BATCH


def test_hybrid_sends_down_on_every_kth_batch(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    monitor = CommunicationMonitor()
    trainer = make_trainer([monitor], max_epochs=2)
    trainer.fit(make_module("hybrid", feedback_every=2, feedback_weight=0.5), *loaders())
    assert monitor.total_bytes_down == 2 * (TRAIN_BATCHES // 2) * VALUES * 4
    assert monitor.total_bytes_up == 2 * TRAIN_BATCHES * (VALUES * 4 + LABELS)
    assert trainer.callback_metrics["comm/bytes_down_epoch"].item() == (TRAIN_BATCHES // 2) * VALUES * 4
    assert monitor.bytes_per_sample_down == VALUES * 4 / BATCH  # of a batch that sends down


def test_static_picture_and_summary(make_module: Any, make_trainer: Any, loaders: Any) -> None:
    monitor = CommunicationMonitor()
    trainer = make_trainer([monitor], num_sanity_val_steps=2)  # sanity-check traffic is not counted
    trainer.fit(make_module("sl"), *loaders())
    trainer.test(trainer.lightning_module, loaders()[1], verbose=False)
    # Client: Conv2d(1, 4, 3) = 36 + 4 parameters; auxiliary head: Linear(4, 3) = 12 + 3; all float32.
    assert monitor.client_parameter_bytes == (36 + 4 + 12 + 3) * 4
    assert monitor.client_state_bytes == monitor.client_parameter_bytes  # no buffers in this network
    up = VALUES * 4 + LABELS
    assert monitor.summary() == {
        "comm/total_bytes_up": TRAIN_BATCHES * up,
        "comm/total_bytes_down": TRAIN_BATCHES * VALUES * 4,
        "comm/bytes_per_sample_up": up / BATCH,
        "comm/bytes_per_sample_down": VALUES * 4 / BATCH,
        "comm/client_parameter_bytes": 220,
        "comm/client_state_bytes": 220,
        "comm/val_bytes_up": VAL_BATCHES * up,
        "comm/val_bytes_down": 0,
        "comm/test_bytes_up": VAL_BATCHES * up,
        "comm/test_bytes_down": 0,
        "comm/sync_bytes_up": 0,  # one client: no model is handed over or averaged
        "comm/sync_bytes_down": 0,
    }


def test_totals_survive_a_resume(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    first = CommunicationMonitor()
    make_trainer([first, checkpoints], enable_checkpointing=True).fit(make_module("sl"), *loaders())
    assert first.total_bytes_up == TRAIN_BATCHES * (VALUES * 4 + LABELS)

    resumed = CommunicationMonitor()
    trainer = make_trainer([resumed], max_epochs=2)
    # weights_only=False: the module's hyperparameters hold its default optimizer function (see test_module.py).
    trainer.fit(make_module("sl"), *loaders(), ckpt_path=checkpoints.last_model_path, weights_only=False)

    uninterrupted = CommunicationMonitor()
    make_trainer([uninterrupted], max_epochs=2).fit(make_module("sl"), *loaders())
    assert (resumed.total_bytes_up, resumed.total_bytes_down) == (
        uninterrupted.total_bytes_up,
        uninterrupted.total_bytes_down,
    )
    assert resumed.total_bytes_up == 2 * TRAIN_BATCHES * (VALUES * 4 + LABELS)
    assert resumed.total_bytes_down == 2 * TRAIN_BATCHES * VALUES * 4
    assert trainer.callback_metrics["comm/total_bytes_up"].item() == resumed.total_bytes_up
    assert resumed.bytes_per_sample_up == (VALUES * 4 + LABELS) / BATCH


def test_needs_a_module_with_a_cut() -> None:
    with pytest.raises(TypeError, match="DecoupledSplitModule"):
        CommunicationMonitor().on_fit_start(None, LightningModule())  # type: ignore[arg-type]


def _csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_metrics_in_csv_log(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    callbacks = [CommunicationMonitor(), PeakMemoryMonitor(), SplitThroughputMonitor()]
    make_trainer(callbacks, logger=logger, max_epochs=2).fit(make_module("sl"), *loaders())
    rows = _csv_rows(logger)
    up = VALUES * 4 + LABELS
    steps = [r for r in rows if r["comm/bytes_up_step"]]
    assert [float(r["comm/bytes_up_step"]) for r in steps] == [up] * 2 * TRAIN_BATCHES
    assert [float(r["comm/total_bytes_up"]) for r in steps] == [up * (i + 1) for i in range(2 * TRAIN_BATCHES)]
    assert [float(r["comm/bytes_up_epoch"]) for r in rows if r["comm/bytes_up_epoch"]] == [TRAIN_BATCHES * up] * 2
    assert [float(r["comm/val_bytes_up"]) for r in rows if r["comm/val_bytes_up"]] == [VAL_BATCHES * up] * 2
    for key in ("memory/saved_peak_bytes", "throughput/samples_per_sec", "throughput/client_samples_per_sec"):
        assert len([r for r in rows if r[key]]) == 2, key  # once per epoch


def _wandb_records(path: Path) -> list[bytes]:
    """The records of an offline run's ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind in (2, 3):  # first, middle
            pending = (pending if kind == 3 else b"") + chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
        else:
            break
    return records


def test_metrics_in_offline_wandb_run(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    for variable, value in (("MODE", "offline"), ("DIR", "wandb"), ("CONFIG_DIR", "config"), ("CACHE_DIR", "cache")):
        monkeypatch.setenv(f"WANDB_{variable}", value if variable == "MODE" else str(tmp_path / value))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=tmp_path, project="lightning-dsl-tests")
    callbacks = [CommunicationMonitor(), PeakMemoryMonitor(), SplitThroughputMonitor()]
    try:
        make_trainer(callbacks, logger=logger).fit(make_module("sl"), *loaders())
    finally:
        wandb.finish()
        wandb.teardown()  # stops W&B's service, so the run file is complete before it is read (a busy machine)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history: list[dict[str, Any]] = []
    for data in _wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item  # "comm/bytes_up" may be stored as a nested key ("comm", "bytes_up")
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    logged = {key for row in history for key in row}
    up = VALUES * 4 + LABELS
    assert [row["comm/bytes_up_step"] for row in history if "comm/bytes_up_step" in row] == [up] * TRAIN_BATCHES
    assert [row["comm/total_bytes_down"] for row in history if "comm/total_bytes_down" in row][-1] == (
        TRAIN_BATCHES * VALUES * 4
    )
    expected = {
        "comm/bytes_up_epoch",
        "comm/bytes_down_epoch",
        "comm/val_bytes_up",
        "memory/saved_peak_bytes",
        "memory/saved_client_peak_bytes",
        "memory/saved_server_peak_bytes",
        "throughput/samples_per_sec",
        "throughput/client_samples_per_sec",
        "throughput/server_samples_per_sec",
    }
    assert expected <= logged
