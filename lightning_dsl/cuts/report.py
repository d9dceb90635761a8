"""The cut planner's output: a table (markdown, CSV, JSON), the recommendations, a plot."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_dsl.cuts.costs import CutCosts

MIB = 2**20
BYTES_PER_PARAMETER = 12.0
"""A float32 parameter on the client: itself, its gradient and one optimizer state (SGD momentum)."""


@dataclass(frozen=True)
class Recommendations:
    """The cuts the planner points at."""

    lowest_dsl_memory: CutCosts
    deepest_within_budget: CutCosts | None = None
    budget_mib: float | None = None
    best_time_ratio: CutCosts | None = None


def client_memory_mib(plan: CutCosts) -> float:
    """A client's memory in MiB: parameters with gradients and momentum, plus its peak saved activations (dsl)."""
    return plan.client_memory_bytes(BYTES_PER_PARAMETER) / MIB


def recommend(plans: Sequence[CutCosts], client_memory_budget_mib: float | None = None) -> Recommendations:
    """The lowest dsl peak memory, the deepest cut whose client fits the budget, the best dsl/sl time.

    Raises:
        ValueError: if the budget is smaller than the smallest client, naming both.
    """
    deepest = None
    if client_memory_budget_mib is not None:
        fitting = [p for p in plans if client_memory_mib(p) <= client_memory_budget_mib]
        if not fitting:
            smallest = min(plans, key=client_memory_mib)
            raise ValueError(
                f"Argument `--client-memory-mib`={client_memory_budget_mib:g} is smaller than the smallest client:"
                f" cut {smallest.index} needs {client_memory_mib(smallest):.1f} MiB (parameters with gradients and"
                " momentum, plus saved activations). Give a larger budget or a smaller batch."
            )
        deepest = max(fitting, key=lambda p: p.index)
    timed = [p for p in plans if p.time_ratio is not None]
    return Recommendations(
        lowest_dsl_memory=min(plans, key=lambda p: (p.saved_step_dsl, p.index)),
        deepest_within_budget=deepest,
        budget_mib=client_memory_budget_mib,
        best_time_ratio=min(timed, key=lambda p: p.time_ratio or math.inf) if timed else None,
    )


def rows(plans: Sequence[CutCosts], configured: int | None = None) -> list[dict[str, Any]]:
    """One flat row per cut, with readable units (what the CSV and the markdown show)."""
    out = []
    for p in plans:
        row: dict[str, Any] = {
            "cut": p.index,
            "name": p.name + (" (config)" if p.index == configured else ""),
            "client_params": p.client_params,
            "aux_head_params": p.aux_head_params,
            "client_mflops_per_sample": p.client_flops / 1e6,
            "server_mflops_per_sample": p.server_flops / 1e6,
            "bytes_up_per_sample": p.bytes_up,
            "bytes_down_per_sample_sl": p.bytes_down,
            "saved_client_mib_sl": p.saved_client_sl / MIB,
            "saved_server_mib_sl": p.saved_server_sl / MIB,
            "saved_step_mib_sl": p.saved_step_sl / MIB,
            "saved_client_mib_dsl": p.saved_client_dsl / MIB,
            "saved_server_mib_dsl": p.saved_server_dsl / MIB,
            "saved_step_mib_dsl": p.saved_step_dsl / MIB,
            "saved_dsl_over_sl": p.saved_ratio,
            "client_seconds": p.client_seconds,
            "server_seconds": p.server_seconds,
        }
        if p.sl_seconds is not None:
            row.update(sl_seconds=p.sl_seconds, dsl_seconds=p.dsl_seconds, time_dsl_over_sl=p.time_ratio)
        out.append(row)
    return out


