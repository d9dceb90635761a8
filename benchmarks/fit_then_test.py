"""``lightning-dsl fit`` followed by ``test`` on the final weights, in one process: one run, one summary.

The runner uses it for data with a labelled test split apart from validation (SST-2): the run's
``summary.json`` gets the ``test/*`` figures next to the fit's (``RunSummary`` rewrites it after test).
Takes the arguments of ``lightning-dsl fit`` without the subcommand, ``--ckpt_path=<ckpt>`` included (resume):

    python benchmarks/fit_then_test.py --config configs/sst2_transformer.yaml --trainer.max_epochs=1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package beside it, when not installed
from lightning_dsl.cli import main  # noqa: E402


def split_ckpt_path(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without its ``--ckpt_path=<ckpt>`` or ``--ckpt_path <ckpt>``, and that checkpoint (or ``None``)."""
    rest: list[str] = []
    ckpt: str | None = None
    items = iter(argv)
    for item in items:
        if item.startswith("--ckpt_path="):
            ckpt = item.split("=", 1)[1]
        elif item == "--ckpt_path":
            ckpt = next(items, None)
            if ckpt is None:
                raise SystemExit("fit_then_test.py: --ckpt_path needs a checkpoint's path")
        else:
            rest.append(item)
    return rest, ckpt


if __name__ == "__main__":
    argv, ckpt_path = split_ckpt_path(sys.argv[1:])
    cli = main(argv, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
