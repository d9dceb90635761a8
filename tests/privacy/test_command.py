"""``lightning-dsl attack`` end to end: a tiny quickstart fit through the CLI, then the attack on its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_dsl.cli import main as cli_main
from lightning_dsl.privacy.command import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
FAST = ["--epochs", "2", "--width", "16", "--private-samples", "64"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart run of 1 epoch of 6 batches, fitted through the CLI (no logger: the checkpoint in root)."""
    root = tmp_path_factory.mktemp("fit")
    threads, argv = torch.get_num_threads(), sys.argv
    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # the CLI reads `args` only (it warns when both are given)
    try:
        cli_main(
            args=[
                "fit",
                f"--config={QUICKSTART}",
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=6",
                "--trainer.limit_val_batches=2",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={root}",
                "--summary.print_summary=false",
            ]
        )
    finally:
        torch.set_num_threads(threads)
        sys.argv = argv
    (path,) = (root / "checkpoints").glob("*.ckpt")
    summary = json.loads((root / "summary.json").read_text())
    assert 0.0 < summary["privacy/dcor"] <= 1.0  # the leakage monitor is on in the CLI
    return path


def test_json_figures_and_the_grid(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread: None
) -> None:
    out = tmp_path / "attack"
    assert main(["--config", QUICKSTART, "--ckpt_path", str(checkpoint), "--json", "--out", str(out), *FAST]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in (
        "mse",
        "psnr",
        "ssim",
        "dcor",
        "dcor_corrected",
        "baseline_mse",
        "baseline_psnr",
        "baseline_ssim",
        "time_s",
    ):
        assert isinstance(figures[key], float), key
    assert figures["private_samples"] == 64 and figures["auxiliary_samples"] == 135  # half the 270 test images
    assert figures["psnr"] > figures["baseline_psnr"]  # a shallow cut of a barely trained CNN: visibly inverted
    assert (figures["network"], figures["split_index"], figures["mode"]) == ("small_cnn", 2, "dsl")
    assert "test split" in figures["auxiliary"] and "training split" in figures["private"]
    image = Image.open(out / "reconstructions.png")
    assert image.size == (8 * 34 + 2, 2 * 34 + 2)  # 8 originals above 8 reconstructions, 8x8 enlarged 4x


def test_table_and_the_validation_split(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread: None
) -> None:
    args = ["--config", QUICKSTART, "--ckpt_path", str(checkpoint), "--out", str(tmp_path), *FAST]
    assert main([*args, "--aux-split", "val", "--aux-fraction", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| PSNR (dB) |" in printed and "baseline (decoder on zeros)" in printed
    assert "270 of the 270 samples of the val split (100 %" in printed


def test_the_attack_sees_what_the_defended_client_sends(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread: None
) -> None:
    from lightning_dsl.cli import build
    from lightning_dsl.privacy.command import _received

    privacy = ["--model.init_args.privacy.clip_norm=2.0", "--model.init_args.privacy.noise_multiplier=0.5"]
    model = build(["--config", QUICKSTART, *privacy]).model
    z = 3.0 * torch.randn(256, 8, 4, 4)
    received = _received(model, seed=0)
    assert received is not None
    clipped = model.cut.client_transform.bound(z)
    assert float(clipped.flatten(1).norm(dim=1).max()) <= 2.0 + 1e-5
    noise = received(z) - clipped
    assert float(noise.std()) == pytest.approx(0.5 * 2.0, rel=0.02)  # σC per value
    assert not torch.equal(noise, received(z) - clipped)  # fresh draws, from the attacker's own generator
    assert _received(build(["--config", QUICKSTART]).model, seed=0) is None
    args = ["--config", QUICKSTART, *privacy, "--ckpt_path", str(checkpoint), "--json", "--out", str(tmp_path)]
    assert main([*args, *FAST]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert "clipped to L2 norm <= 2 per sample, plus N(0, (0.5 x 2)^2) per value" in figures["received"]


def test_bad_input(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", QUICKSTART, "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(base)
    assert exit_info.value.code == 2 and "pass --ckpt_path CKPT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--ckpt_path", str(tmp_path / "nothing.ckpt")])
    assert "no checkpoint file at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--ckpt_path", str(checkpoint), "--aux-split", "train"])
    assert "disjoint from the clients' training data" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs token sequences, but this run's inputs are images"):
        main([*base, "--ckpt_path", str(checkpoint), "--metrics", "tokens", *FAST])
    other = [*base, "--ckpt_path", str(checkpoint), "--model.init_args.split_index=3"]
    with pytest.raises(SystemExit, match="split_index=2, the config builds network='small_cnn' cut at split_index=3"):
        main(other)
    with pytest.raises(SystemExit, match="the config builds network='resnet20'"):
        main([*base, "--ckpt_path", str(checkpoint), "--model.init_args.network=resnet20"])


def test_entrypoint_dispatches_attack(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dsl.commands import entrypoint

    argv = ["lightning-dsl", "attack", "--config", QUICKSTART, "--ckpt_path", str(checkpoint), "--json"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path), *FAST])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 0
    assert {"mse", "psnr", "ssim", "dcor"} <= json.loads(capsys.readouterr().out).keys()


