"""``DecoupledSplitModule(privacy=CutPrivacy(...))`` under a real Trainer, on random 8x8 data, in seconds.

In dsl the client's training never sees what the server receives: with noise and randomized labels its
parameters end bit-exact as without them (one client and two, with a codec). The budgets are logged every
epoch and land in ``summary.json``; the bytes sent are those of the undefended run; the argument parses from
the command line and survives a checkpoint.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import RunSummary
from lightning_dsl.privacy import CutPrivacy, activation_epsilon

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*no `val_dataloader`:UserWarning",
    "ignore:.*LeafSpec.*",
    "ignore:.*Optimal order is the.*:UserWarning",
)

K, IN_SHAPE, BATCH = 4, (1, 8, 8), 8
DEFENDED = CutPrivacy(clip_norm=0.5, noise_multiplier=1.0, label_epsilon=1.0)


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 16), nn.ReLU(),
        nn.Linear(16, K),
    )  # fmt: skip


def data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *IN_SHAPE, generator=g), torch.randint(0, K, (n,), generator=g))


def loader(num_clients: int) -> Any:
    if num_clients == 1:
        return DataLoader(data(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1))
    return CombinedLoader([DataLoader(data(16, seed=c), batch_size=BATCH) for c in range(num_clients)], "max_size")


def fit(
    privacy: CutPrivacy | None, tmp_path: Path, epochs: int = 2, **kwargs: Any
) -> tuple[DecoupledSplitModule, Trainer]:
    torch.manual_seed(0)
    num_clients = kwargs.get("num_clients", 1)
    model = DecoupledSplitModule(
        network(), split_index=3, num_classes=K, input_shape=IN_SHAPE, privacy=privacy, **kwargs
    )
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[RunSummary(dirpath=str(tmp_path), print_summary=False)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    val = DataLoader(data(16, seed=7), batch_size=BATCH)
    trainer.fit(model, loader(num_clients), val)
    return model, trainer


def client_tensors(model: DecoupledSplitModule) -> list[torch.Tensor]:
    pairs = [model.client_pair(i) for i in range(model.num_clients)]
    return [t for client, head in pairs for t in [*client.state_dict().values(), *head.state_dict().values()]]


@pytest.mark.parametrize(
    ("kwargs"),
    [{}, {"codec": "int8"}, {"num_clients": 2, "codec": "int8", "aggregate_every": 0}],
    ids=["one-client", "int8", "two-clients-int8"],
)
def test_dsl_client_ends_bit_exact_as_without_noise_and_label_privacy(tmp_path: Path, kwargs: dict) -> None:
    plain, plain_trainer = fit(None, tmp_path / "plain", **kwargs)
    defended, trainer = fit(DEFENDED, tmp_path / "defended", **kwargs)
    for p, q in zip(client_tensors(plain), client_tensors(defended), strict=True):
        assert torch.equal(p, q)
    # The server trained on what it received: noised activations and randomized labels.
    assert not all(
        torch.equal(p, q) for p, q in zip(plain.server.parameters(), defended.server.parameters(), strict=True)
    )
    # Bytes unchanged: noise and clipping keep dtypes and shapes; the labels stay int64.
    assert defended.cut.traffic == plain.cut.traffic
    # The client's own accuracy is on true labels: the same as without the defense.
    assert trainer.callback_metrics["val/aux_acc"] == plain_trainer.callback_metrics["val/aux_acc"]


@pytest.mark.parametrize("mode", ["sl", "hybrid"])
def test_sl_and_hybrid_train_with_every_defense_and_send_the_same_bytes(tmp_path: Path, mode: str) -> None:
    both = CutPrivacy(clip_norm=0.5, noise_multiplier=0.5, nopeek_weight=0.5, label_epsilon=2.0)
    plain, _ = fit(None, tmp_path / "plain", epochs=1, mode=mode, codec="fp16")
    defended, trainer = fit(both, tmp_path / "defended", epochs=1, mode=mode, codec="fp16")
    assert defended.cut.traffic == plain.cut.traffic
    # In sl the noise and the labels come back through the gradient: the client differs.
    assert not all(torch.equal(p, q) for p, q in zip(client_tensors(plain), client_tensors(defended), strict=True))
    assert trainer.callback_metrics["train/nopeek_penalty"] > 0


def test_budgets_are_logged_every_epoch_and_kept_in_the_summary(tmp_path: Path) -> None:
    _, trainer = fit(DEFENDED, tmp_path, epochs=3)
    metrics = Path(trainer.logger.log_dir) / "metrics.csv"  # type: ignore[union-attr]
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("privacy/epsilon")]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for row in rows:
        epochs = int(row["epoch"]) + 1
        assert float(row["privacy/epsilon"]) == pytest.approx(activation_epsilon(1.0, epochs, 1e-5))
        assert float(row["privacy/label_epsilon"]) == pytest.approx(1.0 * epochs)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["privacy/epsilon"] == pytest.approx(activation_epsilon(1.0, 3, 1e-5))
    assert summary["privacy/label_epsilon"] == pytest.approx(3.0)


def test_label_privacy_refuses_float_labels_before_any_parameter_moves(tmp_path: Path) -> None:
    model = DecoupledSplitModule(network(), split_index=3, num_classes=K, input_shape=IN_SHAPE, privacy=DEFENDED)
    before = [t.clone() for t in client_tensors(model)]
    floats = DataLoader(TensorDataset(torch.randn(8, *IN_SHAPE), torch.rand(8)), batch_size=4)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"Field `label_epsilon`=1.0 randomizes class labels, .* torch.float32"):
        trainer.fit(model, floats)
    assert all(torch.equal(p, q) for p, q in zip(before, client_tensors(model), strict=True))


def test_privacy_survives_a_checkpoint_as_plain_values(tmp_path: Path) -> None:
    model = DecoupledSplitModule(network(), split_index=3, num_classes=K, input_shape=IN_SHAPE, privacy=DEFENDED)
    assert model.hparams["privacy"] == DEFENDED.as_dict()
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, loader(1))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # nothing but plain values inside
    loaded = DecoupledSplitModule.load_from_checkpoint(path, network=network())
    assert loaded.privacy == DEFENDED
    assert loaded.cut.client_transform is not None


def test_the_cli_parses_privacy_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_dsl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-dsl"])
    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    base = ["--config", str(config), "--trainer.logger=false"]
    cli = main(
        args=[
            *base,
            "--model.init_args.privacy.noise_multiplier=1.0",
            "--model.init_args.privacy.clip_norm=2.0",
            "--model.init_args.privacy.label_epsilon=4",
        ],
        run=False,
    )
    assert cli.model.privacy == CutPrivacy(clip_norm=2.0, noise_multiplier=1.0, label_epsilon=4.0)
    assert main(args=base, run=False).model.privacy is None
    with pytest.raises(SystemExit):  # the field's own message, before anything is built
        main(args=[*base, "--model.init_args.privacy.noise_multiplier=1.0"], run=False)


def test_strategy_split_keeps_the_client_transform_on_its_wire_cut() -> None:
    """``strategy="split"`` replaces the module's cut by a wire cut: the client's mechanism goes along."""
    from lightning_dsl.distributed.cut import WireCut

    model = DecoupledSplitModule(network(), split_index=3, num_classes=K, input_shape=IN_SHAPE, privacy=DEFENDED)
    wire = WireCut.replacing(model.cut, is_server=False)
    assert wire.client_transform is model.cut.client_transform and wire.codec is model.cut.codec
