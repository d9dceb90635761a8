"""What the LeakageMonitor costs: the quickstart trained with and without it, side by side in one process.

Each repeat builds the quickstart (``configs/quickstart.yaml``, through the package's CLI, no logger and no
checkpoints so that only the loop and the callbacks run) twice from the same seed, once with the monitor
off (``--leakage.max_batches=0``) and once on (``--leakage.max_batches=N``), and trains each for
``--epochs`` epochs; the order of the two arms flips on every other repeat. Two figures per repeat:

* ``wall ratio``: fit time with the monitor over fit time without it (noisy on a shared machine: another
  process's burst moves it by more than the monitor costs);
* ``own share``: the time spent inside the monitor's hooks (timed in the "on" arm) over the fit time per
  epoch of the "on" arm — what the monitor costs, without the noise of two separate runs.

Target (issue 20): the monitor costs at most 2 % of a quickstart epoch.

    python benchmarks/leakage_overhead.py                 # 5 repeats of 2 epochs, about 2 minutes on 2 cores
    python benchmarks/leakage_overhead.py --repeats 3 --max-batches 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from lightning_dsl.callbacks import LeakageMonitor  # noqa: E402
from lightning_dsl.cli import main as cli_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
TARGET = 0.02


class TimedLeakageMonitor(LeakageMonitor):
    """The monitor, with the seconds spent in its hooks added up in ``seconds``."""

    seconds = 0.0

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        start = time.perf_counter()
        super().on_validation_batch_end(*args, **kwargs)
        self.seconds += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        start = time.perf_counter()
        super().on_validation_epoch_end(trainer, pl_module)
        self.seconds += time.perf_counter() - start


def fit(max_batches: int, epochs: int, root: str) -> tuple[float, float, float | None]:
    """Fit the quickstart; return (seconds of the fit, seconds inside the monitor, the last dCor)."""
    args = [
        f"--config={QUICKSTART}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        "--summary.print_summary=false",
        "--leakage.max_batches=0",  # the CLI's own monitor is off in both arms; the timed one is added below
    ]
    cli = cli_main(args=args, run=False)
    timed = TimedLeakageMonitor(max_batches=max_batches)
    if max_batches:
        cli.trainer.callbacks.insert(0, timed)  # type: ignore[attr-defined]
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start, timed.seconds, timed.value


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.3f}{unit} [{min(v):.3f}, {max(v):.3f}]"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-batches", type=int, default=4, help="the monitor's max_batches in the 'on' arm")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.max_batches < 1:
        parser.error(f"--max-batches must be >= 1 (the 'on' arm measures something), got {args.max_batches}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch threads: {torch.get_num_threads()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f};"
        f" quickstart, {args.epochs} epochs per fit",
        flush=True,
    )
    wall_ratios, shares, epoch_seconds = [], [], []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            order = (0, args.max_batches) if repeat % 2 == 0 else (args.max_batches, 0)
            results = {arm: fit(arm, args.epochs, root) for arm in order}
            (off, _, _), (on, own, dcor) = results[0], results[args.max_batches]
            wall_ratios.append(on / off)
            shares.append(own / on)
            epoch_seconds.append(off / args.epochs)
            print(
                f"repeat {repeat}: fit {off:.2f} s off, {on:.2f} s on (ratio {on / off:.3f});"
                f" monitor {own * 1e3:.1f} ms"
                f" = {100 * own / on:.2f} % of the fit; privacy/dcor {dcor:.4f}",
                flush=True,
            )
    report = {
        "epoch_seconds_off": statistics.median(epoch_seconds),
        "wall_ratio_median": statistics.median(wall_ratios),
        "own_share_median": statistics.median(shares),
        "own_share_max": max(shares),
    }
    print()
    print(f"| figure ({args.repeats} repeats, median [min, max]) | value |")
    print("|---|---|")
    print(f"| quickstart epoch without the monitor | {spread(epoch_seconds, unit=' s')} |")
    print(f"| fit time with / without (wall ratio) | {spread(wall_ratios)} |")
    print(f"| time inside the monitor / fit time | {spread(shares, 100, ' %')} |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    verdict = "meets" if report["own_share_max"] <= TARGET else "MISSES"
    print(
        f"\nThe monitor {verdict} the target: at most {100 * TARGET:.0f} % of a quickstart epoch"
        f" (worst repeat {100 * report['own_share_max']:.2f} %)."
    )
    return report


if __name__ == "__main__":
    main()
