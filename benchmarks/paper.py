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
    python benchmarks/paper.py --studies text --datasets sst2 --seeds 0 1 --out benchmarks/out/text  # transformer
    python benchmarks/paper.py --studies privacy privacy_fsha --seeds 0 1 --out benchmarks/out/privacy-cpu  # attacks
    python benchmarks/paper.py --studies privacy_text --datasets sst2 --seeds 0 1 --out benchmarks/out/privacy-cpu

A study with a step after the fit (``AFTER`` in ``benchmarks/studies.py``: the privacy studies' attack) keeps each
run's last checkpoint and runs the step on it (``benchmarks/privacy.py``); a step whose output exists is skipped.

Every fit checkpoints at the end of each epoch, so a fit that was stopped (a killed process, a machine that went
away) continues from its last finished epoch when the sweep is run again (``--ckpt_path``; ``[resume]`` in the
log, its ``stdout.log`` appended to). A resumed run's per-epoch history and byte totals span the whole run (the
callbacks' states are in the checkpoint); its wall-clock figures cover the part after the resume, and its data
order after the resume is not the uninterrupted run's. A finished run without a step after it keeps no checkpoint.
To start a run over instead, delete its directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside it
from benchmarks.privacy import after_fit, last_checkpoint  # noqa: E402
from benchmarks.report import publish, report  # noqa: E402
from benchmarks.studies import AFTER, CUTS, DATASETS, MODES, STUDIES, After, Variant  # noqa: E402

SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


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


def command(
    args: argparse.Namespace,
    dataset: str,
    cut: str,
    variant: Variant,
    seed: int,
    run_dir: Path,
) -> list[str]:
    """The fit's command line.

    Every fit checkpoints each epoch (to resume a stopped one); :func:`sweep` keeps the last checkpoint of a
    finished fit only for a step after it.
    """
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
            "enable_checkpointing": True,
            "default_root_dir": str(run_dir),
        },
        "summary": {"dirpath": str(run_dir)},
    }
    if not args.dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "runner.yaml").write_text(yaml.safe_dump(overlay))
    data = DATASETS[dataset]
    # With a test split apart from validation the run is tested after fit, in the same process (one summary).
    run = [str(REPO / "benchmarks" / "fit_then_test.py")] if data.test else ["-m", "lightning_dsl", "fit"]
    cmd = [sys.executable, *run, "--config", str(REPO / data.config)]
    if args.protocol == "cpu" and data.cpu_overlay:
        cmd += ["--config", str(REPO / data.cpu_overlay)]
    cmd += ["--config", str(run_dir / "runner.yaml")]
    cmd += [f"--model.init_args.mode={variant.mode}", f"--model.init_args.split_index={cut}"]
    cmd += [f"--seed_everything={seed}", *variant.overrides]
    cmd += [f"--data.init_args.seed={seed}"]
    root = args.root or (data.cpu_root if args.protocol == "cpu" else None)
    if root:
        cmd += [f"--data.init_args.root={root}"]
    cmd += args.extra
    return cmd


def planned(args: argparse.Namespace) -> list[tuple[str, str, Variant, int]]:
    """The runs of the chosen studies, in order, each once."""
    runs: dict[str, tuple[str, str, Variant, int]] = {}
    for study in args.studies:
        cuts, variants = STUDIES[study]
        for dataset in args.datasets:
            for seed in args.seeds:
                for cut in [c for c in cuts if args.cuts is None or c in args.cuts]:
                    for variant in variants:
                        if study == "paper" and variant.mode not in args.modes:
                            continue
                        if args.arms and variant.name not in args.arms:
                            continue
                        runs.setdefault(run_name(dataset, cut, variant.name, seed), (dataset, cut, variant, seed))
    return list(runs.values())


def steps(args: argparse.Namespace) -> dict[str, After]:
    """The step after the fit (:data:`~benchmarks.studies.AFTER`) of each planned run that has one, by run name."""
    after: dict[str, After] = {}
    for study in [s for s in args.studies if s in AFTER]:
        cuts, variants = STUDIES[study]
        for dataset in args.datasets:
            for seed in args.seeds:
                for cut in cuts:
                    for variant in variants:
                        after.setdefault(run_name(dataset, cut, variant.name, seed), AFTER[study])
    return after


def sweep(args: argparse.Namespace) -> None:
    after = steps(args)
    for dataset, cut, variant, seed in planned(args):
        run_dir = args.out / run_name(dataset, cut, variant.name, seed)
        step = after.get(run_dir.name)
        if (run_dir / "summary.json").exists():
            print(f"[skip] {run_dir.name}: summary.json exists", flush=True)
            if step is not None:  # the step after the fit resumes too (the fit's command gives its arguments)
                after_fit(step, command(args, dataset, cut, variant, seed, run_dir), run_dir, args.dry_run)
            continue
        resume = last_checkpoint(run_dir) if run_dir.is_dir() else None  # a fit that stopped before its end
        cmd = command(args, dataset, cut, variant, seed, run_dir)
        if resume is not None:
            cmd.append(f"--ckpt_path={resume}")
        print(f"[{'resume' if resume else 'run '}] {run_dir.name}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            if step is not None:
                after_fit(step, cmd, run_dir, dry_run=True)
            continue
        start = time.perf_counter()
        with open(run_dir / "stdout.log", "a" if resume else "w") as log:
            if resume:
                log.write(f"\n[resume] from {resume}\n")
                log.flush()
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        print(f"[done] {run_dir.name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            print(f"       see {run_dir / 'stdout.log'}", flush=True)
            continue
        keep = last_checkpoint(run_dir) if step is not None else None  # the finished fit's, for the step
        for ckpt in run_dir.rglob("*.ckpt"):  # the others served a resume only
            if ckpt != keep:
                ckpt.unlink()
        if step is not None:
            after_fit(step, cmd, run_dir)


# ---------------------------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--studies", nargs="+", default=["paper"], choices=list(STUDIES))
    parser.add_argument("--datasets", nargs="+", default=["cifar10"], choices=list(DATASETS))
    parser.add_argument("--cuts", nargs="+", default=None, help=f"only these of the studies' cuts (e.g. {CUTS[0]})")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--arms", nargs="+", default=None, help="only these arms of the studies (e.g. dsl_conv)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--root", default=None, help="data root (cpu protocol: the dataset's default)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/out/paper-<protocol>")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--publish", type=Path, default=None, help="also put the tables into this markdown file")
    parser.add_argument("--publish-name", default=None, help="the marker name in that file (default: the out dir's)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plots from the runs")
    parser.add_argument("extra", nargs="*", help="more CLI overrides for every run, after --")
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "benchmarks" / "out" / f"paper-{args.protocol}"
    if args.dry_run:
        sweep(args)  # prints the commands, writes nothing
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if args.protocol == "cpu" and "cifar10" in args.datasets:
            ensure_jpeg_copy(Path(args.root) if args.root else REPO / DATASETS["cifar10"].cpu_root)
        sweep(args)
    markdown, images = report(args.out, args.studies)
    if args.publish and markdown:
        publish(markdown, images, args.publish, args.publish_name or args.out.name)


if __name__ == "__main__":
    main()
