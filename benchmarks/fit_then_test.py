"""``lightning-dsl fit`` followed by ``test`` on the final weights, in one process: one run, one summary.

The runner uses it for data with a labelled test split apart from validation (SST-2): the run's
``summary.json`` gets the ``test/*`` figures next to the fit's (``RunSummary`` rewrites it after test).
Takes the arguments of ``lightning-dsl fit`` without the subcommand:

    python benchmarks/fit_then_test.py --config configs/sst2_transformer.yaml --trainer.max_epochs=1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package beside it, when not installed
from lightning_dsl.cli import main  # noqa: E402

if __name__ == "__main__":
    cli = main(sys.argv[1:], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
