"""Checkpoints written by the package before the module was split into collaborators load and predict the same.

The files under ``tests/fixtures`` were written by ``tests/fixtures/make_checkpoints.py`` at commit 3701448.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.data import DigitsDataModule

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ("quickstart", "hybrid_two_clients")


def sgd(params: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_loads_and_predicts_the_same(name: str) -> None:
    model = DecoupledSplitModule.load_from_checkpoint(FIXTURES / f"{name}.ckpt")
    expected = torch.load(FIXTURES / f"{name}.expected.pt")
    checkpoint = torch.load(FIXTURES / f"{name}.ckpt", weights_only=False)
    state = model.state_dict()
    assert sorted(state) == sorted(checkpoint["state_dict"])
    assert all(torch.equal(state[k], v) for k, v in checkpoint["state_dict"].items()), "every weight bit for bit"
    # The expected outputs were computed when the fixtures were written, on that machine's CPU. Another
    # instruction set (AVX2 against AVX-512) rounds the convolutions differently in the last bits (seen: 7e-7
    # on activations of order 1), so the outputs are compared to float32 rounding, the weights exactly.
    close = {"rtol": 1e-5, "atol": 1e-5}
    model.eval()
    with torch.no_grad():
        z = model.client(expected["inputs"])
        torch.testing.assert_close(z, expected["cut"], **close)
        torch.testing.assert_close(model(expected["inputs"]), expected["logits"], **close)
        torch.testing.assert_close(model.aux_head(z), expected["aux_logits"], **close)


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_resumes(name: str, tmp_path: Path) -> None:
    checkpoint = torch.load(FIXTURES / f"{name}.ckpt", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    model = DecoupledSplitModule(**{**hparams, "client_optimizer": sgd, "server_optimizer": sgd})
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_train_batches=3,
        limit_val_batches=1,
    )
    trainer.fit(
        model, DigitsDataModule(batch_size=64, num_clients=hparams["num_clients"]), ckpt_path=FIXTURES / f"{name}.ckpt"
    )
    assert trainer.current_epoch == 2
    assert model.batches_trained == checkpoint["lightning_dsl"]["batches_trained"] + 3
    # The optimizer states were restored (momentum buffers exist from the first run) and stepped on.
    assert all("momentum_buffer" in s for opt in trainer.optimizers for s in opt.state.values())
