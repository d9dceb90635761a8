"""Train DecoupledSplitModule on two CPU processes (gloo) and save each replica's state; run as a script.

    python tests/ddp_run.py STRATEGY MODE OUT_DIR [--batchnorm]

Used by ``tests/test_lightning_habits.py`` (in a subprocess with a timeout, so that no process
outlives the test). Each rank writes ``OUT_DIR/rank<r>.pt``: the module's state dict after training.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule

IN_SHAPE = (3, 4, 4)
NUM_CLASSES = 5
BATCH = 4  # per process
BATCHES = 3
WORLD = 2
SEED = 3  # seeds the auxiliary head, built at setup from a peeked batch (no input_shape given)


def make_network(batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    norm: list[nn.Module] = [nn.BatchNorm1d(16)] if batchnorm else []
    return nn.Sequential(
        nn.Flatten(), nn.Linear(48, 16), *norm, nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES)
    ).double()


def make_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    n = WORLD * BATCH * BATCHES
    x = torch.randn(n, *IN_SHAPE, generator=generator, dtype=torch.float64)
    return TensorDataset(x, torch.randint(0, NUM_CLASSES, (n,), generator=generator))


def make_module(mode: str, batchnorm: bool = False) -> DecoupledSplitModule:
    sgd: Any = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)  # picklable, for ddp_spawn
    split = 4 if batchnorm else 3
    torch.manual_seed(2)
    return DecoupledSplitModule(
        make_network(batchnorm), split, mode=mode, num_classes=NUM_CLASSES, client_optimizer=sgd, server_optimizer=sgd
    )


class SaveReplica(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}.pt")


def main(strategy: str, mode: str, out: str, batchnorm: bool) -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=strategy,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[SaveReplica(out)],
    )
    model = make_module(mode, batchnorm)
    seed_everything(SEED)
    trainer.fit(model, DataLoader(make_data(), batch_size=BATCH))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--batchnorm" in sys.argv[4:])
