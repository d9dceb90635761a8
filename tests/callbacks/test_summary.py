"""RunSummary: summary.json with the per-epoch history, the other callbacks' figures, parameter counts and tests."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor, RunSummary, SplitThroughputMonitor
from lightning_dsl.callbacks.summary import table_lines

from .conftest import BATCH, TRAIN_BATCHES, VAL_BATCHES

# The tiny network's cut activation is (8, 4, 5, 5) float32, its labels 8 int64: bytes up per batch.
UP = BATCH * 4 * 5 * 5 * 4 + BATCH * 8
# Its parts, counted by hand: Conv2d(1, 4, 3) | Flatten + Linear(100, 3); the linear head: pool + Linear(4, 3).
CLIENT_PARAMS, SERVER_PARAMS, AUX_HEAD_PARAMS = 4 * 9 + 4, 100 * 3 + 3, 4 * 3 + 3


class Contributor(Callback):
    """A callback of a user's own that adds a figure to the summary."""

    def summary(self) -> dict[str, Any]:
        return {"custom/answer": 42}


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_writes_summary_json_with_history_per_epoch(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path
) -> None:
    summary = RunSummary(print_summary=False)
    trainer = make_trainer([summary], max_epochs=3, num_sanity_val_steps=2)  # sanity checks are no epoch
    trainer.fit(make_module("dsl"), *loaders())

    assert summary.path == tmp_path / "summary.json"  # no logger: the trainer's default_root_dir
    written = read(summary.path)
    assert written == json.loads(json.dumps(summary.summary))
    assert (written["mode"], written["split_index"], written["num_units"]) == ("dsl", 2, 4)
    # Two optimizer steps (client, server) per batch.
    batches = 3 * TRAIN_BATCHES
    assert (written["epochs"], written["batches"], written["optimizer_steps"]) == (3, batches, 2 * batches)
    assert 0 < written["seconds_per_epoch"] <= written["fit_seconds"]
    history = written["history"]
    assert [row["epoch"] for row in history] == [0.0, 1.0, 2.0]
    for row in history:
        assert {"val/acc", "val/aux_acc", "val/loss", "val/aux_loss"} <= row.keys()
    for key in ("val/acc", "val/aux_acc", "val/loss", "val/aux_loss", "train/loss", "train/aux_loss", "train/acc"):
        assert written[key] == pytest.approx(trainer.callback_metrics[key].item()), key
    assert history[-1]["val/acc"] == written["val/acc"]


def test_collects_the_other_callbacks_figures(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path
) -> None:
    comm, memory, throughput = CommunicationMonitor(), PeakMemoryMonitor(), SplitThroughputMonitor()
    other = RunSummary(dirpath=str(tmp_path / "other"), print_summary=False)  # its `summary` is a dict, not a method
    summary = RunSummary(print_summary=False)
    make_trainer([comm, memory, throughput, Contributor(), other, summary]).fit(make_module("sl"), *loaders())

    written = read(tmp_path / "summary.json")
    for figures in (comm.summary(), memory.summary(), throughput.summary()):
        assert figures and figures.items() <= written.items()
    assert written["comm/total_bytes_up"] == TRAIN_BATCHES * UP
    assert written["comm/total_bytes_down"] == TRAIN_BATCHES * BATCH * 4 * 5 * 5 * 4
    assert written["comm/val_bytes_up"] == VAL_BATCHES * UP
    assert written["memory/saved_peak_bytes"] > 0 and written["throughput/samples_per_sec"] > 0
    assert written["custom/answer"] == 42
    assert read(tmp_path / "other" / "summary.json")["custom/answer"] == 42


