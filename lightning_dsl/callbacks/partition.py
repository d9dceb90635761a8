"""How the training set is split over the simulated clients: a table, per-client counts, a JSON file and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_dsl.data.partition import Partition


class PartitionMonitor(Callback):
    """Describe the data module's client partition at the start of ``fit``.

    When ``trainer.datamodule`` has a ``partition`` (a :class:`~lightning_dsl.data.partition.Partition`, made by
    the data modules when ``num_clients > 1``), this callback prints a table of the clients (samples, classes
    present, share of the largest class), logs each client's sample count to every logger once
    (``partition/client<i>/samples`` at step 0), writes ``partition.json`` (:meth:`Partition.to_dict`) and
    ``partition.png`` (:meth:`Partition.plot`) into the run directory (the first logger's ``log_dir``, else
    ``default_root_dir``), and logs the plot to W&B under ``partition`` when a ``WandbLogger`` is attached.
    Without a partition it does nothing. :meth:`summary` adds the scheme and the client sizes to
    :class:`~lightning_dsl.callbacks.RunSummary`.

    Args:
        dirpath: folder for the two files; ``None`` puts them in the run directory.
        plot: write ``partition.png`` (and log it to W&B).
        max_rows: clients shown in the printed table (the others are summed up in one line).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_dsl.data import DigitsDataModule
        >>> dm = DigitsDataModule(num_clients=10, partition="dirichlet", alpha=0.5)
        >>> trainer = Trainer(callbacks=[PartitionMonitor()])  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(self, dirpath: str | None = None, plot: bool = True, max_rows: int = 20) -> None:
        if max_rows < 1:
            raise ValueError(f"Expected argument `max_rows` to be a positive integer, but got {max_rows}.")
        self.dirpath = dirpath
        self.plot = plot
        self.max_rows = max_rows
        self.partition: Partition | None = None
        self.json_path: Path | None = None
        self.png_path: Path | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        datamodule = getattr(trainer, "datamodule", None)
        partition = getattr(datamodule, "partition", None)
        if not isinstance(partition, Partition):
            return
        self.partition = partition
        rank_zero_info(_table(partition, self.max_rows))
        metrics = {f"partition/client{i}/samples": float(n) for i, n in enumerate(partition.sizes)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
        self._write(trainer, partition, getattr(datamodule, "classes", None) or None)

    @rank_zero_only
    def _write(self, trainer: Trainer, partition: Partition, class_names: list[str] | None) -> None:
        run_dir = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.json_path = run_dir / "partition.json"
        self.json_path.write_text(json.dumps(partition.to_dict(), indent=2) + "\n")
        if not self.plot:
            return
        if class_names is not None and len(class_names) != partition.num_classes:
            class_names = None
        self.png_path = partition.plot(run_dir / "partition.png", class_names=class_names)
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            import wandb

            for logger in wandb_loggers:
                logger.log_metrics({"partition": wandb.Image(str(self.png_path))}, step=0)  # type: ignore[dict-item]

    def summary(self) -> dict[str, Any]:
        """The scheme, the number of clients and the smallest and largest client; empty without a partition."""
        if self.partition is None:
            return {}
        sizes = self.partition.sizes
        return {
            "partition/scheme": self.partition.scheme,
            "partition/num_clients": self.partition.num_clients,
            "partition/min_samples": min(sizes),
            "partition/max_samples": max(sizes),
        }


def _table(partition: Partition, max_rows: int) -> str:
    histogram = partition.histogram()
    sizes = partition.sizes
    setting = {"dirichlet": f", alpha={partition.alpha}", "shards": f", {partition.shards_per_client} shards each"}
    if partition.num_dropped:
        setting["shards"] += f", {partition.num_dropped} samples dropped"
    lines = [
        "",
        f"Partition: {partition.scheme}{setting.get(partition.scheme, '')}, {sum(sizes)} samples over"
        f" {partition.num_clients} clients ({min(sizes)} to {max(sizes)} each)",
        f"{'client':>6}  {'samples':>7}  {'classes':>7}  {'largest class':>13}",
    ]
    for i, counts in enumerate(histogram[:max_rows].tolist()):
        largest = max(range(len(counts)), key=counts.__getitem__)
        share = counts[largest] / max(sizes[i], 1)
        present = sum(c > 0 for c in counts)
        lines.append(f"{i:>6}  {sizes[i]:>7}  {present:>7}  {f'{share:.0%} ({largest})':>13}")
    if partition.num_clients > max_rows:
        rest = sizes[max_rows:]
        lines.append(f"{'...':>6}  {sum(rest):>7}  (clients {max_rows} to {partition.num_clients - 1})")
    return "\n".join(lines) + "\n"
