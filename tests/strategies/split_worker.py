"""One process of a split run (or the same run in one process), as the strategy tests start it.

``python split_worker.py '<json options>'``: trains ``small_cnn`` cut after unit 2 on the 8x8 digits
and saves this process's halves, head and byte counts to ``<role>.pt`` in the working directory.

Options: ``mode``, ``epochs``, ``batches`` (per epoch), ``clients`` (in-process reference: how many),
``in_process`` (no split strategy), ``timeout``, ``max_in_flight``, ``kill`` (``{"rank": r, "batch": b}``:
that process SIGKILLs itself before its b-th training batch), ``ckpt`` (resume from this path),
``codec``, ``server_order``, ``mode_by_rank`` (``{"1": "sl"}``: another mode on that rank), ``sleep``
(``{"server": 0.3}``: that process sleeps after each training batch), ``text`` (a small text transformer
on a few made-up sentences instead: padded sequences and their mask cross the cut), ``skip`` (a small U-Net
cut by name inside its skip connection instead: two tensors cross the cut), ``privacy`` (a dict of
:class:`~lightning_dsl.privacy.CutPrivacy`'s fields).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import CommunicationMonitor
from lightning_dsl.data import DigitsDataModule, TextDataModule
from lightning_dsl.models import TextTransformer
from lightning_dsl.strategies import SplitStrategy


class Clock(Callback):
    """Wall-clock time at the end of every training batch (and an optional sleep: a slow side)."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep, self.ends = sleep, []  # type: ignore[var-annotated]

    def on_train_batch_end(self, *args: Any) -> None:  # noqa: D102
        time.sleep(self.sleep)
        self.ends.append(time.time())


class KillAt(Callback):
    """SIGKILL this process before its ``batch``-th training batch of the first epoch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:  # noqa: D102
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def write_sentences(root: Path) -> Path:
    """SST-2's three files with a few made-up sentences of 2 to 9 words (labels alternate)."""
    words = ["good", "bad", "film", "plot", "a", "the", "boring", "great", "acting", "slow", "fine"]
    root.mkdir(exist_ok=True)
    for split, rows in (("train", 48), ("dev", 16), ("test", 8)):
        lines = ["sentence\tlabel"]
        lines += [
            " ".join(words[(3 * i + j) % len(words)] for j in range(2 + i % 8)) + f"\t{i % 2}" for i in range(rows)
        ]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def main(options: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(True)
    seed_everything(0)
    in_process = options.get("in_process", False)
    clients = options.get("clients", 1)
    rank = int(os.environ.get("RANK", 0))
    network: Any = "small_cnn"
    data: Any = DigitsDataModule(batch_size=32, num_clients=clients if in_process else 1)
    if options.get("text"):
        data = TextDataModule(root=str(write_sentences(Path("sst2"))), vocab_size=40, max_length=12, batch_size=8)
        network = TextTransformer(vocab_size=40, max_length=12, dim=16, depth=2, heads=2, dropout=0.0)
    split_index: int | str = 2
    if options.get("skip"):
        from tests.cuts.toy import TinyUNet

        network, split_index = TinyUNet(in_channels=1, num_classes=10), "down2"
    model = DecoupledSplitModule(
        network,
        split_index=split_index,
        mode=options.get("mode_by_rank", {}).get(str(rank), options.get("mode", "dsl")),
        codec=options.get("codec", "none"),
        privacy=options.get("privacy"),  # a dict of CutPrivacy's fields
        num_clients=clients if in_process else 1,
        num_classes=2 if options.get("text") else 10,
    )
    role = "inprocess" if in_process else ("server" if rank == 0 else f"client{rank - 1}")
    clock = Clock(options.get("sleep", {}).get(role, 0.0))
    checkpoint = ModelCheckpoint(dirpath=f"ckpt-{role}", save_last=True)
    callbacks: list[Callback] = [CommunicationMonitor(), checkpoint, clock]
    kill = options.get("kill")
    if kill and kill["rank"] == rank and not in_process:
        callbacks.append(KillAt(kill["batch"]))
    strategy = (
        "auto"
        if in_process
        else SplitStrategy(
            timeout=options.get("timeout", 20.0),
            max_in_flight=options.get("max_in_flight", 2),
            server_order=options.get("server_order", "client"),
        )
    )
    trainer = Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=1,
        max_epochs=options.get("epochs", 2),
        limit_train_batches=options.get("batches", 6),
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=CSVLogger(".", name=f"logs-{role}"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, data, ckpt_path=options.get("ckpt", {}).get(role) if options.get("ckpt") else None)
    monitor = next(c for c in trainer.callbacks if isinstance(c, CommunicationMonitor))
    torch.save(
        {
            "client": model.client.state_dict(),
            "aux_head": model.aux_head.state_dict(),
            "server": model.server.state_dict(),
            "traffic": dataclasses.asdict(model.cut.traffic),
            "total_bytes_up": monitor.total_bytes_up,
            "total_bytes_down": monitor.total_bytes_down,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "summary": getattr(trainer.strategy, "summary", lambda: {})(),
            "loaded_data": getattr(data, "train_set", None) is not None,
            "ends": clock.ends,
        },
        Path(f"{role}.pt"),
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
