"""The clipping norm ``C`` of a run: the median per-sample L2 norm of its cut activations, measured.

Builds the model and the data exactly as ``fit`` would from the same configs and overrides (the same
``seed_everything``, so the same initial client half), reads ``--batches`` training batches through the
client half in training mode (on a copy: nothing moves) and prints the norms' quantiles and the
median as the ``C`` to use (:func:`lightning_dsl.privacy.calibration.activation_norms`). The ``defenses``
study's ``C`` at ResNet-20's shallow cut on the CPU protocol was measured with

    python benchmarks/clip_norm.py --config configs/cifar10_resnet110.yaml --config configs/paper/cpu.yaml \
        --model.init_args.split_index=shallow --data.init_args.root=data/cifar10-jpg

and any other run's the same way (``--json`` prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from lightning_dsl.cli import main as cli_main  # noqa: E402
from lightning_dsl.privacy.calibration import activation_norms, clip_norm_from  # noqa: E402


def measure(cli_args: list[str], batches: int) -> dict[str, float | int | str]:
    """Norm quantiles of the initial client half's activations on ``batches`` training batches."""
    cli = cli_main(args=[*cli_args, "--trainer.logger=false"], run=False)
    model, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("fit")
    norms = activation_norms(model.client, data.train_dataloader(), max_batches=batches)
    figures: dict[str, float | int | str] = {"samples": len(norms), "split_index": model.split_index}
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        figures[f"q{int(q * 100)}"] = clip_norm_from(norms, q)
    figures["clip_norm"] = figures["q50"]
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="training batches to read (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args, cli_args = parser.parse_known_args(argv)
    sys.argv = sys.argv[:1]  # the CLI gets its arguments as `args=`, not from this script's command line
    figures = measure(cli_args, args.batches)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"per-sample L2 norms of the cut activations ({figures['samples']} samples, initial client half):")
    for key in ("q10", "q25", "q50", "q75", "q90"):
        print(f"  {key}: {figures[key]:.4g}")
    print(f"clip_norm (the median): {figures['clip_norm']:.4g}")


if __name__ == "__main__":
    main()
