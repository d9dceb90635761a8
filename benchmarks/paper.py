"""The paper's experiment, side by side: modes x cuts (x datasets, x seeds) through the real CLI.

Each run is ``python -m lightning_dsl fit`` with the configs in ``configs/`` (the CPU protocol adds
``configs/paper/cpu.yaml``); the runner collects every run's ``summary.json`` and writes a markdown
table and PNG plots. Runs whose ``summary.json`` exists are not run again, so an interrupted sweep
continues where it stopped, and the report can be rebuilt from the runs alone (``--report-only``).

    python benchmarks/paper.py --protocol cpu                       # about an hour on 2 CPU cores
    nohup python benchmarks/paper.py --protocol cpu > paper.log &   # in the background
    python benchmarks/paper.py --protocol gpu --datasets cifar10 cifar100 --seeds 0 1 2
    python benchmarks/paper.py --protocol cpu --report-only
    python benchmarks/paper.py --protocol cpu --report-only --studies paper heads --publish docs/results.md
    python benchmarks/paper.py --protocol cpu --studies clients --seeds 0 1  # many clients, IID and non-IID
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CUTS = ("shallow", "middle", "deep")
MODES = ("sl", "dsl")


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a name (no '-'), the mode and the CLI overrides that make it."""

    name: str
    mode: str
    overrides: tuple[str, ...] = ()
    label: str = ""
    pair: str = ""  # the sl arm this dsl arm is compared with (the study table adds the accuracy gap)


SL = Variant("sl", "sl", label="sl")
# The paper's head (one linear layer, here on globally pooled z), named so the arm does not move with the default.
DSL = Variant("dsl", "dsl", ("--model.init_args.aux_head=linear",), label="dsl, linear head (pool 1)")


def _head(name: str, head: str, label: str, **kwargs: int) -> Variant:
    overrides = [f"--model.init_args.aux_head={head}"]
    overrides += [f"--model.init_args.aux_head_kwargs.{k}={v}" for k, v in kwargs.items()]
    return Variant(name, "dsl", tuple(overrides), label)


def _hybrid(every: int, weight: float) -> Variant:
    name = f"hybrid_k{every}_w{str(weight).replace('.', 'p')}"
    overrides = (f"--model.init_args.feedback_every={every}", f"--model.init_args.feedback_weight={weight}")
    return Variant(name, "hybrid", overrides, f"hybrid k={every} λ={weight}")


def _codec(mode: str, codec: str) -> Variant:
    return Variant(f"{mode}_{codec}", mode, (f"--model.init_args.codec={codec}",), f"{mode} + {codec}")


def _clients(mode: str, clients: int, partition: str, schedule: str = "parallel") -> Variant:
    """An arm of the clients study: ``partition`` is ``iid`` or ``dir<alpha>`` (Dirichlet, e.g. ``dir0.1``)."""
    scheme, alpha = ("iid", None) if partition == "iid" else ("dirichlet", partition[3:])
    overrides = [*(DSL.overrides if mode == "dsl" else ()), f"--data.init_args.num_clients={clients}"]
    overrides += [f"--data.init_args.partition={scheme}"] + ([f"--data.init_args.alpha={alpha}"] if alpha else [])
    overrides += [f"--model.init_args.client_schedule={schedule}"] if schedule != "parallel" else []
    tag = f"{'seq' if schedule == 'sequential' else 'n'}{clients}_{partition.replace('.', 'p')}"
    label = f"{mode}, {clients} clients {schedule}, {'IID' if alpha is None else f'Dir({alpha})'}"
    return Variant(f"{mode}_{tag}", mode, tuple(overrides), label, pair=f"sl_{tag}" if mode == "dsl" else "")


DSL_POOL2 = _head("dsl_pool2", "linear", "dsl, linear head (pool 2)", pool=2)
_NO_SCHEDULE = ("--model.init_args.client_lr_scheduler=null", "--model.init_args.server_lr_scheduler=null")

