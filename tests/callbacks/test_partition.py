"""PartitionMonitor: partition.json, partition.png, per-client counts in the loggers, and its summary figures."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_dsl.callbacks import PartitionMonitor, RunSummary
from lightning_dsl.data import DigitsDataModule


class TinyModule(LightningModule):
    """A linear classifier of the 8x8 digits that takes one batch or a list of per-client batches."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        one_client = isinstance(batch[0], torch.Tensor)  # (inputs, labels), else one entry per client
        batches = [batch] if one_client else [b for b in batch if b is not None]
        return torch.stack([torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y) for x, y in batches]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, dm: DigitsDataModule, callbacks: list[Any]) -> Trainer:
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(TinyModule(), datamodule=dm)
    return trainer


def test_writes_the_partition_and_logs_the_client_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = DigitsDataModule(num_clients=4, partition="dirichlet", alpha=0.5, seed=1)
    monitor = PartitionMonitor()
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, dm, [monitor, RunSummary(print_summary=False)])
    partition = dm.partition
    assert partition is not None and monitor.partition is partition
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert trainer.log_dir == str(run_dir) and monitor.json_path == run_dir / "partition.json"

    written = json.loads((run_dir / "partition.json").read_text())
    assert written == json.loads(json.dumps(partition.to_dict()))
    assert written["sizes"] == partition.sizes and sum(written["sizes"]) == 1257
    assert written["histogram"] == partition.histogram().tolist() and written["alpha"] == 0.5

    png = (run_dir / "partition.png").read_bytes()
    assert monitor.png_path == run_dir / "partition.png" and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = next(r for r in rows if r.get("partition/client0/samples"))
    assert logged["step"] == "0"
    assert [float(logged[f"partition/client{i}/samples"]) for i in range(4)] == partition.sizes

    assert "Partition: dirichlet, alpha=0.5, 1257 samples over 4 clients" in caplog.text
    share = partition.histogram()[0].max().item() / partition.sizes[0]
    assert f"{partition.sizes[0]:>7}" in caplog.text and f"{share:.0%}" in caplog.text

    figures = {
        "partition/scheme": "dirichlet",
        "partition/num_clients": 4,
        "partition/min_samples": min(partition.sizes),
        "partition/max_samples": max(partition.sizes),
    }
    assert monitor.summary() == figures
    assert figures.items() <= json.loads((run_dir / "summary.json").read_text()).items()  # RunSummary collects it


def test_dirpath_and_no_plot(tmp_path: Path) -> None:
    dm = DigitsDataModule(num_clients=3, partition="shards", shards_per_client=1)  # 1257 = 3 x 419
    monitor = PartitionMonitor(dirpath=str(tmp_path / "elsewhere"), plot=False)
    fit(tmp_path, dm, [monitor])
    assert json.loads((tmp_path / "elsewhere" / "partition.json").read_text())["sizes"] == [419] * 3
    assert not list(tmp_path.rglob("partition.png")) and monitor.png_path is None


def test_nothing_without_a_partition(tmp_path: Path) -> None:
    dm = DigitsDataModule()  # one client: no partition
    monitor = PartitionMonitor()
    fit(tmp_path, dm, [monitor])
    assert dm.partition is None and monitor.partition is None and monitor.summary() == {}
    assert not list(tmp_path.rglob("partition.*"))
    # TinyModule logs nothing: per-client counts would have been the only metrics.
    assert not (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").exists()


def test_bad_argument() -> None:
    with pytest.raises(ValueError, match=r"`max_rows` to be a positive integer, but got 0"):
        PartitionMonitor(max_rows=0)


def test_logs_the_plot_to_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(offline=True, save_dir=tmp_path)  # the run starts lazily: never here
    logged: list[tuple[dict[str, Any], int | None]] = []
    monkeypatch.setattr(logger, "log_metrics", lambda metrics, step=None: logged.append((metrics, step)))
    dm = DigitsDataModule(num_clients=2)
    dm.setup()
    trainer = SimpleNamespace(log_dir=None, default_root_dir=str(tmp_path), loggers=[logger])
    PartitionMonitor()._write(trainer, dm.partition, None)  # type: ignore[arg-type]
    ((metrics, step),) = logged
    assert step == 0 and list(metrics) == ["partition"] and isinstance(metrics["partition"], wandb.Image)
    assert (tmp_path / "partition.png").is_file() and (tmp_path / "partition.json").is_file()
