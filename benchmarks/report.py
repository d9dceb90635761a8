"""The report of ``benchmarks/paper.py``: tables and plots from the runs' ``summary.json`` files."""

from __future__ import annotations

import json
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.privacy import read_after, section
from benchmarks.studies import CUTS, MODES, PRIVACY_STUDIES, STUDIES, report_of


def collect(out: Path) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Every finished run under ``out``, keyed by (dataset, cut, variant)."""
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(out.glob("*/summary.json")):
        dataset, cut, variant, _ = path.parent.name.split("-")
        summary = {**json.loads(path.read_text()), **read_after(path.parent)}  # attack.json: attack/*
        epochs = max(summary.get("epochs") or 1, 1)
        for direction in ("up", "down"):
            total = summary.get(f"comm/total_bytes_{direction}")
            if total is not None:
                summary[f"comm/bytes_{direction}_per_epoch"] = total / epochs
        summary["comm/bytes_per_epoch"] = summary.get("comm/bytes_up_per_epoch", 0) + summary.get(
            "comm/bytes_down_per_epoch", 0
        )
        sync = summary.get("comm/sync_bytes_up", 0) + summary.get("comm/sync_bytes_down", 0)
        summary["comm/sync_bytes_per_epoch"] = sync / epochs
        runs[(dataset, cut, variant)].append(summary)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def values(summaries: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for s in summaries if s.get(key) is not None]


def fmt(key: str, figures: list[float]) -> str:
    if not figures:
        return "–"
    mean, std = mean_std(figures)
    if "acc" in key:
        text, spread = f"{100 * mean:.2f}", f"{100 * std:.2f}"
    elif "bytes_per_" in key and "per_epoch" not in key:  # per token, per position, per sample: a few bytes
        text, spread = f"{mean:.1f} B", f"{std:.1f}"
    elif "bytes" in key:
        text, spread = f"{mean / 2**20:.1f} MiB", f"{std / 2**20:.1f}"
    elif key.startswith("params/"):
        text, spread = f"{int(mean):,}", f"{std:.0f}"
    else:
        text, spread = f"{mean:.1f}", f"{std:.1f}"
    return f"{text} ± {spread}" if len(figures) > 1 else text


def ratio_of_means(over: list[dict[str, Any]], under: list[dict[str, Any]], key: str) -> float | None:
    a, b = values(over, key), values(under, key)
    return statistics.fmean(a) / statistics.fmean(b) if a and b and statistics.fmean(b) else None


def ratio(over: list[dict[str, Any]], under: list[dict[str, Any]], key: str) -> str:
    value = ratio_of_means(over, under, key)
    return "–" if value is None else f"{value:.3f}"


PAPER_FIGURES = {
    "val/acc": "test acc (split network)",
    "val/aux_acc": "test acc (client + aux head)",
    "comm/bytes_up_per_epoch": "bytes up / epoch",
    "comm/bytes_down_per_epoch": "bytes down / epoch",
    "memory/saved_peak_bytes": "peak saved activations",
    "seconds_per_epoch": "s / epoch",
}


def paper_table(runs: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str:
    lines = ["| dataset | cut | mode | seeds | " + " | ".join(PAPER_FIGURES.values()) + " |"]
    lines.append("|" + "---|" * (4 + len(PAPER_FIGURES)))
    for dataset in sorted({k[0] for k in runs}):
        for cut in CUTS:
            for mode in MODES:
                summaries = runs.get((dataset, cut, mode))
                if summaries:
                    cells = [fmt(k, values(summaries, k)) for k in PAPER_FIGURES]
                    lines.append(f"| {dataset} | {cut} | {mode} | {len(summaries)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| dataset | cut | dsl − sl acc (points) | bytes ratio dsl/sl | memory ratio dsl/sl | time ratio dsl/sl |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in sorted({k[0] for k in runs}):
        for cut in CUTS:
            sl, dsl = runs.get((dataset, cut, "sl")), runs.get((dataset, cut, "dsl"))
            if not sl or not dsl:
                continue
            gap = 100 * (statistics.fmean(values(dsl, "val/acc")) - statistics.fmean(values(sl, "val/acc")))
            lines.append(
                f"| {dataset} | {cut} | {gap:+.2f} | {ratio(dsl, sl, 'comm/bytes_per_epoch')} |"
                f" {ratio(dsl, sl, 'memory/saved_peak_bytes')} | {ratio(dsl, sl, 'seconds_per_epoch')} |"
            )
    return "\n".join(lines) + "\n"


def gap(dsl: list[dict[str, Any]], sl: list[dict[str, Any]], key: str = "val/acc") -> str:
    """dsl's accuracy minus sl's, in points (means over seeds)."""
    a, b = values(dsl, key), values(sl, key)
    return f"{100 * (statistics.fmean(a) - statistics.fmean(b)):+.2f}" if a and b else "–"


def study_table(runs: dict[tuple[str, str, str], list[dict[str, Any]]], study: str) -> str:
    cuts, variants = STUDIES[study]
    spec = report_of(study)
    figures, ratios = spec.figures, spec.ratios
    paired = any(v.pair for v in variants)
    headers = [*figures.values(), *ratios.values(), *([spec.gap] if paired else [])]
    lines = ["| dataset | cut | arm | seeds | " + " | ".join(headers) + " |"]
    lines.append("|" + "---|" * (4 + len(headers)))
    for dataset in sorted({k[0] for k in runs}):
        for cut in cuts:
            sl = runs.get((dataset, cut, "sl"), [])
            for variant in variants:
                summaries = runs.get((dataset, cut, variant.name))
                if summaries:
                    cells = [fmt(k, values(summaries, k)) for k in figures]
                    cells += [ratio(summaries, sl, k) for k in ratios]
                    if paired:
                        pair = runs.get((dataset, cut, variant.pair), [])
                        cells.append(gap(summaries, pair, spec.accuracy) if variant.pair else "")
                    lines.append(
                        f"| {dataset} | {cut} | {variant.label or variant.name} | {len(summaries)} | "
                        + " | ".join(cells)
                        + " |"
                    )
    if spec.baseline:
        lines += ["", spec.baseline.line()]
    return "\n".join(lines) + "\n"


def _bar(ax: Any, x: float, figures: list[float], width: float, **style: Any) -> Any:
    mean, std = mean_std(figures)
    return ax.bar(x, mean, width, yerr=std if len(figures) > 1 else None, edgecolor="black", linewidth=0.5, **style)


def _curves(ax: Any, summaries: list[dict[str, Any]], color: str, label: str, aux: bool = True) -> None:
    for i, summary in enumerate(summaries):
        history = summary.get("history", [])
        epochs = [h["epoch"] + 1 for h in history]
        ax.plot(
            epochs,
            [100 * h.get("val/acc", float("nan")) for h in history],
            color=color,
            label=label if i == 0 else None,
        )
        if aux:
            aux_acc = [100 * h.get("val/aux_acc", float("nan")) for h in history]
            ax.plot(epochs, aux_acc, color=color, linestyle="--", label=f"{label} (aux head)" if i == 0 else None)


def paper_plots(runs: dict[tuple[str, str, str], list[dict[str, Any]]], out: Path, plt: Any) -> list[Path]:
    written = []
    for dataset in sorted({k[0] for k in runs}):
        cuts = [c for c in CUTS if any((dataset, c, m) in runs for m in MODES)]
        if not cuts:
            continue
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        groups = [
            (("val/acc", "val/aux_acc"), "test accuracy % (solid: split network, hatched: aux head)", 100),
            (
                ("comm/bytes_up_per_epoch", "comm/bytes_down_per_epoch"),
                "MiB per epoch (solid: up, hatched: down)",
                2**-20,
            ),
            (("memory/saved_peak_bytes",), "peak saved activations (MiB)", 2**-20),
            (("seconds_per_epoch",), "seconds per epoch", 1),
        ]
        for ax, (keys, title, scale) in zip(axes, groups, strict=True):
            width = 0.8 / (len(MODES) * len(keys))
            for i, cut in enumerate(cuts):
                for j, mode in enumerate(MODES):
                    for g, key in enumerate(keys):
                        figures = [v * scale for v in values(runs.get((dataset, cut, mode), []), key)]
                        if figures:
                            x = i + (j * len(keys) + g) * width - 0.4 + width / 2
                            label = mode if (i == 0 and g == 0) else None
                            _bar(ax, x, figures, width, color=f"C{j}", hatch="//" if g else None, label=label)
            ax.set_xticks(range(len(cuts)), cuts)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle(f"{dataset}: sl vs dsl at each cut")
        fig.tight_layout()
        written.append(_save(fig, out / f"{dataset}_bars.png", plt))

        fig, axes = plt.subplots(1, len(cuts), figsize=(5 * len(cuts), 3.6), squeeze=False)
        for ax, cut in zip(axes[0], cuts, strict=True):
            for j, mode in enumerate(MODES):
                _curves(ax, runs.get((dataset, cut, mode), []), f"C{j}", mode)
            ax.set(title=f"cut: {cut}", xlabel="epoch", ylabel="test accuracy (%)")
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / f"{dataset}_curves.png", plt))
    return written


def one_epoch(runs: dict[tuple[str, str, str], list[dict[str, Any]]], dataset: str, study: str) -> bool:
    """Whether every run of ``study`` on ``dataset`` validated once: its per-epoch curves would be single points."""
    cuts, variants = STUDIES[study]
    summaries = [s for c in cuts for v in variants for s in runs.get((dataset, c, v.name), [])]
    return bool(summaries) and all(len(s.get("history", [])) <= 1 for s in summaries)


def study_plots(runs: dict[tuple[str, str, str], list[dict[str, Any]]], out: Path, plt: Any, study: str) -> list[Path]:
    cuts, variants = STUDIES[study]
    spec = report_of(study)
    written = []
    for dataset in sorted({k[0] for k in runs}):
        if one_epoch(runs, dataset, study):
            written += overview_plot(runs, out, plt, study, dataset)
            continue
        for cut in cuts:
            arms = [v for v in variants if (dataset, cut, v.name) in runs]
            if len(arms) < 2:
                continue
            by_head = spec.heads
            fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2))
            for j, arm in enumerate(arms):
                summaries = runs[(dataset, cut, arm.name)]
                _curves(left, summaries, f"C{j}", arm.label or arm.name, aux=by_head)
                if by_head:
                    for g, key in enumerate((spec.accuracy, spec.aux_accuracy)):
                        figures = [100 * v for v in values(summaries, key)]
                        if figures:
                            _bar(right, j + 0.4 * g - 0.2, figures, 0.4, color=f"C{j}", hatch="//" if g else None)
                    continue
                acc = values(summaries, spec.accuracy)
                traffic = values(summaries, "comm/bytes_per_epoch")
                if acc and traffic:
                    x, y = statistics.fmean(traffic) / 2**20, 100 * statistics.fmean(acc)
                    right.scatter([x], [y], color=f"C{j}", s=40, label=arm.label or arm.name)
                    right.annotate(arm.name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            per_epoch = f"{spec.validation} accuracy"
            left.set(title=f"{dataset}, cut {cut}: {per_epoch} per epoch", xlabel="epoch", ylabel=f"{per_epoch} (%)")
            left.legend(fontsize=6, ncol=2)
            if by_head:
                right.set_xticks(range(len(arms)), [arm.name for arm in arms], rotation=20, fontsize=7)
                right.set(title="final test accuracy (solid: split network, hatched: client + aux head)")
                right.set(ylabel="test accuracy (%)")
            else:
                right.set(
                    title="final test accuracy against traffic",
                    xlabel="MiB across the cut per epoch (up + down)",
                    ylabel="test accuracy (%)",
                )
                right.legend(fontsize=7)
            fig.tight_layout()
            written.append(_save(fig, out / f"{study}_{dataset}_{cut}.png", plt))
    return written


HATCHES = (None, "//", "..")  # a study's figures side by side: solid, hatched, dotted


def _legends(ax: Any, arms: dict[str, str], hatches: list[str], extra: tuple[Any, ...] = ()) -> None:
    """Two legends: the arms' colours (``label -> colour``) and ``extra`` top left, what each hatch shows top right."""
    from matplotlib.patches import Patch

    hatched = [Patch(facecolor="white", edgecolor="black", hatch=HATCHES[g], label=n) for g, n in enumerate(hatches)]
    ax.add_artist(ax.legend(handles=hatched, fontsize=7, loc="upper right"))
    colours = [Patch(facecolor=colour, label=label) for label, colour in arms.items()]
    ax.legend(handles=[*colours, *extra], fontsize=7, loc="upper left")