@pytest.mark.slow
def test_the_console_script_dispatches_attack(checkpoint: Path, tmp_path: Path) -> None:
    environ = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "lightning_dsl", "attack", "--config", QUICKSTART, "--ckpt_path", str(checkpoint)]
    result = subprocess.run(
        [*command, "--json", "--out", str(tmp_path), *FAST], env=environ, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"mse", "psnr", "ssim", "dcor"} <= json.loads(result.stdout).keys()
    assert (tmp_path / "reconstructions.png").is_file()


def tiny_sst2(root: Path, copied_test: bool = False) -> Path:
    """SST-2's layout with a few made-up rows (as tests/test_configs.py writes them).

    The test sentences are the training ones backwards (none is a training sentence), or, with ``copied_test``,
    the training sentences themselves.
    """
    words = ["good", "bad", "film", "plot", "a", "the", "boring", "great", "acting", "slow"]
    root.mkdir()
    for split, rows in (("train", 24), ("dev", 8), ("test", 16)):
        lines = ["sentence\tlabel"]
        for i in range(rows):
            sentence = [words[(i + j) % len(words)] for j in range(3 + i % 7)]
            if split == "test" and not copied_test:
                sentence.reverse()
            lines.append(" ".join(sentence) + f"\t{i % 2}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_text_run_gets_the_token_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread: None) -> None:
    config = str(REPO / "configs" / "sst2_transformer.yaml")
    overrides = [
        f"--data.init_args.root={tiny_sst2(tmp_path / 'sst2')}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.batch_size=8",
        "--model.init_args.network.init_args.dim=16",
        "--model.init_args.network.init_args.heads=2",
        "--model.init_args.split_index=shallow",
    ]
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli_main(
            args=[
                "fit",
                f"--config={config}",
                *overrides,
                "--trainer.limit_train_batches=2",
                "--trainer.limit_val_batches=1",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={tmp_path / 'fit'}",
                "--summary.print_summary=false",
            ]
        )
    finally:
        sys.argv = argv
    (ckpt,) = (tmp_path / "fit" / "checkpoints").glob("*.ckpt")
    args = ["--config", config, *overrides, "--ckpt_path", str(ckpt), "--out", str(tmp_path / "attack")]
    assert main([*args, "--json", "--epochs", "200"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert 0.0 <= figures["baseline_token_accuracy"] < figures["token_accuracy"] <= 1.0
    assert figures["private_tokens"] > 0 and 0.0 < figures["dcor"] <= 1.0
    with pytest.raises(SystemExit, match=r"--metrics image \(mse, psnr, ssim\) needs image inputs.*token_accuracy"):
        main([*args, "--metrics", "image"])
    # A test split that copies the training sentences: no auxiliary sample is disjoint from the training data.
    copied_root = str(tiny_sst2(tmp_path / "copied", copied_test=True))
    copied = [a.replace(str(tmp_path / "sst2"), copied_root) for a in args]
    with pytest.raises(SystemExit, match="every auxiliary sample .* is also in the training split"):
        main(copied)