# What each study sweeps, and at which cuts. Every study shares the sl and dsl arms of the paper study,
# so a sweep never trains the same run twice.
STUDIES: dict[str, tuple[tuple[str, ...], tuple[Variant, ...]]] = {
    "paper": (CUTS, (SL, DSL)),
    "heads": (
        ("shallow",),
        (
            SL,
            DSL,
            DSL_POOL2,
            _head("dsl_pool4", "linear", "dsl, linear head (pool 4)", pool=4),
            _head("dsl_mlp", "mlp", "dsl, mlp head"),
            _head("dsl_conv", "conv", "dsl, conv head"),
            Variant(
                "dsl_pool4_headlr",
                "dsl",
                (*_head("", "linear", "", pool=4).overrides, "--model.init_args.aux_head_lr=0.01"),
                "dsl, linear head (pool 4), head lr 0.01",
            ),
        ),
    ),
    # Whether the pool-2 linear head's result at the shallow cut holds at the other cuts.
    "grid": (CUTS, (SL, DSL, DSL_POOL2)),
    # k at λ = 0.5 moves the bytes between dsl's and sl's; λ at k = 1 (the same bytes) moves only the gradient's weight.
    "hybrid": (("shallow",), (SL, DSL, _hybrid(4, 0.5), _hybrid(2, 0.5), _hybrid(1, 0.5), _hybrid(1, 0.25))),
    "codecs": (("shallow",), (SL, DSL, _codec("dsl", "fp16"), _codec("dsl", "int8"), _codec("sl", "int8"))),
    # Many clients (one process): N in {1, 5, 10}, IID and Dirichlet non-IID, parallel with FedAvg every epoch,
    # and the paper's own setting, 10 clients in turn. N = 1 is the paper study's sl and dsl.
    "clients": (
        ("shallow",),
        (
            SL,
            Variant(DSL.name, DSL.mode, DSL.overrides, DSL.label, pair="sl"),
            *[
                _clients(mode, n, partition)
                for n in (5, 10)
                for partition in ("iid", "dir1.0", "dir0.1")
                for mode in ("sl", "dsl")
            ],
            *[_clients(mode, 10, "iid", "sequential") for mode in ("sl", "dsl")],
        ),
    ),
    # The same recipe without the learning-rate schedule (constant lr 0.1), as the first measurement.
    "recipe": (
        ("shallow",),
        (
            SL,
            DSL,
            Variant("sl_constlr", "sl", _NO_SCHEDULE, "sl, constant lr"),
            Variant("dsl_constlr", "dsl", (*DSL.overrides, *_NO_SCHEDULE), "dsl, linear head, constant lr"),
        ),
    ),
}


# Studies whose dsl arms differ only in the head, so all send the same bytes: their plots compare the split
# network with the head alone instead of plotting accuracy against traffic.
HEAD_STUDIES = ("heads", "grid")


def run_name(dataset: str, cut: str, variant: str, seed: int) -> str:
    return f"{dataset}-{cut}-{variant}-s{seed}"


def ensure_jpeg_copy(root: Path) -> None:
    """Extract the offline JPEG copy of CIFAR-10 into ``root`` when it is missing and available."""
    if (root / "train").is_dir() or (root / "cifar-10-batches-py").is_dir():
        return
    if not SHARED_JPEG.exists():
        return  # the data module explains where it looked and how to get the data
    root.mkdir(parents=True, exist_ok=True)
    print(f"extracting {SHARED_JPEG} into {root}", flush=True)
    with tarfile.open(SHARED_JPEG) as archive:
        archive.extractall(root, filter="data")


def command(args: argparse.Namespace, dataset: str, cut: str, variant: Variant, seed: int, run_dir: Path) -> list[str]:
    overlay = {
        "trainer": {
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run_dir), "name": "csv"},
                },
                {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {
                        "save_dir": str(run_dir),
                        "project": "lightning-dsl-paper",
                        "offline": True,
                        "name": run_dir.name,
                    },
                },
            ],
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(run_dir),
        },
        "summary": {"dirpath": str(run_dir)},
    }
    if not args.dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "runner.yaml").write_text(yaml.safe_dump(overlay))
    cmd = [sys.executable, "-m", "lightning_dsl", "fit", "--config", str(REPO / f"configs/{dataset}_resnet110.yaml")]
    if args.protocol == "cpu":
        cmd += ["--config", str(REPO / "configs/paper/cpu.yaml")]
    cmd += ["--config", str(run_dir / "runner.yaml")]
    cmd += [f"--model.init_args.mode={variant.mode}", f"--model.init_args.split_index={cut}"]
    cmd += [f"--seed_everything={seed}", *variant.overrides]
    cmd += [f"--data.init_args.seed={seed}"]
    if args.root:
        cmd += [f"--data.init_args.root={args.root}"]
    cmd += args.extra
    return cmd


