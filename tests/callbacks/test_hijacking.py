"""The FSHA callback on real fits of the digits: what goes down per mode, what is logged, what survives a resume."""

from __future__ import annotations

import csv
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import FeatureSpaceHijackingAttack, RunSummary
from lightning_dsl.data import DigitsDataModule
from lightning_dsl.strategies import SplitStrategy


def module(mode: str, **kwargs: Any) -> DecoupledSplitModule:
    torch.manual_seed(0)
    return DecoupledSplitModule(
        "small_cnn",
        split_index=2,
        mode=mode,
        num_classes=10,
        input_shape=(1, 8, 8),
        client_optimizer=lambda p: torch.optim.Adam(p, lr=1e-4),
        **kwargs,
    )


def fit(
    model: DecoupledSplitModule, callbacks: list[Any], tmp_path: Path, batches: int = 3, epochs: int = 1, **kwargs: Any
) -> Trainer:
    ckpt_path = kwargs.pop("ckpt_path", None)
    options: dict[str, Any] = {"logger": False, "enable_checkpointing": False, **kwargs}
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **options,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(
    ("mode", "kwargs", "sent_down"),
    [
        ("sl", {}, 4),
        ("hybrid", {"feedback_every": 2, "feedback_weight": 1.0}, 2),
        ("dsl", {}, 0),
    ],
)
def test_the_hijacking_gradient_goes_down_where_the_gradient_goes_down(
    mode: str, kwargs: dict[str, Any], sent_down: int, tmp_path: Path, single_thread: None
) -> None:
    attack = FeatureSpaceHijackingAttack(auxiliary="test", auxiliary_size=64)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = fit(module(mode, **kwargs), [attack, RunSummary(print_summary=False)], tmp_path, batches=4, logger=logger)
    assert attack.attack is not None and attack.attack.steps == 4 and attack.attack.sent_down == sent_down
    (row,) = attack.history
    assert row["privacy/fsha_sent_down"] == sent_down
    # The baseline by hand: the mean of the attacker's 64 auxiliary images against the private ones, pixel space.
    data = DigitsDataModule(batch_size=16)
    data.setup()
    mean_image = data.test_set.tensors[0][:64].mean(0, keepdim=True)
    private = torch.cat([x for x, _ in list(data.train_dataloader())[:4]])
    baseline = (((mean_image - private) * data.std) ** 2).mean().item()
    assert row["privacy/fsha_baseline_mse"] == pytest.approx(baseline, rel=1e-5)
    assert 0 < row["privacy/fsha_mse"]
    assert trainer.callback_metrics["privacy/fsha_mse"].item() == pytest.approx(row["privacy/fsha_mse"])
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("privacy/fsha_mse")]
    assert len(logged) == 1 and float(logged[0]["privacy/fsha_mse"]) == pytest.approx(row["privacy/fsha_mse"])
    summary = attack.summary()
    assert summary["privacy/fsha_mse"] == row["privacy/fsha_mse"]
    assert summary["privacy/fsha_auxiliary"] == "test split, 64 inputs"
    assert summary["privacy/fsha_history"] == attack.history
    assert attack.attack not in trainer.lightning_module.cut.taps, "taken off the cut at teardown"
    assert summary["privacy/fsha_grid"] == str(Path(logger.log_dir) / "fsha_reconstructions.png")


def test_the_grid_shows_the_last_batchs_private_inputs_above_the_attackers_reconstructions(
    tmp_path: Path, single_thread: None
) -> None:
    import numpy as np
    from PIL import Image

    attack = FeatureSpaceHijackingAttack(auxiliary="test", auxiliary_size=64)
    fit(module("sl"), [attack], tmp_path, batches=3)
    assert attack.grid_path == tmp_path / "fsha_reconstructions.png"  # no logger: the root dir
    grid = np.asarray(Image.open(attack.grid_path).convert("L"), dtype=float)
    assert grid.shape == (2 * 34 + 2, 8 * 34 + 2)  # 8x8 digits enlarged to 32, padding 2
    data = DigitsDataModule(batch_size=16)
    data.setup()
    private = list(data.train_dataloader())[2][0][:8]  # the third (last) batch, as the attack scored it
    pixels = (private * data.std + data.mean).clamp(0, 1)
    top = np.stack([grid[2:34:4, 2 + 34 * i : 34 * (i + 1) : 4] for i in range(8)]) / 255  # one pixel in 4
    assert np.abs(top - pixels[:, 0].numpy()).max() <= 1 / 255 + 1e-6
    # The bottom row: the decoder's output from those inputs' activations (after 3 batches, far from them).
    bottom = np.stack([grid[36:68:4, 2 + 34 * i : 34 * (i + 1) : 4] for i in range(8)]) / 255
    assert np.abs(bottom - top).mean() > 0.05
    plain = FeatureSpaceHijackingAttack(auxiliary="test", auxiliary_size=64, grid=None)
    fit(module("sl"), [plain], tmp_path / "none", batches=1)
    assert plain.grid_path is None and not any((tmp_path / "none").glob("*.png"))


