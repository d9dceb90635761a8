"""The ``defenses`` study's report: the table, the accuracy–leakage frontier and the grids as σ and α grow.

Every arm of the study is fitted, then attacked by the curious server of the ``privacy`` study (``attack.json``:
the decoder trained on what the server would receive of its auxiliary images, through the run's own clip and
noise, and scored on what it received of 256 private training images). The leakage figures are the attack's:
its PSNR and SSIM, and the dCor of the private inputs and what the server received. ``privacy/dcor`` (the
monitor, validation inputs, the activations before the defense) is in the table too.

The split network's test accuracy of a label-private arm is measured against randomized test labels (what the
server can know); the table and the frontier give the accuracy on true labels it implies: with keep
probability ``p = e^ε / (e^ε + k − 1)`` and ``q = (1 − p) / (k − 1)``, a measured accuracy ``m`` comes from
``(m − q) / (p − q)`` on true labels (its expectation; the test split's 10,000 draws give it about ±1 point).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from benchmarks.studies import PRIVACY_STUDIES, STUDIES, Variant

Runs = dict[tuple[str, str, str], list[dict[str, Any]]]
Arms = list[tuple[Variant, list[dict[str, Any]]]]

STUDY = "defenses"
NUM_CLASSES = 10  # CIFAR-10
FAMILIES = {"": "undefended", "nopeek": "NoPeek α", "noise": "noise σ", "labels": "labels ε"}
MARKERS = {"": "o", "nopeek": "^", "noise": "s", "labels": "D"}
COLUMNS = {
    "val/acc": "test acc (split network)",
    "val/true_acc": "… on true labels",
    "val/aux_acc": "test acc (client + aux head)",
    "privacy/dcor": "dCor(x, z) (validation, before the defense)",
    "attack/dcor": "dCor(x, received) (private)",
    "attack/dcor_corrected": "dCor²*(x, received), bias-corrected",
    "attack/psnr": "PSNR (dB)",
    "attack/ssim": "SSIM",
    "privacy/epsilon": "ε (activations, δ=1e-5)",
    "privacy/label_epsilon": "ε (labels, whole run)",
}
TEXT = (
    "Defenses at ResNet-20's shallow cut (the CPU protocol: 10,000 CIFAR-10 training images, 8 epochs), each arm"
    " fitted, then attacked by the curious server of the privacy study: it holds the client half's weights (the"
    " run's last checkpoint) and 5,000 test images nobody trained on, knows the defense and its parameters, and"
    " trains its decoder on what it would receive of them (clipped and noised as the client does, with its own"
    " noise draws); PSNR, SSIM and dCor(x, received) are on what it received of 256 private training images (one"
    " release, at the last epoch's weights). dCor(x, z) is the monitor's, on validation batches of 128, before"
    " any clip or noise. dCor²* is the bias-corrected dCor² of the same private pairs (near 0 for what carries"
    " nothing; the V-statistic is biased up in high dimension: docs/privacy.md); '–' where the attack predates it."
    " ε (activations) is Opacus' RDP accountant for σ over the 8 epochs (each sample sent once"
    " per epoch; what it covers: docs/privacy.md); ε (labels) is ε × 8 epochs. A label-private arm's split network"
    " is scored against randomized test labels (what its server can know); '… on true labels' is the accuracy"
    " that implies, (m − q) / (p − q). The frontier: the split network's accuracy (on true labels) against the"
    " attack's PSNR and against its dCor, one point per arm (mean over seeds; bars: std), sl and dsl each with"
    " its frontier (the arms no other arm of its mode beats on both axes)."
)


def family(variant: Variant) -> tuple[str, float | None]:
    """``(defense, its parameter)`` of an arm from its name: ``("noise", 1.0)``, ``("", None)`` undefended."""
    found = re.fullmatch(r"(?:sl|dsl)(?:_(nopeek|noise|labels)(\d+)p(\d+))?", variant.name)
    if found is None:
        raise ValueError(f"variant {variant.name!r} is not an arm of the defenses study")
    name, whole, fraction = found.groups()
    return (name, float(f"{whole}.{fraction}")) if name else ("", None)


def short_label(variant: Variant) -> str:
    """``"dsl, σ=1"``, ``"sl, none"``: the mode and the defense's parameter."""
    name, value = family(variant)
    return f"{variant.mode}, " + ("none" if not name else f"{FAMILIES[name].split()[-1]}={value:g}")


def label_keep(epsilon: float, k: int = NUM_CLASSES) -> tuple[float, float]:
    """``(p, q)``: the probability that randomized response keeps a label, and that it gives one other class."""
    p = 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))
    return p, (1.0 - p) / (k - 1)


