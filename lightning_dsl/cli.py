"""``lightning-dsl`` / ``python -m lightning_dsl``: LightningCLI for split-learning experiments.

Example::

    lightning-dsl fit --config configs/quickstart.yaml
    lightning-dsl fit --config configs/quickstart.yaml --model.mode=sl --trainer.max_epochs=5
    lightning-dsl fit --config configs/quickstart.yaml --print_config
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor, RunSummary, SplitThroughputMonitor
from lightning_dsl.module import DecoupledSplitModule

RUNS_DIR = "runs"


class DSLCLI(LightningCLI):
    """LightningCLI with the links and the measurement callbacks this package needs.

    * ``data.num_classes`` reaches the model (``link_arguments``), so it is never set twice by hand; the
      auxiliary head is built at ``setup`` from the data module's ``input_shape`` (or its first batch).
    * The communication, memory, throughput and summary callbacks are always on; each has its
      own config section (``communication:``, ``memory:``, ``throughput:``, ``summary:``).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(CommunicationMonitor, "communication")
        parser.add_lightning_class_args(PeakMemoryMonitor, "memory")
        parser.add_lightning_class_args(SplitThroughputMonitor, "throughput")
        parser.add_lightning_class_args(RunSummary, "summary")


def trainer_defaults() -> dict[str, Any]:
    """Loggers by default: a CSV log and an offline W&B run, both under ``runs/``."""
    return {
        "default_root_dir": RUNS_DIR,
        "logger": [
            {"class_path": _path(CSVLogger), "init_args": {"save_dir": RUNS_DIR, "name": "csv"}},
            {
                "class_path": _path(WandbLogger),
                "init_args": {"save_dir": RUNS_DIR, "project": "lightning-dsl", "offline": True},
            },
        ],
    }


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def main(args: list[str] | None = None, run: bool = True) -> DSLCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``)."""
    return DSLCLI(
        DecoupledSplitModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        # The config goes to the run's own directory; overwrite is a guard for loggers that share one
        # directory across runs (SaveConfigCallback + WandbLogger crash on the second run otherwise).
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        args=args,
        run=run,
    )