def markdown(plans: Sequence[CutCosts], advice: Recommendations, header: str, configured: int | None = None) -> str:
    """The table and the recommendations, as markdown."""
    timed = plans[0].sl_seconds is not None
    columns = [
        "cut", "client params", "client MFLOPs", "server MFLOPs", "up B", "down B (sl)",
        "saved MiB sl: client / server / step", "saved MiB dsl: client / server / step", "dsl/sl", "c s", "s s",
    ]  # fmt: skip
    if timed:
        columns += ["sl s/batch", "dsl s/batch", "dsl/sl time"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in plans:
        name = f"{p.index}" + (f" {p.name}" if p.name else "") + (" ◀ config" if p.index == configured else "")
        cells = [
            name, f"{p.client_params:,}", f"{p.client_flops / 1e6:,.1f}", f"{p.server_flops / 1e6:,.1f}",
            f"{p.bytes_up:,.0f}", f"{p.bytes_down:,.0f}",
            f"{p.saved_client_sl / MIB:.1f} / {p.saved_server_sl / MIB:.1f} / {p.saved_step_sl / MIB:.1f}",
            f"{p.saved_client_dsl / MIB:.1f} / {p.saved_server_dsl / MIB:.1f} / {p.saved_step_dsl / MIB:.1f}",
            f"{p.saved_ratio:.3f}", f"{p.client_seconds:.3f}", f"{p.server_seconds:.3f}",
        ]  # fmt: skip
        if timed:
            cells += [f"{p.sl_seconds:.3f}", f"{p.dsl_seconds:.3f}", f"{p.time_ratio:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *advice_lines(advice)]
    return "\n".join(lines)


def advice_lines(advice: Recommendations) -> list[str]:
    """The recommendations, one sentence each."""
    low = advice.lowest_dsl_memory
    lines = [
        f"- Lowest dsl peak memory: cut {_label(low)}, {low.saved_step_dsl / MIB:.1f} MiB of saved activations"
        f" ({low.saved_ratio:.3f} of sl's {low.saved_step_sl / MIB:.1f} MiB)."
    ]
    if advice.deepest_within_budget is not None:
        fit = advice.deepest_within_budget
        lines.append(
            f"- Deepest cut whose client fits {advice.budget_mib:g} MiB: cut {_label(fit)},"
            f" {client_memory_mib(fit):.1f} MiB (parameters, gradients and momentum at 12 bytes per parameter, plus"
            " the client's saved activations in dsl)."
        )
    if advice.best_time_ratio is not None:
        best = advice.best_time_ratio
        lines.append(
            f"- Best dsl/sl time over the link: cut {_label(best)}, {best.dsl_seconds:.3f} s vs {best.sl_seconds:.3f} s"
            f" per batch ({best.time_ratio:.3f})."
        )
    return lines


def _label(plan: CutCosts) -> str:
    return f"{plan.index}" + (f" ({plan.name})" if plan.name else "")


def to_csv(plans: Sequence[CutCosts], configured: int | None = None) -> str:
    """The table as CSV (one row per cut)."""
    table = rows(plans, configured)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_json(plans: Sequence[CutCosts], advice: Recommendations, context: dict[str, Any]) -> str:
    """Everything as JSON: the context (network, batch, codec, link), every cut, the recommendations."""
    recommended = {
        "lowest_dsl_memory": advice.lowest_dsl_memory.index,
        "deepest_within_budget": advice.deepest_within_budget.index if advice.deepest_within_budget else None,
        "best_time_ratio": advice.best_time_ratio.index if advice.best_time_ratio else None,
    }
    return json.dumps({**context, "cuts": [p.as_dict() for p in plans], "recommended": recommended}, indent=1)


def plot(plans: Sequence[CutCosts], path: Path, title: str) -> Path:
    """A PNG: bytes per sample up (and down in sl), and the peak saved activations of sl and dsl, per cut."""
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend change

    cuts = [p.index for p in plans]
    fig = Figure(figsize=(10, 6.5), layout="tight")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(cuts, [p.bytes_up / 1024 for p in plans], label="up (activations + labels)")
    top.plot(cuts, [(p.bytes_up + p.bytes_down) / 1024 for p in plans], "--", label="up + down (sl)")
    top.set_ylabel("KiB per sample")
    top.set_title(title)
    top.legend()
    bottom.plot(cuts, [p.saved_step_sl / MIB for p in plans], label="sl: whole step")
    bottom.plot(cuts, [p.saved_step_dsl / MIB for p in plans], label="dsl: whole step")
    bottom.plot(cuts, [p.saved_client_dsl / MIB for p in plans], ":", label="dsl: client")
    bottom.plot(cuts, [p.saved_server_dsl / MIB for p in plans], ":", label="dsl: server")
    bottom.set_ylabel("peak saved activations (MiB)")
    bottom.set_xlabel("cut (client units)")
    bottom.legend()
    for axis in (top, bottom):
        for p in plans:
            if p.name:
                axis.axvline(p.index, color="grey", lw=0.6)
        axis.grid(alpha=0.3)
    for p in plans:
        if p.name:
            bottom.annotate(p.name, (p.index, 0), textcoords="offset points", xytext=(2, 2), fontsize=8)
    fig.savefig(path, dpi=120)
    return path
