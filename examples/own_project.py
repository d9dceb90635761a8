"""A user's own project: subclass ``DecoupledSplitModule`` with your network and auxiliary head.

The network comes from ``build_network()`` (so ``network=None``), the auxiliary head is a module
of your own, and the same class trains as decoupled (``dsl``) and conventional (``sl``) split
learning. Runs offline on scikit-learn's digits:

    python examples/own_project.py                 # both modes, 10 epochs each
    python examples/own_project.py --epochs 1 --limit-batches 3
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor
from lightning_dsl.data import DigitsDataModule


class TinyVGG(DecoupledSplitModule):
    """Client: two conv blocks (8x8 -> 4x4); server: one conv block and the classifier."""

    def __init__(self, width: int = 16, **kwargs):
        self.width = width  # read by build_network(), which runs inside super().__init__
        super().__init__(network=None, aux_head=ConvProbe(2 * width, kwargs.get("num_classes", 10)), **kwargs)

    def build_network(self) -> nn.Module:
        # Called by DecoupledSplitModule.__init__, which has set `self.num_classes` by then.
        w = self.width
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()),
            nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.BatchNorm2d(2 * w), nn.ReLU()),
            nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, self.num_classes)),
        )


class ConvProbe(nn.Module):
    """The project's own auxiliary head: a 1x1 conv, 2x2 pooling, a linear classifier."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, 1)
        self.classify = nn.Linear(channels * 4, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classify(nn.functional.adaptive_avg_pool2d(torch.relu(self.mix(z)), 2).flatten(1))


def train(mode: str, epochs: int, limit_batches: int | None) -> dict[str, float]:
    L.seed_everything(0)
    model = TinyVGG(
        split_index=2,
        mode=mode,
        num_classes=10,
        input_shape=(1, 8, 8),
        client_optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        server_optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )
    comm, memory = CommunicationMonitor(), PeakMemoryMonitor()
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=limit_batches,
        limit_val_batches=limit_batches,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[comm, memory],
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    return {
        "val/acc": float(trainer.callback_metrics["val/acc"]),
        "val/aux_acc": float(trainer.callback_metrics["val/aux_acc"]),
        "bytes_up": comm.total_bytes_up,
        "bytes_down": comm.total_bytes_down,
        "saved_peak_bytes": memory.saved_activation_peak_bytes,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit-batches", type=int, default=None)
    args = parser.parse_args(argv)
    results = {mode: train(mode, args.epochs, args.limit_batches) for mode in ("dsl", "sl")}
    for mode, figures in results.items():
        print(mode, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return results


if __name__ == "__main__":
    main()
