"""``privacy`` from the command line, as users run it: ``python -m lightning_dsl fit`` in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_dsl.privacy import activation_epsilon

REPO = Path(__file__).resolve().parents[2]
FEW_BATCHES = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
]


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [environ.get("PYTHONPATH")])])
    environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_CODE="true", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "lightning_dsl", *args]
    return subprocess.run(command, cwd=workdir, env=environ, capture_output=True, text=True, timeout=300)


def test_fit_with_privacy_overrides_logs_the_budgets_and_saves_them(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--model.init_args.privacy.noise_multiplier=1.0",
        "--model.init_args.privacy.clip_norm=23",
        "--model.init_args.privacy.label_epsilon=2",
        *FEW_BATCHES,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "csv" / "version_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy/epsilon"] == pytest.approx(activation_epsilon(1.0, 2, 1e-5), rel=1e-6)
    assert summary["privacy/label_epsilon"] == pytest.approx(4.0)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # the saved config reproduces the run
    assert config["model"]["init_args"]["privacy"]["noise_multiplier"] == 1.0
    assert config["model"]["init_args"]["privacy"]["clip_norm"] == 23.0
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())  # plain values, as in the checkpoint
    assert hparams["privacy"]["label_epsilon"] == 2.0


def test_a_bad_field_on_the_command_line_is_refused_naming_it(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path, "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--model.init_args.privacy.delta=2"
    )
    assert result.returncode != 0
    assert "Expected field `delta` to be a number in (0, 1), but got 2" in result.stderr
