"""The end-of-run summary: a short table on the console and ``summary.json`` in the run's directory."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn

# Metrics copied from ``trainer.callback_metrics`` when they exist (the privacy budgets: of the last epoch, the run's).
METRICS = (
    "val/acc",
    "val/aux_acc",
    "val/loss",
    "val/aux_loss",
    "train/loss",
    "train/aux_loss",
    "train/acc",
    "privacy/dcor",
    "privacy/epsilon",
    "privacy/label_epsilon",
)
# Prefixes of the metrics kept per epoch in the ``history`` (the leakage monitor's dCor is measured on validation).
HISTORY_PREFIXES = ("val/", "privacy/")


class RunSummary(Callback):
    """Collect the figures of a run at the end of ``fit`` (and ``test``), print them and save them.

    Every other callback with a ``summary() -> dict`` method (the communication, memory and
    throughput monitors) contributes its figures. The result is written to
    ``<run dir>/summary.json`` (the first logger's ``log_dir``, else ``default_root_dir``) and
    added to the W&B run's summary when a ``WandbLogger`` is attached. After ``trainer.test``
    the file is written again with the ``test/*`` figures and the callbacks' figures read anew
    (the test traffic, for instance). The per-epoch ``history`` survives a resume from a checkpoint.

    The printed table has one row per figure of the run; per-client figures (``val/aux_acc/client<i>``,
    ``comm/client<i>/...``) are summarised there over the clients, one row each, so that it stays short
    with 100 clients (see :func:`table_lines`); ``summary.json`` holds every client's figures.

    Args:
        filename: name of the JSON file.
        dirpath: folder for the file; ``None`` puts it in the run directory.
        print_summary: print the table at the end of ``fit``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[RunSummary()], logger=False)  # doctest: +SKIP
    """

    def __init__(self, filename: str = "summary.json", dirpath: str | None = None, print_summary: bool = True) -> None:
        if not filename.endswith(".json"):
            raise ValueError(f"Expected argument `filename` to end with '.json', got {filename!r}.")
        self.filename = filename
        self.dirpath = dirpath
        self.print_summary = print_summary
        self.summary: dict[str, Any] = {}
        self.path: Path | None = None
        self._fit_start = 0.0
        self._epoch_start = 0.0
        self._epoch_times: list[float] = []
        self.history: list[dict[str, float]] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._epoch_times.append(time.perf_counter() - self._epoch_start)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        # The per-epoch curve of the run (accuracy of the split network and of the head alone, the leakage).
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        row = {"epoch": float(trainer.current_epoch)}
        row.update({k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith(HISTORY_PREFIXES)})
        self.history.append(row)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        summary: dict[str, Any] = {
            **_describe(pl_module),
            "epochs": trainer.current_epoch,
            "batches": getattr(pl_module, "batches_trained", None),
            "optimizer_steps": trainer.global_step,
            "fit_seconds": time.perf_counter() - self._fit_start,
            "seconds_per_epoch": sum(self._epoch_times) / len(self._epoch_times) if self._epoch_times else None,
        }
        for part in ("client", "server", "aux_head"):
            module = getattr(pl_module, part, None)
            if isinstance(module, nn.Module):
                summary[f"params/{part}"] = sum(p.numel() for p in module.parameters())
        summary.update({k: _number(trainer.callback_metrics[k]) for k in METRICS if k in trainer.callback_metrics})
        # Each client's own head (many clients, between two FedAvg rounds): val/aux_acc/client<i>.
        per_client = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/aux_acc/client")}
        summary.update({k: _number(v) for k, v in per_client.items()})
        summary.update(self._contributions(trainer))
        summary["history"] = self.history
        self._write(trainer, summary)
        if self.print_summary:
            _print_table(summary)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        # The other callbacks' figures are read again: the ones saved at the end of fit predate this test.
        tests = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self._write(trainer, {**self.summary, **_describe(pl_module), **self._contributions(trainer), **tests})

    def _contributions(self, trainer: Trainer) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            contribute = getattr(callback, "summary", None)
            if callback is not self and callable(contribute):
                figures.update(contribute())
        contribute = getattr(trainer.strategy, "summary", None)  # strategy="split": the role, the wire, the clients
        if callable(contribute):
            figures.update(contribute())
        return figures

    @property
    def state_key(self) -> str:  # noqa: D102
        # Several summaries (other files, other folders) may run side by side; each keeps its own history.
        return self._generate_state_key(filename=self.filename, dirpath=self.dirpath)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"history": self.history, "epoch_times": self._epoch_times}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.history = [dict(row) for row in state_dict.get("history", [])]
        self._epoch_times = [float(t) for t in state_dict.get("epoch_times", [])]

    @rank_zero_only
    def _write(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        self.summary = summary
        run_dir = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / self.filename
        self.path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and v is not None}
                logger.experiment.summary.update({f"summary/{k}": v for k, v in scalars.items()})


def _describe(pl_module: LightningModule) -> dict[str, Any]:
    """The run's split (mode, cut) and the parameter count of each part."""
    names = ("mode", "split_index", "num_units", "num_clients", "client_schedule", "aggregate_every")
    described: dict[str, Any] = {name: getattr(pl_module, name, None) for name in names}
    for part in ("client", "server", "aux_head"):
        module = getattr(pl_module, part, None)
        if isinstance(module, nn.Module):
            described[f"params/{part}"] = sum(p.numel() for p in module.parameters())
    return described


def _number(value: Any) -> float:
    number = float(value.item() if hasattr(value, "item") else value)
    return number if math.isfinite(number) else float("nan")


def _format(key: str, value: Any) -> str:
    if isinstance(value, float) and "bytes" in key:
        return _human_bytes(value)
    if isinstance(value, int) and "bytes" in key:
        return _human_bytes(float(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


# A per-client figure: `comm/client3/total_bytes_up`, `val/aux_acc/client3` (the client's number, then the rest).
_CLIENT_KEY = re.compile(r"^(?P<head>(?:.*/)?client)(?P<client>\d+)(?P<tail>/.*)?$")
_BEST_WORST = 3  # clients named at each end of an accuracy or a loss


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The lines of the printed summary: one row per run figure, then one row per per-client figure.

    Per-client figures (``comm/client<i>/...``, ``val/aux_acc/client<i>``) are summarised over the clients,
    so the table stays short whatever their number: the count, mean, standard deviation (over the clients,
    ``ddof=0``), the smallest and largest with their client, and for accuracies and losses the worst and best
    clients. Lists and dicts (the history, a split server's clients' reports) are left to ``summary.json``, as
    is every per-client value.
    """
    rows: list[tuple[str, str]] = []
    groups: dict[str, dict[int, float]] = {}
    for key, value in summary.items():
        if value is None or isinstance(value, (list, dict)):
            continue
        match = _CLIENT_KEY.match(key)
        if match is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            name = f"{match['head']}*{match['tail'] or ''}"
            groups.setdefault(name, {})[int(match["client"])] = float(value)
        else:
            rows.append((key, _format(key, value)))
    width = max((len(k) for k, _ in rows), default=0)
    lines = ["", "Run summary", "-" * (width + 20)] + [f"{k:<{width}}  {v}" for k, v in rows]
    if groups:
        lines += _client_lines(groups)
    return lines


def _client_lines(groups: dict[str, dict[int, float]]) -> list[str]:
    clients = sorted(set().union(*groups.values()))
    header = ("figure", "clients", "mean", "std", "min (client)", "max (client)")
    table = [header]
    ends: list[str] = []
    for name, values in groups.items():
        numbers = np.array(list(values.values()))
        low, high = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
        table.append(
            (
                name,
                str(len(values)),
                _format(name, float(numbers.mean())),
                _format(name, float(numbers.std())),
                f"{_format(name, values[low])} ({low})",
                f"{_format(name, values[high])} ({high})",
            )
        )
        if "acc" in name or "loss" in name:
            # The lowest accuracies and the highest losses are the worst; ties go to the lower client number.
            sign = 1.0 if "acc" in name else -1.0
            worst = sorted(values, key=lambda c: (sign * values[c], c))
            best = sorted(values, key=lambda c: (-sign * values[c], c))
            k = max(1, min(_BEST_WORST, len(values) // 2))
            ends.append(f"{name}  worst: {_clients(name, values, worst[:k])}; best: {_clients(name, values, best[:k])}")
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["", f"Clients ({len(clients)}; every client's figures are in summary.json)"]
    lines += [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]
    return lines + ends


def _clients(name: str, values: dict[int, float], clients: list[int]) -> str:
    return ", ".join(f"client {c} {_format(name, values[c])}" for c in clients)


@rank_zero_only
def _print_table(summary: dict[str, Any]) -> None:
    rank_zero_info("\n".join(table_lines(summary)) + "\n")
