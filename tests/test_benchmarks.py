"""The benchmark scripts compute what they claim: the runner's tables from summaries, cut costs at toy size."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import cut_costs, paper, report  # noqa: E402


def write_summary(out: Path, name: str, **figures: Any) -> None:
    run = out / name
    run.mkdir(parents=True)
    history = [{"epoch": 0.0, "val/acc": figures["val/acc"] / 2}, {"epoch": 1.0, "val/acc": figures["val/acc"]}]
    (run / "summary.json").write_text(json.dumps({"epochs": 2, "history": history, **figures}))


def test_runner_report_from_summaries(tmp_path: Path) -> None:
    common = {"seconds_per_epoch": 10.0, "params/aux_head": 170}
    write_summary(
        tmp_path,
        "cifar10-shallow-sl-s0",
        **{"val/acc": 0.60, "val/aux_acc": 0.20, "comm/total_bytes_up": 2000, "comm/total_bytes_down": 2000},
        **{"memory/saved_peak_bytes": 1000},
        **common,
    )
    for seed, acc in ((0, 0.50), (1, 0.54)):
        write_summary(
            tmp_path,
            f"cifar10-shallow-dsl-s{seed}",
            **{"val/acc": acc, "val/aux_acc": 0.3, "comm/total_bytes_up": 2000, "comm/total_bytes_down": 0},
            **{"memory/saved_peak_bytes": 600},
            **common,
        )
    write_summary(
        tmp_path,
        "cifar10-shallow-hybrid_k4_w0p5-s0",
        **{"val/acc": 0.58, "val/aux_acc": 0.3, "comm/total_bytes_up": 2000, "comm/total_bytes_down": 500},
        **common,
    )
    paper.report(tmp_path, ["paper", "hybrid"])
    text = (tmp_path / "results.md").read_text()
    # dsl: mean of two seeds with their spread; per epoch = total / 2 epochs
    assert "| cifar10 | shallow | dsl | 2 | 52.00 ± 2.83 | 30.00 ± 0.00 | 0.0 MiB ± 0.0 |" in text
    # the gap, bytes (up + down) ratio 2000/4000, memory ratio 600/1000, time ratio
    assert "| cifar10 | shallow | -8.00 | 0.500 | 0.600 | 1.000 |" in text
    assert "| hybrid k=4 λ=0.5 | 1 | 58.00 |" in text and "| 0.625 |" in text  # 2500 / 4000 of sl's bytes
    for png in ("cifar10_bars.png", "cifar10_curves.png", "hybrid_cifar10_shallow.png"):
        assert (tmp_path / png).stat().st_size > 10_000

    document = tmp_path / "doc" / "results.md"
    document.parent.mkdir()
    document.write_text("# Results\nprose\n<!-- generated:cpu -->\nold\n<!-- /generated:cpu -->\nmore prose\n")
    paper.main(
        [
            "--out",
            str(tmp_path),
            "--report-only",
            "--studies",
            "paper",
            "--publish",
            str(document),
            "--publish-name",
            "cpu",
        ]
    )
    published = document.read_text()
    assert published.startswith("# Results\nprose\n") and published.endswith("more prose\n") and "old" not in published
    assert "| cifar10 | shallow | -8.00 | 0.500 | 0.600 | 1.000 |" in published
    assert "](results/" in published and (document.parent / "results" / "cpu" / "cifar10_bars.png").exists()


def test_runner_plans_each_run_once_and_builds_commands(tmp_path: Path) -> None:
    args = paper.main.__globals__["argparse"].Namespace(
        studies=["paper", "heads", "codecs"],
        datasets=["cifar10"],
        seeds=[0],
        cuts=list(paper.CUTS),
        modes=list(paper.MODES),
        arms=None,
        protocol="cpu",
        root="data/x",
        extra=["--trainer.max_epochs=1"],
        dry_run=False,
    )
    names = [paper.run_name(d, c, v.name, s) for d, c, v, s in paper.planned(args)]
    assert len(names) == len(set(names)) == 6 + 5 + 3  # sl/dsl at 3 cuts, 5 more heads, 3 more codec arms
    dataset, cut, variant, seed = next(p for p in paper.planned(args) if p[2].name == "dsl_int8")
    cmd = paper.command(args, dataset, cut, variant, seed, tmp_path / "run")
    assert "--model.init_args.codec=int8" in cmd and "--model.init_args.mode=dsl" in cmd
    assert cmd[-1] == "--trainer.max_epochs=1" and "--data.init_args.root=data/x" in cmd
    assert (tmp_path / "run" / "runner.yaml").exists()


def test_runner_dry_run_prints_the_commands_and_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    out, root = tmp_path / "out", tmp_path / "data"
    paper.main(["--protocol", "cpu", "--studies", "paper", "--out", str(out), "--root", str(root), "--dry-run"])
    printed = capsys.readouterr().out
    assert printed.count("[run ] cifar10-") == 6 and "--model.init_args.split_index=deep" in printed
    assert not out.exists() and not root.exists()


def test_cut_costs_at_toy_size(tmp_path: Path) -> None:
    results = cut_costs.main(
        ["--depth", "8", "--batch-size", "4", "--repeats", "1", "--head-iters", "1", "--warmup", "0"]
        + ["--cuts", "shallow", "deep", "--out", str(tmp_path)]
    )
    for cut in ("shallow", "deep"):
        c = results["cuts"][cut]
        a, n = c["activation_bytes"], 4 * 8  # float32 z, int64 labels of a batch of 4
        assert c["label_bytes"] == n and c["sl"]["bytes_up"] == c["dsl"]["bytes_up"] == a + n
        assert c["sl"]["bytes_down"] == a and c["dsl"]["bytes_down"] == 0
        assert Fraction(c["bytes_ratio"]) == Fraction(a + n, 2 * a + n) and c["bytes_ratio_exact"]
        assert c["dsl"]["saved_peak_bytes"] < c["sl"]["saved_peak_bytes"]
        assert c["codecs"]["int8"]["bytes"] == a // 4 + 8  # one byte per element + float32 scale and offset
    assert (tmp_path / "cut_costs.png").stat().st_size > 10_000


def test_clients_study_table_has_the_gap_and_the_model_transfers(tmp_path: Path) -> None:
    common = {"seconds_per_epoch": 10.0, "params/aux_head": 170, "memory/saved_peak_bytes": 1000}
    arms = {
        "sl": (0.60, 0, 0),
        "dsl": (0.58, 0, 0),
        "sl_n10_dir0p1": (0.50, 2**20, 2**20),
        "dsl_n10_dir0p1": (0.44, 2**20, 2**20),
    }
    for arm, (acc, sync_up, sync_down) in arms.items():
        write_summary(
            tmp_path,
            f"cifar10-shallow-{arm}-s0",
            **{"val/acc": acc, "val/aux_acc": 0.3, "comm/total_bytes_up": 2000, "comm/total_bytes_down": 0},
            **{"comm/sync_bytes_up": sync_up, "comm/sync_bytes_down": sync_down},
            **common,
        )
    paper.report(tmp_path, ["clients"])
    text = (tmp_path / "results.md").read_text()
    # 2 MiB of model transfers over 2 epochs: 1 MiB per epoch; dsl - sl in points, per setting
    assert "| dsl, 10 clients parallel, Dir(0.1) | 1 | 44.00 |" in text and "| 1.0 MiB | " in text
    assert text.count("| -6.00 |") == 1 and text.count("| -2.00 |") == 1
    assert (tmp_path / "clients_cifar10_shallow_pairs.png").stat().st_size > 10_000


def test_text_study_table_has_dev_and_test_accuracy_costs_over_sl_and_the_baseline(tmp_path: Path) -> None:
    mib = 2**20
    arms = {  # seed -> (val/acc, test/acc, bytes down, peak saved activations in MiB)
        "sl": {0: (0.80, 0.79, 4 * mib, 100)},
        "dsl": {0: (0.81, 0.76, 0, 40), 1: (0.81, 0.78, 0, 40)},
        "dsl_mlp": {0: (0.75, 0.80, 0, 50)},
    }
    for arm, seeds in arms.items():
        for seed, (dev, test, down, saved) in seeds.items():
            write_summary(
                tmp_path,
                f"sst2-shallow-{arm}-s{seed}",
                **{"val/acc": dev, "val/aux_acc": 0.6, "test/acc": test, "test/aux_acc": 0.70},
                **{"comm/total_bytes_up": 4 * mib, "comm/total_bytes_down": down, "comm/bytes_per_token_up": 1027.3},
                **{"memory/saved_peak_bytes": saved * mib, "seconds_per_epoch": 10.0, "params/aux_head": 514},
                **{"epochs": 1, "history": [{"epoch": 0.0, "val/acc": dev, "val/aux_acc": 0.6}]},
            )
    paper.report(tmp_path, ["text"])
    text = (tmp_path / "results.md").read_text()
    header = (
        "| dataset | cut | arm | seeds | dev acc (split network) | test acc (split network) |"
        " test acc (client + aux head) | bytes up+down / epoch | peak saved activations | bytes up per token |"
        " s / epoch | bytes / sl's | memory / sl's | dsl − sl test acc (points) |\n|" + "---|" * 14 + "\n"
    )
    assert header in text
    # per token in plain bytes; bytes (4 + 4 MiB against 4 MiB) and memory (100 MiB against 40) over sl's
    assert (
        "| sst2 | shallow | sl | 1 | 80.00 | 79.00 | 70.00 | 8.0 MiB | 100.0 MiB | 1027.3 B | 10.0 | 1.000 | 1.000 |  |"
        in text
    )
    # the gap compares test accuracies: (76 + 78) / 2 - 79 and 80 - 79 (the dev accuracies would give +1 and -5)
    assert (
        "| sst2 | shallow | dsl, linear head (masked mean) | 2 | 81.00 ± 0.00 | 77.00 ± 1.41 | 70.00 ± 0.00 |"
        " 4.0 MiB ± 0.0 | 40.0 MiB ± 0.0 | 1027.3 B ± 0.0 | 10.0 ± 0.0 | 0.500 | 0.400 | -2.00 |"
    ) in text
    assert "| dsl, mlp head | 1 | 75.00 | 80.00 |" in text and "| 0.500 | 0.500 | +1.00 |" in text
    baseline = (
        "Kim (2014), CNN with random embeddings (CNN-rand), trained from scratch: 82.7 % on this SST-2 test split."
    )
    assert f"|\n\nBaseline: {baseline}\n" in text
    # one epoch per run: one figure of the accuracies and the costs over sl's instead of per-epoch curves per cut
    assert (tmp_path / "text_sst2.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["text_sst2.png"]


@pytest.mark.parametrize(
    ("key", "figures", "expected"),
    [
        ("comm/bytes_per_token_up", [1027.3], "1027.3 B"),
        ("memory/saved_peak_bytes_per_position", [10.0, 12.0], "11.0 B ± 1.4"),
        ("comm/bytes_per_epoch", [3 * 2**20], "3.0 MiB"),
        ("comm/sync_bytes_per_epoch", [2**19, 3 * 2**19], "1.0 MiB ± 0.7"),
        ("test/aux_acc", [0.5, 0.6], "55.00 ± 7.07"),
    ],
)
def test_report_formats_bytes_per_epoch_in_mib_and_per_token_in_bytes(
    key: str, figures: list[float], expected: str
) -> None:
    assert report.fmt(key, figures) == expected


def test_split_wall_time_at_toy_size(tmp_path: Path) -> None:
    """Both modes as real processes (torchrun) on ResNet-20: wall times, the floor, wire = simulated bytes."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "split_wall_time.py"
    command = [sys.executable, str(script), "--depth", "20", "--batch-size", "16", "--batches", "4", "--warmup", "1",
               "--arms", "plain", "--cuts", "shallow", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["arm"], r["cut"], r["mode"]) for r in results] == [
        ("plain", "shallow", "dsl"),
        ("plain", "shallow", "sl"),
    ]
    for row in results:
        assert row["wire_payload_bytes"] == row["simulated_bytes"] > 0  # the wire carries what the Cut counts
        assert row["wall_per_batch"] > 0 and row["client_compute"] > 0 and row["server_compute"] > 0
    dsl, sl = results
    assert sl["simulated_bytes"] > 1.9 * dsl["simulated_bytes"]  # sl's gradients come down too
    assert "| plain | shallow |" in done.stdout


