"""FSHA against sl and dsl on the 8x8 digits: the attacker's reconstruction error per epoch.

Each run is the package's own path: :class:`~lightning_dsl.DecoupledSplitModule` (small_cnn, cut after
2 of its 4 units, as the quickstart) under a Lightning ``Trainer`` with
:class:`~lightning_dsl.callbacks.FeatureSpaceHijackingAttack` (auxiliary data: the test split, 270
images no client trains on). The client is on Adam (lr 1e-4): FSHA is sensitive to the client's
optimizer and converges fast against Adam. The server's task optimizer is the quickstart's SGD. No
validation, no logger: the figures come from the callback's per-epoch history. Prints one row per
epoch with ``privacy/fsha_mse`` of every (mode, seed), the mean-image baseline, and writes the
histories as JSON with ``--out``.

    python benchmarks/fsha_digits.py                              # 100 epochs, sl and dsl, seeds 0 and 1
    python benchmarks/fsha_digits.py --epochs 5 --modes sl --seeds 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from benchmarks.cut_costs import hardware  # noqa: E402
from lightning_dsl import DecoupledSplitModule  # noqa: E402
from lightning_dsl.callbacks import FeatureSpaceHijackingAttack  # noqa: E402
from lightning_dsl.data import DigitsDataModule  # noqa: E402


def run(mode: str, seed: int, epochs: int, client_lr: float, batches: int | None = None) -> list[dict[str, float]]:
    """One fit with the attack on; its per-epoch history (``privacy/fsha_mse``, baseline, gradients sent down)."""
    seed_everything(seed, verbose=False)
    model = DecoupledSplitModule(
        "small_cnn",
        split_index=2,
        mode=mode,
        num_classes=10,
        input_shape=(1, 8, 8),
        client_optimizer=partial(torch.optim.Adam, lr=client_lr),
        server_optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    attack = FeatureSpaceHijackingAttack(auxiliary="test", seed=seed, grid=None)  # the histories only
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[attack],
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64, seed=seed))
    return attack.history


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--modes", nargs="+", default=["sl", "dsl"], choices=["sl", "dsl", "hybrid"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--client_lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=None, help="training batches per epoch (default: all 20)")
    parser.add_argument("--out", type=Path, default=None, help="write the histories here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = f"{args.threads} thread(s); client Adam lr {args.client_lr}; {args.epochs} epochs"
    print(f"# {hardware(torch.device('cpu'))}, {setting}", flush=True)
    histories: dict[str, list[dict[str, float]]] = {}
    for mode in args.modes:
        for seed in args.seeds:
            start = time.perf_counter()
            histories[f"{mode}-s{seed}"] = run(mode, seed, args.epochs, args.client_lr, args.batches)
            print(f"# {mode} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    names = list(histories)
    print("| epoch | " + " | ".join(names) + " | baseline |")
    print("|---:|" + "---:|" * (len(names) + 1))
    for epoch in range(args.epochs):
        rows = [histories[name][epoch] for name in names]
        cells = " | ".join(f"{row['privacy/fsha_mse']:.4f}" for row in rows)
        print(f"| {epoch} | {cells} | {rows[0]['privacy/fsha_baseline_mse']:.4f} |")
    result = {"epochs": args.epochs, "client_lr": args.client_lr, "histories": histories}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
