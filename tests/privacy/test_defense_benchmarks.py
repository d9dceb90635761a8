"""The defenses' benchmark and study: the overhead script at toy size, the study's arms, the C helper."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import clip_norm, defense_overhead, paper  # noqa: E402
from benchmarks.studies import DEFENSE_CLIP_NORM, STUDIES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")


def test_defense_overhead_at_toy_size(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "overhead.json"
    argv = ["--batch", "4", "--steps", "1", "--repeats", "2", "--dcor-batches", "4", "8", "--json", str(out)]
    results = defense_overhead.main(argv, report=lines.append)
    assert set(results["arms"]) == {"undefended", "noise", "labels", "nopeek", "all"}
    assert results["arms"]["undefended"]["ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert results["z_shape"] == [16, 32, 32]  # ResNet-20's shallow cut
    assert set(results["dcor"]) == {"4", "8"} and all(e["seconds"]["median"] > 0 for e in results["dcor"].values())
    assert json.loads(out.read_text())["batch"] == 4
    assert "| nopeek |" in lines[0] and "| batch 8 |" in lines[0]


def test_the_defenses_study_runs_each_defense_in_both_modes_paired_with_sl(tmp_path: Path) -> None:
    cuts, variants = STUDIES["defenses"]
    assert cuts == ("shallow",)
    names = [v.name for v in variants]
    assert len(names) == len(set(names)) == 2 * (1 + 4 + 3 + 3)
    for v in variants:
        if v.mode == "dsl":
            assert v.pair in names and next(p for p in variants if p.name == v.pair).mode == "sl"
    noise = next(v for v in variants if v.name == "dsl_noise0p5")
    assert f"--model.init_args.privacy.clip_norm={DEFENSE_CLIP_NORM}" in noise.overrides
    assert "--model.init_args.privacy.noise_multiplier=0.5" in noise.overrides
    args = argparse.Namespace(
        studies=["defenses"], datasets=["cifar10"], seeds=[0, 1], cuts=None, modes=list(paper.MODES), arms=None,
        protocol="cpu", root="data/x", extra=[], dry_run=True,
    )  # fmt: skip
    assert len(paper.planned(args)) == 44
    labels = next(p for p in paper.planned(args) if p[2].name == "sl_labels4p0")
    cmd = paper.command(args, *labels, tmp_path / "run")
    assert "--model.init_args.privacy.label_epsilon=4.0" in cmd and "--model.init_args.mode=sl" in cmd


def test_clip_norm_measures_the_quickstart_cut(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    figures = clip_norm.measure(["--config", str(config)], batches=2)
    assert figures["samples"] == 2 * 64 and figures["split_index"] == 2
    assert figures["q10"] <= figures["q50"] == figures["clip_norm"] <= figures["q90"]


def test_the_defenses_report_reads_the_attacks_and_draws_the_frontier(tmp_path: Path) -> None:
    from PIL import Image

    from benchmarks import defenses_report, report
    from benchmarks.privacy import GRID

    arms = {  # arm: (val/acc, attack PSNR, attack dCor)
        "sl": (0.80, 20.0, 0.90),
        "dsl": (0.75, 22.0, 0.92),
        "sl_noise1p0": (0.40, 12.5, 0.60),
        "dsl_noise1p0": (0.60, 12.4, 0.61),
        "sl_nopeek1p0": (0.70, 15.0, 0.50),
        "dsl_labels2p0": (0.30, 22.0, 0.92),
    }
    for name, (acc, psnr, dcor) in arms.items():
        for seed in (0, 1):
            run = tmp_path / f"cifar10-shallow-{name}-s{seed}"
            run.mkdir()
            summary = {"epochs": 8, "val/acc": acc, "val/aux_acc": 0.5, "privacy/dcor": 0.95}
            summary |= {"privacy/epsilon": 3.0} if "noise" in name else {}
            summary |= {"privacy/label_epsilon": 16.0} if "labels" in name else {}
            (run / "summary.json").write_text(json.dumps(summary))
            attack = {"psnr": psnr + seed, "ssim": 0.5, "dcor": dcor, "baseline_psnr": 12.0, "mse": 0.01}
            (run / "attack.json").write_text(json.dumps(attack))
            Image.new("RGB", (8 * 34 + 2, 2 * 34 + 2), (seed * 50, 0, 0)).save(run / GRID)
    markdown, images = report.report(tmp_path, ["defenses"])
    assert (
        "| cifar10 | shallow | sl, noise σ=1.0, C=205 | 2 | 40.00 ± 0.00 | = | 50.00 ± 0.00 | 0.950 ± 0.000 |"
        in markdown
    )
    assert "| 0.600 ± 0.000 | – | 13.00 ± 0.71 | 0.500 ± 0.000 | 3.0 ± 0.0 | ∞ |" in markdown  # σ: ε; no label ε
    # The label arm's split network is scored on randomized labels; on true labels: (m - q) / (p - q).
    p, q = defenses_report.label_keep(2.0)
    assert p == pytest.approx(math.exp(2) / (math.exp(2) + 9)) and q == pytest.approx((1 - p) / 9)
    assert f"| dsl, labels ε=2.0 | 2 | 30.00 ± 0.00 | {100 * (0.3 - q) / (p - q):.2f} ± 0.00 |" in markdown
    assert [i.name for i in images] == [
        "defenses_frontier_cifar10.png", "defenses_grids_nopeek_cifar10.png", "defenses_grids_noise_cifar10.png"
    ]  # fmt: skip
    assert all(i.stat().st_size > 5_000 for i in images)
    assert defenses_report.family(STUDIES["defenses"][1][-1]) == ("labels", 4.0)


def test_the_defenses_grids_take_the_lowest_seed_that_has_reconstructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import matplotlib
    from PIL import Image

    import benchmarks.privacy as privacy
    from benchmarks import defenses_report, report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in ("sl", "sl_noise1p0", "dsl", "dsl_noise1p0"):
        for seed in (1, 2):
            run = tmp_path / f"cifar10-shallow-{name}-s{seed}"
            run.mkdir()
            (run / "summary.json").write_text(json.dumps({"epochs": 8, "val/acc": 0.5}))
            Image.new("RGB", (8 * 34 + 2, 2 * 34 + 2), (seed * 50, 0, 0)).save(run / privacy.GRID)
    drawn: list[tuple[str, list[str]]] = []
    montage = privacy.montage

    def recording(rows: list[tuple[str, Path]], title: str, path: Path, plt: object) -> Path | None:
        drawn.append((title, [grid.parent.name for _, grid in rows]))
        return montage(rows, title, path, plt)

    monkeypatch.setattr(privacy, "montage", recording)
    found = defenses_report.arms(report.collect(tmp_path))
    paths = defenses_report.grid_plots(found, tmp_path, plt)
    assert [p.name for p in paths] == ["defenses_grids_nopeek_cifar10.png", "defenses_grids_noise_cifar10.png"]
    assert all("seed 1)" in title and all(n.endswith("-s1") for n in names) for title, names in drawn)
    assert drawn[1][1] == [f"cifar10-shallow-{n}-s1" for n in ("sl", "sl_noise1p0", "dsl", "dsl_noise1p0")]
    assert defenses_report.grid_plots(found, tmp_path / "elsewhere", plt) == []  # no grid anywhere: none drawn