def test_in_dsl_the_client_trains_bit_exact_as_without_the_attack_and_is_told_once(
    tmp_path: Path, single_thread: None
) -> None:
    plain = module("dsl")
    fit(plain, [], tmp_path)
    attacked = module("dsl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(attacked, [FeatureSpaceHijackingAttack(auxiliary_size=32)], tmp_path)
    told = [w for w in caught if "has no channel" in str(w.message)]
    assert len(told) == 1 and "mode 'dsl'" in str(told[0].message)
    for key, value in plain.state_dict().items():
        if key.startswith(("client.", "aux_head.")):
            assert torch.equal(value, attacked.state_dict()[key]), key


def test_the_attack_survives_a_resume(tmp_path: Path, single_thread: None) -> None:
    first = FeatureSpaceHijackingAttack(auxiliary_size=32, seed=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = fit(module("sl"), [first, checkpoint], tmp_path, enable_checkpointing=True)
    assert trainer.checkpoint_callback is checkpoint
    assert first.attack is not None
    saved = first.attack.state_dict()

    second = FeatureSpaceHijackingAttack(auxiliary_size=32, seed=7)  # other weights until the checkpoint loads
    fit(module("sl"), [second], tmp_path, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.attack is not None and second.attack.steps == saved["steps"] == 3
    assert second.history == first.history
    for name in ("pilot", "decoder", "discriminator"):
        for key, value in saved[name].items():
            assert torch.equal(getattr(second.attack, name).state_dict()[key], value), f"{name}.{key}"
    assert torch.equal(second.attack.generator.get_state(), saved["generator"])


# ---------------------------------------------------------------------------------------- bad input
def test_the_training_split_is_refused_as_auxiliary_data() -> None:
    with pytest.raises(ValueError, match=r"`auxiliary` to be one of \['test', 'val'\].*got 'train' \(the clients"):
        FeatureSpaceHijackingAttack(auxiliary="train")
    with pytest.raises(ValueError, match=r"`auxiliary_size` to be an int >= 1 or None, but got 0"):
        FeatureSpaceHijackingAttack(auxiliary_size=0)
    with pytest.raises(ValueError, match=r"`lr` to be a number > 0"):
        FeatureSpaceHijackingAttack(lr=0)
    with pytest.raises(ValueError, match=r"`grid` to be a file name ending in '.png' or None, but got 'out/g.png'"):
        FeatureSpaceHijackingAttack(grid="out/g.png")


class TokenData(LightningDataModule):
    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, dtype=torch.long)))


def test_non_image_data_and_the_split_strategy_are_refused() -> None:
    attack = FeatureSpaceHijackingAttack()
    model = module("sl")
    trainer = types.SimpleNamespace(strategy=None, datamodule=TokenData())
    with pytest.raises(ValueError, match=r"reconstructs images .* inputs are dtype torch.int64, shape \(1, 6\)"):
        attack.setup(trainer, model, "fit")  # type: ignore[arg-type]
    trainer.strategy = SplitStrategy.__new__(SplitStrategy)
    with pytest.raises(ValueError, match=r"not with strategy='split'"):
        attack.setup(trainer, model, "fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"a DecoupledSplitModule \(a module with a `cut`\), got Module"):
        attack.setup(trainer, torch.nn.Module(), "fit")  # type: ignore[arg-type]


def test_with_many_clients_each_clients_batch_is_hijacked_and_scored(tmp_path: Path, single_thread: None) -> None:
    attack = FeatureSpaceHijackingAttack(auxiliary_size=32)
    model = module("sl", num_clients=2)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[attack],
        default_root_dir=tmp_path,
    )  # fmt: skip
    data = DigitsDataModule(batch_size=16, num_clients=2)
    trainer.fit(model, datamodule=data)
    assert attack.grid_path == tmp_path / "fsha_reconstructions.png" and attack.grid_path.exists()
    assert attack.attack is not None and (attack.attack.steps, attack.attack.sent_down) == (4, 4)
    data.setup()
    private = torch.cat([x for loader in data.train_dataloader().iterables for x, _ in list(loader)[:2]])
    mean_image = data.test_set.tensors[0][:32].mean(0, keepdim=True)
    baseline = (((mean_image - private) * data.std) ** 2).mean().item()  # all four client batches, scored
    assert attack.history[0]["privacy/fsha_baseline_mse"] == pytest.approx(baseline, rel=1e-5)
