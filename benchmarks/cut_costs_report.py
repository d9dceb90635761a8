"""The report of ``benchmarks/cut_costs.py``: the machine, the statistics, tables (a)-(g), the checks, the figure.

Everything here reads the ``results`` dictionary :func:`benchmarks.cut_costs.main` returns (and writes to
``cut_costs.json``), so a report can be made again from a saved run without measuring anything.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

MODES = ("sl", "dsl")
MIB = 2**20
SHALLOW_TARGET = 0.60  # issue 3: dsl's combined saved-activation peak at the shallow cut, relative to sl
HEAD_TARGET = 0.02  # issue 3: the auxiliary head adds at most 2 % to the step time
CODEC_TARGET = 0.05  # issue 5: encode + decode cost at most 5 % of the step at ResNet-110's shallow cut


def summary(values: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values * 3)
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def hardware(device: torch.device) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    info: dict[str, Any] = {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def mib(value: float) -> str:
    return f"{value / MIB:,.1f}"


def tables(results: dict[str, Any]) -> str:
    cuts = results["cuts"]
    lines = [
        "### (a) Bytes per batch across the cut",
        "",
        "| cut | split | A (act. bytes) | L (label bytes) | sl up | sl down | dsl up | dsl down | dsl/sl"
        " | (A+L)/(2A+L) | equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        sl, dsl = c["sl"], c["dsl"]
        lines.append(
            f"| {name} | {c['split_index']} | {c['activation_bytes']:,} | {c['label_bytes']:,} | {sl['bytes_up']:,}"
            f" | {sl['bytes_down']:,} | {dsl['bytes_up']:,} | {dsl['bytes_down']:,} | {c['bytes_ratio']}"
            f" = {float(Fraction(c['bytes_ratio'])):.6f} | {c['bytes_ratio_closed_form']} | {c['bytes_ratio_exact']} |"
        )
    lines += [
        "",
        "### (b) Peak saved-for-backward activations (MiB)",
        "",
        "| cut | sl client | sl server | sl combined | dsl client | dsl server | dsl combined | dsl/sl"
        " | ideal max(C,S)/(C+S) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        sl, dsl = c["sl"], c["dsl"]
        lines.append(
            f"| {name} | {mib(sl['saved_client_peak_bytes'])} | {mib(sl['saved_server_peak_bytes'])}"
            f" | {mib(sl['saved_peak_bytes'])} | {mib(dsl['saved_client_peak_bytes'])}"
            f" | {mib(dsl['saved_server_peak_bytes'])} | {mib(dsl['saved_peak_bytes'])}"
            f" | {c['saved_peak_ratio']:.4f} | {c['saved_peak_ideal']:.4f} |"
        )
    lines += [
        "",
        "C: the client's graph (dsl client peak; it includes the cut activation z); S: the rest of the end-to-end"
        " graph (sl combined - C). Run alone in dsl, the server also holds its input z, so its peak is S + A.",
    ]
    if any("cuda_step_peak_bytes" in c["sl"] for c in cuts.values()):
        lines += [
            "",
            "### (c) CUDA peak allocated (MiB; model, gradients and optimizer state included)",
            "",
            "| cut | mode | client phase | server phase | step |",
            "|---|---|---|---|---|",
        ]
        for name, c in cuts.items():
            for mode in MODES:
                m = c[mode]
                lines.append(
                    f"| {name} | {mode} | {mib(m.get('cuda_client_peak_bytes', 0))}"
                    f" | {mib(m.get('cuda_server_peak_bytes', 0))} | {mib(m['cuda_step_peak_bytes'])} |"
                )
    repeats = results["config"]["repeats"]
    lines += [
        "",
        f"### (d, e) Step time, side by side ({repeats} interleaved repeats; median [IQR]; tracker off)",
        "",
        "| cut | sl s/step | dsl s/step | dsl/sl (paired, median [min, max]) | head alone ms | head share of dsl step"
        " (median [min, max]) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        t = c["time"]
        sl, dsl, ratio, head, share = t["sl_s"], t["dsl_s"], t["dsl_over_sl"], t["head_s"], t["head_share"]
        lines.append(
            f"| {name} | {sl['median']:.3f} [{sl['q1']:.3f}, {sl['q3']:.3f}]"
            f" | {dsl['median']:.3f} [{dsl['q1']:.3f}, {dsl['q3']:.3f}]"
            f" | {ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]"
            f" | {head['median'] * 1e3:.2f} | {share['median']:.3%} [{share['min']:.3%}, {share['max']:.3%}] |"
        )
    lines += [
        "",
        "### (f) Codecs at the cut: bytes per batch up and encode + decode time (alone) over the dsl step",
        "",
        "| cut | codec | bytes up / batch | / float32 | encode+decode ms | share of dsl step |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        fp32 = c["activation_bytes"] + c["label_bytes"]
        for codec, row in c["codecs"].items():
            up = row["bytes"] + c["label_bytes"]
            lines.append(
                f"| {name} | {codec} | {up:,} | {up / fp32:.4f} | {row['seconds'] * 1e3:.2f} | {row['share']:.3%} |"
            )
    lines += [
        "",
        "### (g) Auxiliary heads: parameters and forward + backward time, relative to the client",
        "",
        "| cut | head | params | params / client's | fwd+bwd ms | time / client's fwd+bwd |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        for row in c["heads"]:
            lines.append(
                f"| {name} | {row['head']} | {row['params']:,} | {row['params_over_client']:.4f}"
                f" | {row['seconds'] * 1e3:.2f} | {row['time_over_client']:.3%} |"
            )
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> list[str]:
    cuts = results["cuts"]
    out = []
    for name, c in cuts.items():
        out.append(f"bytes ratio == (A+L)/(2A+L) at {name}: {'PASS' if c['bytes_ratio_exact'] else 'MISS'}")
    if "shallow" in cuts:
        ratio = cuts["shallow"]["saved_peak_ratio"]
        verdict = "PASS" if ratio <= SHALLOW_TARGET else "MISS"
        out.append(f"saved-activation peak dsl/sl at shallow = {ratio:.4f} (target <= {SHALLOW_TARGET}): {verdict}")
    for name, c in cuts.items():
        share = c["time"]["head_share"]["median"]
        verdict = "PASS" if share <= HEAD_TARGET else "MISS"
        out.append(f"aux head share of the dsl step at {name} = {share:.3%} (target <= {HEAD_TARGET:.0%}): {verdict}")
    if "shallow" in cuts:
        for codec, row in cuts["shallow"]["codecs"].items():
            verdict = "PASS" if row["share"] <= CODEC_TARGET else "MISS"
            out.append(
                f"{codec} encode+decode share of the dsl step at shallow = {row['share']:.3%}"
                f" (target <= {CODEC_TARGET:.0%}): {verdict}"
            )
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = list(results["cuts"])
    x = range(len(cuts))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for i, mode in enumerate(MODES):
        values = [results["cuts"][c][mode]["saved_peak_bytes"] / MIB for c in cuts]
        bars = left.bar([k + (i - 0.5) * width for k in x], values, width, label=mode)
        left.bar_label(bars, fmt="%.0f", fontsize=8)
    for k, c in enumerate(cuts):
        left.annotate(f"dsl/sl {results['cuts'][c]['saved_peak_ratio']:.3f}", (k, 0), xytext=(0, -28),
                      textcoords="offset points", ha="center", fontsize=8)  # fmt: skip
    left.set(xticks=list(x), xticklabels=cuts, ylabel="MiB", title="Peak saved-for-backward activations (combined)")
    left.legend(loc="upper center", ncols=2)
    left.margins(y=0.15)
    width = 0.2
    for i, (mode, direction) in enumerate((m, d) for m in MODES for d in ("up", "down")):
        values = [results["cuts"][c][mode][f"bytes_{direction}"] / MIB for c in cuts]
        bars = right.bar([k + (i - 1.5) * width for k in x], values, width, label=f"{mode} {direction}")
        right.bar_label(bars, fmt="%.1f", fontsize=7)
    right.set(xticks=list(x), xticklabels=cuts, ylabel="MiB per batch", title="Bytes across the cut per batch")
    right.legend(loc="upper center", ncols=4, fontsize=8)
    right.margins(y=0.15)
    config = results["config"]
    fig.suptitle(f"ResNet-{config['depth']}, batch {config['batch_size']}, float32", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
