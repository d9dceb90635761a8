"""Decoupled split learning in plain Python, no CLI: pass your network in, cut it, train, evaluate.

python examples/plain_python.py
python examples/plain_python.py --epochs 1 --limit-batches 3
"""

from __future__ import annotations

import argparse
from functools import partial

import lightning as L
import torch

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor, RunSummary
from lightning_dsl.data import DigitsDataModule
from lightning_dsl.models import small_cnn


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit-batches", type=int, default=None)
    parser.add_argument("--mode", default="dsl", choices=["dsl", "sl", "hybrid"])
    parser.add_argument("--root", default="runs/plain_python", help="where the CSV log and summary.json go")
    args = parser.parse_args(argv)

    L.seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    model = DecoupledSplitModule(
        network=small_cnn(in_channels=1, num_classes=data.num_classes),
        split_index=2,
        mode=args.mode,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        client_optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
        server_optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        limit_test_batches=args.limit_batches,
        accelerator="cpu",
        default_root_dir=args.root,
        logger=L.pytorch.loggers.CSVLogger(args.root, name="csv"),
        enable_checkpointing=False,
        callbacks=[CommunicationMonitor(), PeakMemoryMonitor(), RunSummary()],
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data)
    return trainer


if __name__ == "__main__":
    main()