def test_parameter_counts(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    module = make_module("dsl")
    make_trainer([RunSummary(print_summary=False)]).fit(module, *loaders())
    written = read(tmp_path / "summary.json")
    for part, expected in (("client", CLIENT_PARAMS), ("server", SERVER_PARAMS), ("aux_head", AUX_HEAD_PARAMS)):
        assert written[f"params/{part}"] == expected == sum(p.numel() for p in getattr(module, part).parameters())
    assert CLIENT_PARAMS + SERVER_PARAMS + AUX_HEAD_PARAMS == sum(p.numel() for p in module.parameters())


def test_test_figures_are_added_after_test(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    module, comm, summary = make_module("dsl"), CommunicationMonitor(), RunSummary(print_summary=False)
    trainer = make_trainer([comm, summary])
    train, val = loaders()
    trainer.fit(module, train, val)
    after_fit = read(tmp_path / "summary.json")
    assert not any(key.startswith("test/") for key in after_fit)
    assert after_fit["comm/test_bytes_up"] == 0

    trainer.test(module, val)
    written = read(tmp_path / "summary.json")
    for key in ("test/acc", "test/aux_acc", "test/loss", "test/aux_loss"):
        assert written[key] == pytest.approx(trainer.callback_metrics[key].item()), key
    # The fit figures stay; the other callbacks' figures are read again, after the test's traffic.
    for key in ("val/acc", "history", "batches", "comm/total_bytes_up", "params/client"):
        assert written[key] == after_fit[key], key
    assert written["comm/test_bytes_up"] == comm.test_bytes_up == VAL_BATCHES * UP
    assert written == json.loads(json.dumps(summary.summary))


def test_test_without_fit(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    make_trainer([CommunicationMonitor(), RunSummary(print_summary=False)]).test(make_module("sl"), loaders()[1])
    written = read(tmp_path / "summary.json")
    assert {"test/acc", "test/aux_acc", "test/loss", "test/aux_loss"} <= written.keys()
    assert (written["mode"], written["params/client"]) == ("sl", CLIENT_PARAMS)
    assert written["comm/test_bytes_up"] == VAL_BATCHES * UP
    assert "history" not in written


def test_history_survives_a_resume(make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    first = RunSummary(print_summary=False)
    make_trainer([first, checkpoints], enable_checkpointing=True, max_epochs=2).fit(make_module(), *loaders())
    assert len(first.history) == 2

    resumed = RunSummary(print_summary=False)
    trainer = make_trainer([resumed], max_epochs=4)
    # weights_only=False: the module's hyperparameters hold its default optimizer function (see test_module.py).
    trainer.fit(make_module(), *loaders(), ckpt_path=checkpoints.last_model_path, weights_only=False)
    history = read(tmp_path / "summary.json")["history"]
    assert [row["epoch"] for row in history] == [0.0, 1.0, 2.0, 3.0]
    assert history[:2] == first.history


def test_file_goes_to_dirpath_or_the_loggers_run_folder(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path
) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    in_run = RunSummary(print_summary=False)
    elsewhere = RunSummary(filename="figures.json", dirpath=str(tmp_path / "out"), print_summary=False)
    make_trainer([in_run, elsewhere], logger=logger).fit(make_module(), *loaders())
    assert in_run.path == Path(logger.log_dir) / "summary.json" == tmp_path / "csv" / "version_0" / "summary.json"
    assert elsewhere.path == tmp_path / "out" / "figures.json"
    assert read(in_run.path)["val/acc"] == read(elsewhere.path)["val/acc"]


@pytest.mark.parametrize("filename", ["summary.txt", "summary", "summary.json.bak"])
def test_bad_filename(filename: str) -> None:
    with pytest.raises(ValueError, match=rf"`filename` to end with '\.json', got '{re.escape(filename)}'"):
        RunSummary(filename=filename)


@pytest.mark.parametrize("print_summary", [True, False])
def test_prints_the_table(
    make_module: Any, make_trainer: Any, loaders: Any, caplog: pytest.LogCaptureFixture, print_summary: bool
) -> None:
    with caplog.at_level(logging.INFO):
        make_trainer([CommunicationMonitor(), RunSummary(print_summary=print_summary)]).fit(make_module(), *loaders())
    assert ("Run summary" in caplog.text) is print_summary
    if print_summary:
        total = TRAIN_BATCHES * UP / 1024
        assert re.search(rf"comm/total_bytes_up\s+{total:.1f} KiB\n", caplog.text)
        assert re.search(r"comm/total_bytes_down\s+0 B\n", caplog.text)
        assert re.search(r"\nval/acc\s+[0-9.]+\n", caplog.text)


def test_figures_in_the_wandb_run_summary(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path, wandb_offline: None
) -> None:
    logger = WandbLogger(offline=True, save_dir=tmp_path, project="lightning-dsl-tests")
    summary = RunSummary(print_summary=False)
    make_trainer([CommunicationMonitor(), summary], logger=logger).fit(make_module(), *loaders())
    run_summary = logger.experiment.summary
    assert run_summary["summary/comm/total_bytes_up"] == TRAIN_BATCHES * UP
    assert run_summary["summary/val/acc"] == summary.summary["val/acc"]
    assert run_summary["summary/mode"] == "dsl"
    assert summary.path == tmp_path / "summary.json"  # a W&B logger first: its save_dir


# ---------------------------------------------------------------------------------------- many clients
CLIENTS = 100


def client_figures() -> dict[str, Any]:
    """100 clients' figures as the callbacks name them: accuracy (i * 37 % 100) / 100, a permutation of 0 .. 0.99."""
    figures: dict[str, Any] = {}
    for i in range(CLIENTS):
        figures[f"val/aux_acc/client{i}"] = (i * 37 % 100) / 100
        figures[f"comm/client{i}/total_bytes_up"] = 1024 * (i + 1)  # 1 KiB .. 100 KiB
        figures[f"comm/client{i}/sync_bytes_up"] = 4096
    return figures


class ManyClients(Callback):
    def summary(self) -> dict[str, Any]:
        return client_figures()


def test_many_clients_print_one_row_per_figure() -> None:
    run = {"mode": "dsl", "val/acc": 0.5, "comm/total_bytes_up": 2048, "history": [{"epoch": 0.0}]}
    # Accuracy: mean 0.495, std over the clients 0.01 * sqrt((100**2 - 1) / 12) = 0.2887, 0.0 on client 0 and 0.99
    # on 27; bytes: 1 .. 100 KiB, mean 50.5 KiB, std 1024 * 28.866 bytes = 28.9 KiB. The three worst and best
    # accuracies: 0.00, 0.01, 0.02 on clients 0, 73, 46; 0.99, 0.98, 0.97 on 27, 54, 81. No row per client.
    assert table_lines({**run, **client_figures()}) == [
        "",
        "Run summary",
        "-" * 39,
        "mode                 dsl",
        "val/acc              0.5",
        "comm/total_bytes_up  2.0 KiB",
        "",
        "Clients (100; every client's figures are in summary.json)",
        "figure                       clients      mean       std  min (client)    max (client)",
        "val/aux_acc/client*              100     0.495    0.2887         0 (0)       0.99 (27)",
        "comm/client*/total_bytes_up      100  50.5 KiB  28.9 KiB   1.0 KiB (0)  100.0 KiB (99)",
        "comm/client*/sync_bytes_up       100   4.0 KiB       0 B   4.0 KiB (0)     4.0 KiB (0)",
        "val/aux_acc/client*  worst: client 0 0, client 73 0.01, client 46 0.02;"
        " best: client 27 0.99, client 54 0.98, client 81 0.97",
    ]


def test_a_loss_worst_is_the_highest_and_ties_go_to_the_lower_client() -> None:
    losses = {f"val/loss/client{i}": float(i) for i in range(4)}
    assert table_lines(losses)[-1] == "val/loss/client*  worst: client 3 3, client 2 2; best: client 0 0, client 1 1"
    ties = {f"val/aux_acc/client{i}": 0.1 for i in range(6)}
    assert table_lines(ties)[-1] == (
        "val/aux_acc/client*  worst: client 0 0.1, client 1 0.1, client 2 0.1; best: client 0 0.1, client 1 0.1,"
        " client 2 0.1"
    )


def test_many_clients_keep_every_figure_in_the_json(
    make_module: Any, make_trainer: Any, loaders: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        make_trainer([ManyClients(), RunSummary()]).fit(make_module(), *loaders())
    written = read(tmp_path / "summary.json")
    assert client_figures().items() <= written.items()  # all 300 per-client figures, as given
    printed = caplog.text[caplog.text.index("Run summary") :]
    assert "client57" not in printed and "Clients (100;" in printed
    run_rows = [k for k, v in written.items() if not re.search(r"client\d", k) and v is not None and k != "history"]
    # Title and rule, the run's rows, a blank line and the clients' title, a header, 3 figures, 1 worst/best line.
    assert len(printed.strip().splitlines()) == 2 + len(run_rows) + 2 + 1 + 3 + 1