def with_true_accuracy(variant: Variant, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``summaries`` with ``val/true_acc``: ``val/acc`` itself, or for a label-private arm what it implies."""
    name, epsilon = family(variant)
    rows = []
    for summary in summaries:
        measured = summary.get("val/acc")
        true = measured
        if name == "labels" and measured is not None and epsilon is not None:
            p, q = label_keep(epsilon)
            true = (measured - q) / (p - q)
        rows.append({**summary, "val/true_acc": true})
    return rows


def arms(runs: Runs) -> Arms:
    """The study's arms that have runs, in the study's order, their summaries with ``val/true_acc``."""
    cuts, variants = STUDIES[STUDY]
    dataset = PRIVACY_STUDIES[STUDY]
    return [
        (v, with_true_accuracy(v, runs[(dataset, cuts[0], v.name)]))
        for v in variants
        if runs.get((dataset, cuts[0], v.name))
    ]


def table(found: Arms) -> list[str]:
    from benchmarks.privacy import fmt
    from benchmarks.report import values

    dataset, cut = PRIVACY_STUDIES[STUDY], STUDIES[STUDY][0][0]
    lines = [
        "| dataset | cut | arm | seeds | " + " | ".join(COLUMNS.values()) + " |",
        "|" + "---|" * (4 + len(COLUMNS)),
    ]
    for variant, summaries in sorted(found, key=lambda arm: (arm[0].mode != "sl", _order(arm[0]))):
        cells = []
        for key in COLUMNS:
            figures = values(summaries, key)
            if key == "val/true_acc" and family(variant)[0] != "labels":
                cells.append("=")  # the measured accuracy is on true labels
            elif key.startswith("privacy/") and "epsilon" in key and not figures:
                cells.append("∞")  # nothing bounds it
            else:
                cells.append(fmt(key, figures))
        lines.append(f"| {dataset} | {cut} | {variant.label} | {len(summaries)} | " + " | ".join(cells) + " |")
    return lines


def _order(variant: Variant) -> tuple[int, float]:
    name, value = family(variant)
    return list(FAMILIES).index(name), value or 0.0


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both axes (lower leakage ``x``, higher accuracy ``y``), by ``x``.

    >>> pareto([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (0.5, 0.1)])
    [(0.5, 0.1), (1.0, 0.5), (3.0, 0.9)]
    """
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def frontier_plot(found: Arms, out: Path, plt: Any) -> list[Path]:
    from benchmarks.report import mean_std, values

    axes_keys = (("attack/psnr", "inversion PSNR (dB) on private images (lower: less leaked)"),
                 ("attack/dcor", "dCor(x, what the server received) (lower: less leaked)"))  # fmt: skip
    if not any(values(s, "attack/psnr") for _, s in found):
        return []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (key, xlabel) in zip(axes, axes_keys, strict=True):
        for j, mode in enumerate(("sl", "dsl")):
            points = []
            for variant, summaries in found:
                xs, ys = values(summaries, key), values(summaries, "val/true_acc")
                if variant.mode != mode or not xs or not ys:
                    continue
                (x, dx), (y, dy) = mean_std(xs), mean_std([100 * v for v in ys])
                name = family(variant)[0]
                ax.errorbar(x, y, xerr=dx, yerr=dy, fmt=MARKERS[name], color=f"C{j}", ms=6, capsize=2,
                            markerfacecolor="none" if name == "labels" else f"C{j}")  # fmt: skip
                tag = short_label(variant).split(", ")[1]
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6, color=f"C{j}")
                points.append((x, y))
            front = pareto(points)
            if front:
                ax.plot(*zip(*front, strict=True), color=f"C{j}", lw=1.2, label=f"{mode}: frontier")
        if key == "attack/psnr":
            baselines = [v for _, s in found for v in values(s, "attack/baseline_psnr")]
            if baselines:
                ax.axvline(mean_std(baselines)[0], color="grey", ls=":", lw=1, label="decoder on zeros")
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="test accuracy, split network (%; true labels)")
    handles = [plt.Line2D([], [], color="k", marker=m, ls="", label=FAMILIES[n]) for n, m in MARKERS.items()]
    axes[0].legend(handles=[*axes[0].get_legend_handles_labels()[0], *handles], fontsize=7, loc="lower right")
    fig.suptitle("Defenses at ResNet-20's shallow cut (CIFAR-10, CPU protocol): accuracy against leakage")
    fig.tight_layout()
    path = out / f"{STUDY}_frontier_cifar10.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def grid_plots(found: Arms, out: Path, plt: Any, seed: int | None = None) -> list[Path]:
    """Per defense that changes the activations (NoPeek, noise), the seed-``seed`` reconstructions as it grows.

    ``seed=None``: the lowest seed that has a reconstruction grid under ``out``.
    """
    from benchmarks.privacy import GRID, montage, seed_of

    dataset, cut = PRIVACY_STUDIES[STUDY], STUDIES[STUDY][0][0]
    if seed is None:
        seeds = [seed_of(grid.parent.name) for grid in out.glob(f"{dataset}-{cut}-*-s*/{GRID}")]
        if not seeds:
            return []
        seed = min(seeds)
    paths = []
    for defense in ("nopeek", "noise"):
        rows: list[tuple[str, Path]] = []
        for mode in ("sl", "dsl"):
            chosen = sorted((v for v, _ in found if v.mode == mode and family(v)[0] in ("", defense)), key=_order)
            rows += [(short_label(v), out / f"{dataset}-{cut}-{v.name}-s{seed}" / GRID) for v in chosen]
        title = f"Reconstructions as {FAMILIES[defense]} grows ({dataset}, cut {cut}, seed {seed})"
        figure = montage(rows, title, out / f"{STUDY}_grids_{defense}_{dataset}.png", plt)
        paths += [figure] if figure else []
    return paths


def section(runs: Runs, out: Path, plt: Any) -> tuple[list[str], list[Path], str]:
    """The defenses study's table lines, figures and note."""
    found = arms(runs)
    if not found:
        return [], [], TEXT
    return table(found), [*frontier_plot(found, out, plt), *grid_plots(found, out, plt)], TEXT
