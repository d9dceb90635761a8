"""The paper's experiment, side by side: modes x cuts (x datasets, x seeds) through the real CLI.

Each run is ``python -m lightning_dsl fit`` with the configs in ``configs/`` (the CPU protocol adds
``configs/paper/cpu.yaml``); the runner collects every run's ``summary.json`` and writes a markdown
table and PNG plots. Runs whose ``summary.json`` exists are not run again, so an interrupted sweep
continues where it stopped, and the report can be rebuilt from the runs alone (``--report-only``).

    python benchmarks/paper.py --protocol cpu                       # about an hour on 2 CPU cores
    nohup python benchmarks/paper.py --protocol cpu > paper.log &   # in the background
    python benchmarks/paper.py --protocol gpu --datasets cifar10 cifar100 --seeds 0 1 2
    python benchmarks/paper.py --protocol cpu --report-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CUTS = ("shallow", "middle", "deep")
MODES = ("sl", "dsl")


def run_name(dataset: str, cut: str, mode: str, seed: int) -> str:
    return f"{dataset}-{cut}-{mode}-s{seed}"


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


def command(args: argparse.Namespace, dataset: str, cut: str, mode: str, seed: int, run_dir: Path) -> list[str]:
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "runner.yaml").write_text(yaml.safe_dump(overlay))
    cmd = [sys.executable, "-m", "lightning_dsl", "fit", "--config", str(REPO / f"configs/{dataset}_resnet110.yaml")]
    if args.protocol == "cpu":
        cmd += ["--config", str(REPO / "configs/paper/cpu.yaml")]
    cmd += ["--config", str(run_dir / "runner.yaml")]
    cmd += [f"--model.init_args.mode={mode}", f"--model.init_args.split_index={cut}", f"--seed_everything={seed}"]
    cmd += [f"--data.init_args.seed={seed}"]
    if args.root:
        cmd += [f"--data.init_args.root={args.root}"]
    cmd += args.extra
    return cmd


def sweep(args: argparse.Namespace) -> None:
    if args.protocol == "cpu" and args.root:
        ensure_jpeg_copy(Path(args.root))
    for dataset in args.datasets:
        for seed in args.seeds:
            for cut in args.cuts:
                for mode in args.modes:
                    run_dir = args.out / run_name(dataset, cut, mode, seed)
                    if (run_dir / "summary.json").exists():
                        print(f"[skip] {run_dir.name}: summary.json exists", flush=True)
                        continue
                    cmd = command(args, dataset, cut, mode, seed, run_dir)
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
FIGURES = {
    "val/acc": "test acc (split network)",
    "val/aux_acc": "test acc (client + aux head)",
    "comm/bytes_up_per_epoch": "bytes up / epoch",
    "comm/bytes_down_per_epoch": "bytes down / epoch",
    "memory/saved_peak_bytes": "peak saved activations (B)",
    "seconds_per_epoch": "s / epoch",
}


def collect(out: Path) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(out.glob("*/summary.json")):
        dataset, cut, mode, _ = path.parent.name.split("-")
        summary = json.loads(path.read_text())
        epochs = max(summary.get("epochs") or 1, 1)
        for direction in ("up", "down"):
            total = summary.get(f"comm/total_bytes_{direction}")
            if total is not None:
                summary[f"comm/bytes_{direction}_per_epoch"] = total / epochs
        runs[(dataset, cut, mode)].append(summary)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(key: str, values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    if "acc" in key:
        text, spread = f"{100 * mean:.2f}", f"{100 * std:.2f}"
    elif "bytes" in key:
        text, spread = f"{mean / 2**20:.1f} MiB", f"{std / 2**20:.1f}"
    else:
        text, spread = f"{mean:.1f}", f"{std:.1f}"
    return f"{text} ± {spread}" if len(values) > 1 else text


def table(runs: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str:
    lines = ["| dataset | cut | mode | seeds | " + " | ".join(FIGURES.values()) + " |"]
    lines.append("|" + "---|" * (4 + len(FIGURES)))
    for (dataset, cut, mode), summaries in sorted(
        runs.items(), key=lambda kv: (kv[0][0], CUTS.index(kv[0][1]), kv[0][2])
    ):
        cells = [fmt(k, [s[k] for s in summaries if s.get(k) is not None]) for k in FIGURES]
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

            def ratio(key: str) -> str:
                a = [s[key] for s in dsl if s.get(key)]
                b = [s[key] for s in sl if s.get(key)]
                return f"{statistics.fmean(a) / statistics.fmean(b):.3f}" if a and b else "–"

            gap = 100 * (statistics.fmean(s["val/acc"] for s in dsl) - statistics.fmean(s["val/acc"] for s in sl))
            up_dsl = statistics.fmean(s.get("comm/total_bytes_up", 0) + s.get("comm/total_bytes_down", 0) for s in dsl)
            up_sl = statistics.fmean(s.get("comm/total_bytes_up", 0) + s.get("comm/total_bytes_down", 0) for s in sl)
            bytes_ratio = f"{up_dsl / up_sl:.3f}" if up_sl else "–"
            lines.append(
                f"| {dataset} | {cut} | {gap:+.2f} | {bytes_ratio} | {ratio('memory/saved_peak_bytes')} |"
                f" {ratio('seconds_per_epoch')} |"
            )
    return "\n".join(lines) + "\n"


def plots(runs: dict[tuple[str, str, str], list[dict[str, Any]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in sorted({k[0] for k in runs}):
        cuts = [c for c in CUTS if any((dataset, c, m) in runs for m in MODES)]
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        keys = [
            ("val/acc", "val/aux_acc"),
            ("comm/bytes_up_per_epoch", "comm/bytes_down_per_epoch"),
            ("memory/saved_peak_bytes",),
            ("seconds_per_epoch",),
        ]
        titles = [
            "test accuracy (solid: split network, hatched: aux head)",
            "MiB per epoch (solid: up, hatched: down)",
            "peak saved activations (MiB)",
            "seconds per epoch",
        ]
        for ax, group, title in zip(axes, keys, titles, strict=True):
            width = 0.8 / (len(MODES) * len(group))
            for i, cut in enumerate(cuts):
                for j, mode in enumerate(MODES):
                    for g, key in enumerate(group):
                        values = [s[key] for s in runs.get((dataset, cut, mode), []) if s.get(key) is not None]
                        if not values:
                            continue
                        mean, std = mean_std(values)
                        scale = 100 if "acc" in key else (1 / 2**20 if "bytes" in key else 1)
                        offset = (j * len(group) + g) * width - 0.4 + width / 2
                        ax.bar(
                            i + offset,
                            mean * scale,
                            width,
                            yerr=std * scale if len(values) > 1 else None,
                            color=f"C{j}",
                            hatch="//" if g else None,
                            edgecolor="black",
                            linewidth=0.5,
                            label=f"{mode}" if (i == 0 and g == 0) else None,
                        )
            ax.set_xticks(range(len(cuts)), cuts)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle(f"{dataset}: sl vs dsl at each cut")
        fig.tight_layout()
        path = out / f"{dataset}_bars.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, axes = plt.subplots(1, len(cuts), figsize=(5 * len(cuts), 3.6), squeeze=False)
        for ax, cut in zip(axes[0], cuts, strict=True):
            for j, mode in enumerate(MODES):
                for summary in runs.get((dataset, cut, mode), []):
                    history = summary.get("history", [])
                    epochs = [h["epoch"] + 1 for h in history]
                    ax.plot(
                        epochs,
                        [100 * h.get("val/acc", float("nan")) for h in history],
                        color=f"C{j}",
                        label=f"{mode} split",
                    )
                    ax.plot(
                        epochs,
                        [100 * h.get("val/aux_acc", float("nan")) for h in history],
                        color=f"C{j}",
                        linestyle="--",
                        label=f"{mode} aux head",
                    )
            ax.set_title(f"cut: {cut}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy (%)")
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), fontsize=8)
        fig.tight_layout()
        path = out / f"{dataset}_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(out: Path) -> None:
    runs = collect(out)
    if not runs:
        print(f"no summary.json under {out}")
        return
    text = table(runs)
    images = plots(runs, out)
    (out / "results.md").write_text(text + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n")
    print(text)
    print(f"wrote {out / 'results.md'} and {', '.join(p.name for p in images)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--datasets", nargs="+", default=["cifar10"], choices=["cifar10", "cifar100"])
    parser.add_argument("--cuts", nargs="+", default=list(CUTS), choices=CUTS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--root", default=None, help="data root (cpu protocol default: data/cifar10-jpg)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/out/paper-<protocol>")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plots from the runs")
    parser.add_argument("extra", nargs="*", help="more CLI overrides for every run, after --")
    args = parser.parse_args(argv)
    if args.root is None and args.protocol == "cpu":
        args.root = str(REPO / "data" / "cifar10-jpg")
    args.out = args.out or REPO / "benchmarks" / "out" / f"paper-{args.protocol}"
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        sweep(args)
    report(args.out)


if __name__ == "__main__":
    main()
