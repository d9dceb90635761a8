"""The examples run at toy size and do what they say: both modes train, the client's own head learns, bytes add up."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_dsl.data import DigitsDataModule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHANCE = 0.1  # ten digits


@pytest.fixture(scope="module")
def own_project() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / "own_project.py"))


@pytest.fixture(scope="module")
def plain_python() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / "plain_python.py"))


@pytest.fixture(scope="module")
def train_images() -> int:
    data = DigitsDataModule()
    data.setup()
    assert data.train_set is not None
    return len(data.train_set)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_own_project_trains_both_modes(
    own_project: dict[str, Any], train_images: int, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs = 2
    results = own_project["main"](["--epochs", str(epochs)])
    assert set(results) == {"dsl", "sl"}
    for mode, figures in results.items():
        assert figures["val/acc"] > 5 * CHANCE, f"{mode}: the split network did not learn"
    assert results["dsl"]["val/aux_acc"] > 5 * CHANCE, "dsl: the client with its own head alone did not learn"
    # Up: the (N, 32, 4, 4) float32 activation and the int64 label of every training sample, in both modes.
    # Down: the gradient of the activation in sl, nothing in dsl.
    activation, label = 32 * 4 * 4 * 4, 8
    for mode in ("dsl", "sl"):
        assert results[mode]["bytes_up"] == epochs * train_images * (activation + label)
    assert results["dsl"]["bytes_down"] == 0
    assert results["sl"]["bytes_down"] == epochs * train_images * activation
    assert 0 < results["dsl"]["saved_peak_bytes"] < results["sl"]["saved_peak_bytes"]
    printed = capsys.readouterr().out
    assert printed.startswith("dsl val/acc=") and "\nsl val/acc=" in printed


def test_own_project_at_toy_size(own_project: dict[str, Any], single_thread: None) -> None:
    results = own_project["main"](["--epochs", "1", "--limit-batches", "3"])
    assert results["dsl"]["bytes_up"] == results["sl"]["bytes_up"] == 3 * 64 * (32 * 4 * 4 * 4 + 8)


def test_own_project_subclass(own_project: dict[str, Any], single_thread: None, tmp_path: Path) -> None:
    """The network comes from build_network(), the head is the project's own, and both train in dsl."""
    tiny_vgg, conv_probe = own_project["TinyVGG"], own_project["ConvProbe"]
    torch.manual_seed(0)
    model = tiny_vgg(width=8, split_index=2, num_classes=4, input_shape=(1, 8, 8))
    assert isinstance(model.aux_head, conv_probe)
    assert (len(model.client), len(model.server)) == (2, 2)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 4), "the network's classifier follows num_classes"
    assert model.aux_head(model.client(torch.zeros(3, 1, 8, 8))).shape == (3, 4)

    before = {part: state(getattr(model, part)) for part in ("client", "server", "aux_head")}
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 1, 8, 8, generator=generator), torch.randint(0, 4, (32,), generator=generator)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    for part, tensors in before.items():
        after = state(getattr(model, part))
        changed = [k for k in tensors if not torch.equal(tensors[k], after[k])]
        assert changed, f"no parameter of the {part} changed"


def test_plain_python_at_toy_size(plain_python: dict[str, Any], single_thread: None, tmp_path: Path) -> None:
    toy = ["--epochs", "1", "--limit-batches", "3"]
    untrained = plain_python["main"](["--epochs", "0", "--limit-batches", "3", "--root", str(tmp_path / "untrained")])
    trainer = plain_python["main"]([*toy, "--root", str(tmp_path / "run")])
    model = trainer.lightning_module
    assert (model.mode, model.batches_trained) == ("dsl", 3)
    # The same seed: the same initial weights; training changed every parameter of the split network.
    before, after = state(untrained.lightning_module), state(model)
    for key in before:
        if key.startswith(("client.", "server.")) and "running_" not in key:
            assert not torch.equal(before[key], after[key]), f"{key} did not change"
    # fit, then test: one summary.json with both, and the callbacks' figures of the test run.
    summary = json.loads((tmp_path / "run" / "csv" / "version_0" / "summary.json").read_text())
    assert summary["batches"] == 3 and len(summary["history"]) == 1
    assert {"val/acc", "val/aux_acc", "test/acc", "test/aux_acc"} <= summary.keys()
    bytes_per_sample = summary["comm/bytes_per_sample_up"]
    assert summary["comm/total_bytes_up"] == 3 * 64 * bytes_per_sample
    assert summary["comm/test_bytes_up"] == 3 * 64 * bytes_per_sample, "test traffic from the test run, not 0"
    assert (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").is_file()


@pytest.mark.parametrize(("mode", "sends_down"), [("sl", True), ("hybrid", True), ("dsl", False)])
def test_plain_python_modes(
    plain_python: dict[str, Any], single_thread: None, tmp_path: Path, mode: str, sends_down: bool
) -> None:
    trainer = plain_python["main"](["--epochs", "1", "--limit-batches", "2", "--mode", mode, "--root", str(tmp_path)])
    assert trainer.lightning_module.mode == mode
    summary = json.loads((tmp_path / "csv" / "version_0" / "summary.json").read_text())
    assert (summary["comm/total_bytes_down"] > 0) is sends_down


def test_plain_python_learns(plain_python: dict[str, Any], single_thread: None, tmp_path: Path) -> None:
    trainer = plain_python["main"](["--epochs", "2", "--root", str(tmp_path)])
    assert trainer.callback_metrics["test/acc"] > 5 * CHANCE
    assert trainer.callback_metrics["test/aux_acc"] > 3 * CHANCE


@pytest.fixture(scope="module")
def many_clients() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / "many_clients.py"))


@pytest.mark.parametrize(("schedule", "epochs", "transfers"), [("parallel", 3, 3 * 4), ("sequential", 2, 3 + 4)])
def test_many_clients_example(
    many_clients: dict[str, Any], single_thread: None, schedule: str, epochs: int, transfers: int
) -> None:
    """A few epochs of 4 non-IID clients: they learn, and every model transfer costs one client state."""
    results = many_clients["main"](["--clients", "4", "--epochs", str(epochs), "--schedule", schedule])
    assert sum(results["shard_sizes"]) == 1500 and len(set(results["shard_sizes"])) > 1
    # Parallel FedAvg over seed 0's Dir(0.5) clients (flwr's partition) reaches 0.28 after 2 epochs, 0.81 after 3.
    assert results["val/acc"] > 3 * CHANCE
    # parallel: 4 uploads per FedAvg round, one round per epoch; sequential: 3 hand-overs in epoch 1 and
    # 4 in epoch 2 (the last client first hands the model back to client 0).
    assert results["sync_bytes_up"] == transfers * results["client_state_bytes"]