def planned(args: argparse.Namespace) -> list[tuple[str, str, Variant, int]]:
    """The runs of the chosen studies, in order, each once."""
    runs: dict[str, tuple[str, str, Variant, int]] = {}
    for study in args.studies:
        cuts, variants = STUDIES[study]
        for dataset in args.datasets:
            for seed in args.seeds:
                for cut in [c for c in cuts if c in args.cuts]:
                    for variant in variants:
                        if study == "paper" and variant.mode not in args.modes:
                            continue
                        if args.arms and variant.name not in args.arms:
                            continue
                        runs.setdefault(run_name(dataset, cut, variant.name, seed), (dataset, cut, variant, seed))
    return list(runs.values())


def sweep(args: argparse.Namespace) -> None:
    for dataset, cut, variant, seed in planned(args):
        run_dir = args.out / run_name(dataset, cut, variant.name, seed)
        if (run_dir / "summary.json").exists():
            print(f"[skip] {run_dir.name}: summary.json exists", flush=True)
            continue
        cmd = command(args, dataset, cut, variant, seed, run_dir)
        print(f"[run ] {run_dir.name}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        with open(run_dir / "stdout.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        print(f"[done] {run_dir.name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            print(f"       see {run_dir / 'stdout.log'}", flush=True)


# ---------------------------------------------------------------------------------------------- report


def collect(out: Path) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Every finished run under ``out``, keyed by (dataset, cut, variant)."""
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(out.glob("*/summary.json")):
        dataset, cut, variant, _ = path.parent.name.split("-")
        summary = json.loads(path.read_text())
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
    elif "bytes" in key:
        text, spread = f"{mean / 2**20:.1f} MiB", f"{std / 2**20:.1f}"
    elif key.startswith("params/"):
        text, spread = f"{int(mean):,}", f"{std:.0f}"
    else:
        text, spread = f"{mean:.1f}", f"{std:.1f}"
    return f"{text} ± {spread}" if len(figures) > 1 else text


def ratio(over: list[dict[str, Any]], under: list[dict[str, Any]], key: str) -> str:
    a, b = values(over, key), values(under, key)
    return f"{statistics.fmean(a) / statistics.fmean(b):.3f}" if a and b and statistics.fmean(b) else "–"


PAPER_FIGURES = {
    "val/acc": "test acc (split network)",
    "val/aux_acc": "test acc (client + aux head)",
    "comm/bytes_up_per_epoch": "bytes up / epoch",
    "comm/bytes_down_per_epoch": "bytes down / epoch",
    "memory/saved_peak_bytes": "peak saved activations",
    "seconds_per_epoch": "s / epoch",
}
STUDY_FIGURES = {
    "val/acc": "test acc (split network)",
    "val/aux_acc": "test acc (client + aux head)",
    "comm/bytes_per_epoch": "bytes up+down / epoch",
    "memory/saved_peak_bytes": "peak saved activations",
    "seconds_per_epoch": "s / epoch",
    "params/aux_head": "aux head params",
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


# Figures only some studies have (model transfers appear with many clients).
EXTRA_FIGURES = {"clients": {"comm/sync_bytes_per_epoch": "model sync bytes / epoch"}}


def gap(dsl: list[dict[str, Any]], sl: list[dict[str, Any]]) -> str:
    """dsl's accuracy minus sl's, in points (means over seeds)."""
    a, b = values(dsl, "val/acc"), values(sl, "val/acc")
    return f"{100 * (statistics.fmean(a) - statistics.fmean(b)):+.2f}" if a and b else "–"


def study_table(runs: dict[tuple[str, str, str], list[dict[str, Any]]], study: str) -> str:
    cuts, variants = STUDIES[study]
    figures = {**STUDY_FIGURES, **EXTRA_FIGURES.get(study, {})}
    paired = any(v.pair for v in variants)
    extra = " | dsl − sl acc (points)" if paired else ""
    lines = ["| dataset | cut | arm | seeds | " + " | ".join(figures.values()) + f" | bytes / sl's{extra} |"]
    lines.append("|" + "---|" * (5 + len(figures) + paired))
    for dataset in sorted({k[0] for k in runs}):
        for cut in cuts:
            sl = runs.get((dataset, cut, "sl"), [])
            for variant in variants:
                summaries = runs.get((dataset, cut, variant.name))
                if summaries:
                    cells = [fmt(k, values(summaries, k)) for k in figures]
                    cells.append(ratio(summaries, sl, "comm/bytes_per_epoch"))
                    if paired:
                        cells.append(gap(summaries, runs.get((dataset, cut, variant.pair), [])) if variant.pair else "")
                    lines.append(
                        f"| {dataset} | {cut} | {variant.label or variant.name} | {len(summaries)} | "
                        + " | ".join(cells)
                        + " |"
                    )
    return "\n".join(lines) + "\n"


def _bar(ax: Any, x: float, figures: list[float], width: float, **style: Any) -> None:
    mean, std = mean_std(figures)
    ax.bar(x, mean, width, yerr=std if len(figures) > 1 else None, edgecolor="black", linewidth=0.5, **style)


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


def study_plots(runs: dict[tuple[str, str, str], list[dict[str, Any]]], out: Path, plt: Any, study: str) -> list[Path]:
    cuts, variants = STUDIES[study]
    written = []
    for dataset in sorted({k[0] for k in runs}):
        for cut in cuts:
            arms = [v for v in variants if (dataset, cut, v.name) in runs]
            if len(arms) < 2:
                continue
            by_head = study in HEAD_STUDIES
            fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2))
            for j, arm in enumerate(arms):
                summaries = runs[(dataset, cut, arm.name)]
                _curves(left, summaries, f"C{j}", arm.label or arm.name, aux=by_head)
                if by_head:
                    for g, key in enumerate(("val/acc", "val/aux_acc")):
                        figures = [100 * v for v in values(summaries, key)]
                        if figures:
                            _bar(right, j + 0.4 * g - 0.2, figures, 0.4, color=f"C{j}", hatch="//" if g else None)
                    continue
                acc = values(summaries, "val/acc")
                traffic = values(summaries, "comm/bytes_per_epoch")
                if acc and traffic:
                    x, y = statistics.fmean(traffic) / 2**20, 100 * statistics.fmean(acc)
                    right.scatter([x], [y], color=f"C{j}", s=40, label=arm.label or arm.name)
                    right.annotate(arm.name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            left.set(title=f"{dataset}, cut {cut}: test accuracy per epoch", xlabel="epoch", ylabel="test accuracy (%)")
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
        else:
            text, images = study_table(runs, study), study_plots(runs, out, plt, study)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--studies", nargs="+", default=["paper"], choices=list(STUDIES))
    parser.add_argument("--datasets", nargs="+", default=["cifar10"], choices=["cifar10", "cifar100"])
    parser.add_argument("--cuts", nargs="+", default=list(CUTS), choices=CUTS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--arms", nargs="+", default=None, help="only these arms of the studies (e.g. dsl_conv)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--root", default=None, help="data root (cpu protocol default: data/cifar10-jpg)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/out/paper-<protocol>")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--publish", type=Path, default=None, help="also put the tables into this markdown file")
    parser.add_argument("--publish-name", default=None, help="the marker name in that file (default: the out dir's)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plots from the runs")
    parser.add_argument("extra", nargs="*", help="more CLI overrides for every run, after --")
    args = parser.parse_args(argv)
    if args.root is None and args.protocol == "cpu":
        args.root = str(REPO / "data" / "cifar10-jpg")
    args.out = args.out or REPO / "benchmarks" / "out" / f"paper-{args.protocol}"
    if args.dry_run:
        sweep(args)  # prints the commands, writes nothing
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if args.protocol == "cpu" and args.root:
            ensure_jpeg_copy(Path(args.root))
        sweep(args)
    markdown, images = report(args.out, args.studies)
    if args.publish and markdown:
        publish(markdown, images, args.publish, args.publish_name or args.out.name)


if __name__ == "__main__":
    main()