def test_fsha_digits_at_toy_size(
    tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs of 3 batches in each mode: a history per run, what went down per mode, the table with the baseline."""
    from benchmarks import fsha_digits

    monkeypatch.chdir(tmp_path)  # the Trainer's root without a logger: nothing may land in the working directory
    out = tmp_path / "fsha.json"
    result = fsha_digits.main(
        ["--epochs", "2", "--batches", "3", "--modes", "sl", "dsl", "--seeds", "0", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    sl, dsl = result["histories"]["sl-s0"], result["histories"]["dsl-s0"]
    assert [row["privacy/fsha_sent_down"] for row in sl + dsl] == [3, 3, 0, 0]
    assert sl[0]["privacy/fsha_baseline_mse"] == dsl[0]["privacy/fsha_baseline_mse"] > 0  # the same private images
    printed = capsys.readouterr().out
    assert "| epoch | sl-s0 | dsl-s0 | baseline |" in printed and "\n| 1 | " in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsha.json"]  # no grid, no checkpoint, no log


# ------------------------------------------------------------------------------------------------ privacy


def test_privacy_studies_dry_run_lists_the_fits_and_the_attacks(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    argv = ["--studies", "privacy", "privacy_fsha", "--seeds", "0", "1", "--out", str(out), "--root", "data/x"]
    paper.main([*argv, "--dry-run"])
    printed = capsys.readouterr().out.splitlines()
    runs = [line for line in printed if line.startswith("[run ] ")]
    attacks = [line for line in printed if line.startswith("[attack] ")]
    # 3 cuts x sl, dsl x 2 seeds, each with its attack; 3 FSHA arms x 2 seeds at the shallow cut, without
    assert len(runs) == 12 + 6 and len(attacks) == 12 and not out.exists()
    assert not any("fsha" in line for line in attacks)
    attack = next(line for line in attacks if "cifar10-deep-dsl-s1" in line)
    run = out / "cifar10-deep-dsl-s1"
    fit_args = (
        f"--config {paper.REPO}/configs/cifar10_resnet110.yaml --config {paper.REPO}/configs/paper/cpu.yaml"
        f" --config {run}/runner.yaml --model.init_args.mode=dsl --model.init_args.split_index=deep"
        " --seed_everything=1 --model.init_args.aux_head=linear --data.init_args.seed=1 --data.init_args.root=data/x"
    )
    assert attack == (
        f"[attack] cifar10-deep-dsl-s1: {sys.executable} -m lightning_dsl attack {fit_args}"
        f" --ckpt_path {run}/csv/version_0/checkpoints/<the fit's last .ckpt> --json --out {run}"
    )
    hybrid = next(line for line in runs if "cifar10-shallow-fsha_hybrid_k4-s0" in line)
    assert hybrid.endswith(
        "--model.init_args.mode=hybrid --model.init_args.split_index=shallow --seed_everything=0"
        " --config=configs/privacy/fsha.yaml --model.init_args.client_optimizer=torch.optim.Adam"
        " --model.init_args.client_optimizer.lr=1e-4 --model.init_args.client_optimizer.weight_decay=0"
        " --model.init_args.client_lr_scheduler=null"
        " --model.init_args.feedback_every=4 --data.init_args.seed=0 --data.init_args.root=data/x"
    )


def test_privacy_runs_have_a_step_after_the_fit_and_every_fit_checkpoints(tmp_path: Path) -> None:
    args = paper.main.__globals__["argparse"].Namespace(
        studies=["paper", "privacy_text"],
        datasets=["sst2"],
        seeds=[0],
        protocol="cpu",
        root=None,
        extra=[],
        dry_run=False,
    )
    after = paper.steps(args)
    assert sorted(after) == [f"sst2-{c}-{a}-s0" for c in ("1", "deep", "middle", "shallow") for a in ("dsl", "sl")]
    assert after["sst2-1-sl-s0"].options == ("--metrics", "tokens")
    paper.command(args, "sst2", "1", paper.STUDIES["text"][1][0], 0, tmp_path / "run")
    overlay = paper.yaml.safe_load((tmp_path / "run" / "runner.yaml").read_text())
    assert overlay["trainer"]["enable_checkpointing"] is True  # to resume; sweep removes what is not kept


def test_privacy_step_after_a_toy_fit_attacks_its_checkpoint_and_the_report_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import privacy, studies

    # The digits quickstart as a data set of the runner, at its cut after 2 units: fit 2 batches, then attack.
    monkeypatch.setitem(paper.DATASETS, "digits", studies.Dataset("configs/quickstart.yaml"))
    monkeypatch.setitem(studies.STUDIES, "privacy", (("2",), (studies.SL, studies.DSL)))
    monkeypatch.setitem(studies.PRIVACY_STUDIES, "privacy", "digits")
    args = paper.main.__globals__["argparse"].Namespace(protocol="cpu", root=None, dry_run=False)
    args.extra = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    run = tmp_path / "digits-2-dsl-s0"
    cmd = paper.command(args, "digits", "2", studies.DSL, 0, run)
    assert subprocess.run(cmd, cwd=paper.REPO, capture_output=True).returncode == 0
    step = studies.After(options=("--epochs", "1", "--private-samples", "16", "--width", "8"))
    assert privacy.after_fit(step, cmd, run)
    figures = json.loads((run / "attack.json").read_text())
    assert figures["private_samples"] == 16 and figures["mode"] == "dsl" and figures["split_index"] == 2
    assert figures["checkpoint"] == str(privacy.last_checkpoint(run)) and (run / "reconstructions.png").exists()
    # resumable: the output exists, so the attack is not run again (a bad command would fail)
    assert privacy.after_fit(step, ["--config", "nothing.yaml"], run)

    paper.report(tmp_path, ["privacy"])
    text = (tmp_path / "results.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    row = (
        f"| digits | 2 | dsl, linear head (pool 1) | 1 | {100 * summary['val/acc']:.2f} |"
        f" {100 * summary['val/aux_acc']:.2f} | {summary['privacy/dcor']:.3f} | {figures['mse']:.4f} |"
        f" {figures['baseline_mse']:.4f} | {figures['psnr']:.2f} | {figures['baseline_psnr']:.2f} |"
        f" {figures['ssim']:.3f} | {figures['baseline_ssim']:.3f} |"
    )
    assert row in text and "curious server" in text
    assert not (tmp_path / "privacy_grids_digits.png").exists()  # one grid: nothing to compare it with


def test_fsha_table_reads_the_history_per_epoch(tmp_path: Path) -> None:
    for seed, mses in ((0, (0.05, 0.02)), (1, (0.07, 0.04))):
        history = [
            {"epoch": float(e), "privacy/fsha_mse": m, "privacy/fsha_baseline_mse": 0.06} for e, m in enumerate(mses)
        ]
        write_summary(tmp_path, f"cifar10-shallow-fsha_sl-s{seed}", **{"val/acc": 0.4, "privacy/fsha_history": history})
    paper.report(tmp_path, ["privacy_fsha"])
    text = (tmp_path / "results.md").read_text()
    assert "| fsha_mse epoch 1 | fsha_mse epoch 2 | min fsha_mse | baseline | test acc (split network) |" in text
    row = "| cifar10 | shallow | sl under FSHA | 2 | 0.0600 ± 0.0141 | 0.0300 ± 0.0141 | 0.0300 ± 0.0141 |"
    assert f"{row} 0.0600 ± 0.0000 | 40.00 ± 0.00 |" in text
    assert (tmp_path / "privacy_fsha_cifar10.png").stat().st_size > 10_000
    assert not (tmp_path / "privacy_fsha_grids_cifar10.png").exists()  # no run wrote a grid


def test_fsha_table_of_a_long_run_shows_epochs_at_powers_of_two_and_the_last(tmp_path: Path) -> None:
    from benchmarks import privacy

    assert privacy.shown_epochs(list(range(1, 9))) == list(range(1, 9))
    assert privacy.shown_epochs(list(range(1, 129))) == [1, 2, 4, 8, 16, 32, 64, 128]
    history = [
        {"epoch": float(e), "privacy/fsha_mse": 0.1 - e / 1000, "privacy/fsha_baseline_mse": 0.085} for e in range(20)
    ]
    write_summary(tmp_path, "cifar10-shallow-fsha_sl-s0", **{"val/acc": 0.4, "privacy/fsha_history": history})
    paper.report(tmp_path, ["privacy_fsha"])
    text = (tmp_path / "results.md").read_text()
    columns = " | ".join(f"fsha_mse epoch {e}" for e in (1, 2, 4, 8, 16, 20))
    assert f"| seeds | {columns} | min fsha_mse | baseline |" in text
    # epochs 1, 2, 4, 8, 16 and 20, the min, the baseline, the accuracy
    row = "| sl under FSHA | 1 | 0.1000 | 0.0990 | 0.0970 | 0.0930 | 0.0850 | 0.0810 | 0.0810 | 0.0850 | 40.00 |"
    assert row in text


def test_fsha_grids_show_each_runs_own_private_images(tmp_path: Path) -> None:
    from PIL import Image

    history = [{"epoch": 0.0, "privacy/fsha_mse": 0.05, "privacy/fsha_baseline_mse": 0.06}]
    for arm, seed in (("fsha_sl", 1), ("fsha_dsl", 1), ("fsha_dsl", 2)):
        name = f"cifar10-shallow-{arm}-s{seed}"
        write_summary(tmp_path, name, **{"val/acc": 0.4, "privacy/fsha_history": history})
        logs = tmp_path / name / "csv" / "version_0"
        logs.mkdir(parents=True)
        Image.new("RGB", (8 * 34 + 2, 2 * 34 + 2), (100 * seed, 0, 0)).save(logs / "fsha_reconstructions.png")
    paper.report(tmp_path, ["privacy_fsha"])
    text = (tmp_path / "results.md").read_text()
    assert "privacy_fsha_grids_cifar10.png" in text and "above what the attacker's decoder made" in text
    figure = Image.open(tmp_path / "privacy_fsha_grids_cifar10.png")
    assert figure.size == (880, 3 * 220)  # every run, a panel of 2 inches each: its own originals above its own
    red = [figure.convert("RGB").getpixel((500, 110 + 220 * row))[0] for row in range(3)]
    assert red[0] == red[1] < red[2]  # by seed, then arm: seed 1's sl and dsl, then seed 2's dsl


def test_sweep_resumes_the_attack_of_a_finished_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], bool]] = []
    monkeypatch.setattr(
        paper, "after_fit", lambda step, cmd, run, dry_run=False: calls.append((run.name, cmd, dry_run))
    )
    for name in ("cifar10-shallow-sl-s0", "cifar10-shallow-dsl_pool2-s0"):
        write_summary(tmp_path, name, **{"val/acc": 0.5})
    parsed = paper.main.__globals__["argparse"].Namespace(
        studies=["privacy", "grid"], datasets=["cifar10"], seeds=[0], cuts=["shallow"], modes=list(paper.MODES),
        arms=["sl", "dsl_pool2"], protocol="cpu", root="data/x", extra=[], dry_run=False, out=tmp_path,
    )  # fmt: skip
    paper.sweep(parsed)
    # both fits are done: only the privacy run's attack runs, on the fit's own command with checkpointing on
    assert [(name, dry) for name, _, dry in calls] == [("cifar10-shallow-sl-s0", False)]
    overlay = paper.yaml.safe_load((tmp_path / "cifar10-shallow-sl-s0" / "runner.yaml").read_text())
    assert overlay["trainer"]["enable_checkpointing"] is True and "--model.init_args.mode=sl" in calls[0][1]
    assert not (tmp_path / "cifar10-shallow-dsl_pool2-s0" / "runner.yaml").exists()  # a finished run is left alone


def test_fit_then_test_takes_the_checkpoint_to_resume_from() -> None:
    from benchmarks import fit_then_test

    argv = ["--config", "a.yaml", "--ckpt_path=x/last.ckpt", "--trainer.max_epochs=2"]
    assert fit_then_test.split_ckpt_path(argv) == (["--config", "a.yaml", "--trainer.max_epochs=2"], "x/last.ckpt")
    assert fit_then_test.split_ckpt_path(["--ckpt_path", "y.ckpt", "--seed_everything=1"]) == (
        ["--seed_everything=1"],
        "y.ckpt",
    )
    assert fit_then_test.split_ckpt_path(["--config", "a.yaml"]) == (["--config", "a.yaml"], None)
    with pytest.raises(SystemExit, match="--ckpt_path needs a checkpoint"):
        fit_then_test.split_ckpt_path(["--ckpt_path"])


def test_sweep_resumes_a_stopped_fit_from_its_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import studies

    # The digits quickstart as the runner's data set: a 3-epoch fit stopped after its first epoch (a 1-epoch fit
    # whose summary is gone), then the sweep again: it continues from the checkpoint and the run ends with all 3.
    monkeypatch.setitem(paper.DATASETS, "digits", studies.Dataset("configs/quickstart.yaml"))
    monkeypatch.setitem(studies.STUDIES, "paper", (("2",), (studies.DSL,)))
    limits = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    parsed = paper.main.__globals__["argparse"].Namespace(
        studies=["paper"], datasets=["digits"], seeds=[0], cuts=None, modes=list(paper.MODES), arms=None,
        protocol="cpu", root=None, extra=["--trainer.max_epochs=1", *limits], dry_run=False, out=tmp_path,
    )  # fmt: skip
    run = tmp_path / "digits-2-dsl-s0"
    paper.sweep(parsed)
    assert not list(run.rglob("*.ckpt"))  # finished, no step after it: its checkpoint is gone
    first = json.loads((run / "summary.json").read_text())
    assert first["epochs"] == 1
    # stopped after epoch 1 of 3: its checkpoint is there, its summary is not
    cmd = paper.command(parsed, "digits", "2", studies.DSL, 0, run)
    stopped = [*cmd[: -len(parsed.extra)], *limits, "--trainer.max_epochs=1"]
    assert subprocess.run(stopped, cwd=paper.REPO, capture_output=True).returncode == 0
    (run / "summary.json").unlink()
    parsed.extra = ["--trainer.max_epochs=3", *limits]
    paper.sweep(parsed)
    log = (run / "stdout.log").read_text()
    assert "[resume] from " in log and log.index("[resume] from ") > 0  # appended to the stopped fit's log
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["epochs"] == 3 and [row["epoch"] for row in resumed["history"]] == [0.0, 1.0, 2.0]
    assert "Restoring states from the checkpoint path" in log[log.index("[resume] from ") :]
    # the first epoch is the stopped fit's (from the checkpoint), not trained again: the resumed fit logs epochs 1, 2
    with open(run / "csv" / "version_2" / "metrics.csv") as rows:  # 0: the first sweep, 1: the stopped fit
        resumed_epochs = {row["epoch"] for row in csv.DictReader(rows)}
    assert resumed["history"][0] == first["history"][0] and resumed_epochs == {"1", "2"}
    assert not list(run.rglob("*.ckpt"))


def test_a_resumed_fit_keeps_only_its_last_checkpoint_for_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    run = tmp_path / "cifar10-shallow-sl-s0"
    stopped = run / "csv" / "version_0" / "checkpoints" / "epoch=2-step=237.ckpt"
    stopped.parent.mkdir(parents=True)
    stopped.write_bytes(b"stopped")
    os.utime(stopped, (1, 1))
    finished = run / "csv" / "version_1" / "checkpoints" / "epoch=7-step=632.ckpt"
    commands: list[list[str]] = []

    def fit(cmd: list[str], **kwargs: Any) -> int:  # the resumed fit: it writes its own last checkpoint
        commands.append(cmd)
        finished.parent.mkdir(parents=True)
        finished.write_bytes(b"finished")
        return 0

    steps: list[Path | None] = []
    monkeypatch.setattr(paper.subprocess, "call", fit)
    monkeypatch.setattr(paper, "after_fit", lambda step, cmd, run_dir: steps.append(paper.last_checkpoint(run_dir)))
    parsed = paper.main.__globals__["argparse"].Namespace(
        studies=["privacy"], datasets=["cifar10"], seeds=[0], cuts=["shallow"], modes=list(paper.MODES),
        arms=["sl"], protocol="cpu", root="data/x", extra=[], dry_run=False, out=tmp_path,
    )  # fmt: skip
    paper.sweep(parsed)
    assert commands[0][-1] == f"--ckpt_path={stopped}"
    assert sorted(run.rglob("*.ckpt")) == [finished] and steps == [finished]  # the attack gets the finished fit's