def overview_plot(
    runs: dict[tuple[str, str, str], list[dict[str, Any]]], out: Path, plt: Any, study: str, dataset: str
) -> list[Path]:
    """One figure for a study of one epoch per run: the arms' accuracies at each cut, and their costs over sl's."""
    spec = report_of(study)
    all_cuts, variants = STUDIES[study]
    cuts = [c for c in all_cuts if any((dataset, c, v.name) in runs for v in variants)]
    arms = [v for v in variants if any((dataset, c, v.name) in runs for c in cuts)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 2]})

    accuracies = (spec.accuracy, spec.aux_accuracy)
    width, lowest = 0.8 / (len(arms) * len(accuracies)), 100.0
    for i, cut in enumerate(cuts):
        for j, arm in enumerate(arms):
            for g, key in enumerate(accuracies):
                figures = [100 * v for v in values(runs.get((dataset, cut, arm.name), []), key)]
                if figures:
                    x = i - 0.4 + (j * len(accuracies) + g + 0.5) * width
                    _bar(left, x, figures, width, color=f"C{j}", hatch=HATCHES[g])
                    lowest = min(lowest, statistics.fmean(figures))
    colours = {arm.label or arm.name: f"C{j}" for j, arm in enumerate(arms)}
    baseline: tuple[Any, ...] = ()
    if spec.baseline:
        accuracy = 100 * spec.baseline.accuracy
        baseline = (left.axhline(accuracy, color="black", linestyle="--", linewidth=1, label=spec.baseline.short),)
        lowest = min(lowest, accuracy)
    # The arms differ by a few points: start the axis near the lowest bar, and leave the top for the legends.
    left.set_ylim(max(0.0, 10 * (lowest // 10) - 10), 100)
    left.set_xticks(range(len(cuts)), cuts)
    left.set_xlim(-0.5, len(cuts) - 0.5)
    left.set(title=f"{dataset}: accuracy at each cut (error bars: std over seeds)", xlabel="cut", ylabel="accuracy (%)")
    _legends(left, colours, [spec.figures.get(k, k) for k in accuracies], baseline)

    paired = [v for v in arms if v.pair]
    keys = list(spec.ratios)
    width = 0.8 / max(1, len(paired) * len(keys))
    for i, cut in enumerate(cuts):
        for j, arm in enumerate(paired):
            under = runs.get((dataset, cut, arm.pair), [])
            for g, key in enumerate(keys):
                value = ratio_of_means(runs.get((dataset, cut, arm.name), []), under, key)
                if value is not None:
                    x = i - 0.4 + (j * len(keys) + g + 0.5) * width
                    bars = _bar(right, x, [value], width, color=f"C{arms.index(arm)}", hatch=HATCHES[g])
                    right.bar_label(bars, fmt="%.2f", fontsize=7)
    right.axhline(1, color="black", linewidth=0.8, linestyle=":")
    right.set_ylim(0, 1.35 * max([1.0, *(b.get_height() for b in right.patches)]))
    right.set_xticks(range(len(cuts)), cuts)
    right.set_xlim(-0.5, len(cuts) - 0.5)
    right.set(title="each dsl arm over sl at the same cut (1: as much as sl's)", xlabel="cut", ylabel="arm / sl")
    _legends(right, {a.label or a.name: f"C{arms.index(a)}" for a in paired}, [spec.figures.get(k, k) for k in keys])
    fig.tight_layout()
    return [_save(fig, out / f"{study}_{dataset}.png", plt)]


def pairs_plot(runs: dict[tuple[str, str, str], list[dict[str, Any]]], out: Path, plt: Any, study: str) -> list[Path]:
    """For studies whose dsl arms name their sl arm: both accuracies per setting, and dsl's gap to sl.

    A study of one epoch per run has its gaps in :func:`overview_plot` instead.
    """
    cuts, variants = STUDIES[study]
    key = report_of(study).accuracy
    written = []
    for dataset in sorted({k[0] for k in runs}):
        if one_epoch(runs, dataset, study):
            continue
        for cut in cuts:
            pairs = [
                (v, runs.get((dataset, cut, v.pair), [])) for v in variants if v.pair and (dataset, cut, v.name) in runs
            ]
            pairs = [(v, sl) for v, sl in pairs if sl]
            if not pairs:
                continue
            fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [3, 2]})
            names = ["n1" if v.name == "dsl" else v.name.removeprefix("dsl_") for v, _ in pairs]
            for i, (variant, sl) in enumerate(pairs):
                dsl = runs[(dataset, cut, variant.name)]
                for g, (summaries, color) in enumerate(((sl, "C0"), (dsl, "C1"))):
                    label = ("sl", "dsl")[g] if i == 0 else None
                    _bar(
                        left,
                        i + 0.4 * g - 0.2,
                        [100 * v for v in values(summaries, key)],
                        0.4,
                        color=color,
                        label=label,
                    )
                gaps = [100 * (d - statistics.fmean(values(sl, key))) for d in values(dsl, key)]
                _bar(right, i, gaps, 0.6, color="C1" if statistics.fmean(gaps) >= 0 else "C3")
            left.set_xticks(range(len(pairs)), names, rotation=20, fontsize=8)
            left.set(title=f"{dataset}, cut {cut}: test accuracy of the split network", ylabel="test accuracy (%)")
            left.legend(fontsize=8)
            right.axhline(0, color="black", linewidth=0.5)
            right.set_xticks(range(len(pairs)), names, rotation=20, fontsize=8)
            right.set(title="dsl − sl (points; bars: seeds' spread)", ylabel="points")
            fig.tight_layout()
            written.append(_save(fig, out / f"{study}_{dataset}_{cut}_pairs.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path, studies: list[str]) -> tuple[str, list[Path]]:
    """Write ``results.md`` and the PNGs into ``out``; return the markdown and the PNGs."""
    runs = collect(out)
    if not runs:
        print(f"no summary.json under {out}")
        return "", []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections, written = [], []
    for study in studies:
        if study == "paper":
            text, images = paper_table(runs), paper_plots(runs, out, plt)
        elif study in PRIVACY_STUDIES:
            text, images = section(runs, out, plt, study)
        else:
            text, images = study_table(runs, study), study_plots(runs, out, plt, study)
            images += pairs_plot(runs, out, plt, study)
        if text.count("\n") > 2 or images:
            images_md = "\n".join(f"![{p.stem}]({p.name})" for p in images)
            sections.append(f"### Study: {study}\n\n{text}\n{images_md}\n")
            written += images
            print(f"### Study: {study}\n\n{text}")
    markdown = "\n".join(sections)
    (out / "results.md").write_text(markdown)
    print(f"wrote {out / 'results.md'} and the PNGs beside it")
    return markdown, written


def publish(markdown: str, images: list[Path], document: Path, name: str) -> None:
    """Put the generated tables into ``document`` between its markers and copy the PNGs beside it.

    The document keeps its hand-written text; only the block between ``<!-- generated:NAME -->``
    and ``<!-- /generated:NAME -->`` is replaced, and the PNGs go to ``<document dir>/results/NAME/``.
    """
    begin, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    text = document.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"error: --publish {document}: add the lines '{begin}' and '{end}' where the tables go")
    folder = document.parent / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copyfile(image, folder / image.name)
        markdown = markdown.replace(f"]({image.name})", f"](results/{name}/{image.name})")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    note = "<!-- written by benchmarks/paper.py --publish; do not edit by hand -->\n"
    document.write_text(f"{head}{begin}\n{note}\n{markdown}\n{end}{tail}")
    print(f"published into {document} (PNGs in {folder})")
