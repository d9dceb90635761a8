"""The command line as users run it: ``python -m lightning_dsl`` in a child process, on a few quickstart batches.

Each child process costs the imports of torch, Lightning and W&B (several seconds): the first ``fit`` runs
once per module and the tests share it.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
FEW_BATCHES = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
]
BATCH_SIZE = 64  # the quickstart's
SUMMARY_KEYS = {
    "mode",
    "split_index",
    "num_units",
    "epochs",
    "batches",
    "optimizer_steps",
    "history",
    "params/client",
    "params/server",
    "params/aux_head",
    "val/acc",
    "val/aux_acc",
    "val/loss",
    "train/loss",
    "train/aux_loss",
    "comm/total_bytes_up",
    "comm/total_bytes_down",
    "comm/bytes_per_sample_up",
    "comm/client_parameter_bytes",
    "memory/saved_peak_bytes",
    "memory/saved_client_peak_bytes",
    "memory/saved_server_peak_bytes",
    "throughput/samples_per_sec",
    "throughput/client_samples_per_sec",
    "throughput/server_samples_per_sec",
    "privacy/dcor",
}


def env() -> dict[str, str]:
    """This checkout importable (installed or not), W&B offline and quiet, torch on one thread."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [environ.get("PYTHONPATH")])])
    environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_CODE="true", OMP_NUM_THREADS="1")
    return environ


def run_cli(workdir: Path, *args: str, entry: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lightning_dsl <args>`` (or ``entry``) in ``workdir``: its ``runs/`` lands there."""
    command = (entry or [sys.executable, "-m", "lightning_dsl"]) + list(args)
    return subprocess.run(command, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


@dataclass
class Run:
    workdir: Path
    result: subprocess.CompletedProcess[str]

    @property
    def run_dir(self) -> Path:
        return self.workdir / "runs" / "csv" / "version_0"

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    @property
    def checkpoint(self) -> Path:
        (path,) = (self.run_dir / "checkpoints").glob("*.ckpt")
        return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("cli")
    result = run_cli(workdir, "fit", "--config", str(QUICKSTART), *FEW_BATCHES)
    assert result.returncode == 0, explain(result)
    return Run(workdir, result)


def test_fit_writes_the_summary(first_run: Run) -> None:
    summary = first_run.summary
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["mode"], summary["split_index"], summary["num_units"]) == ("dsl", 2, 4)
    assert (summary["epochs"], summary["batches"], summary["optimizer_steps"]) == (1, 3, 6)
    # dsl: activations and labels go up, nothing comes down; the same bytes for every sample.
    assert summary["comm/total_bytes_up"] == 3 * BATCH_SIZE * summary["comm/bytes_per_sample_up"] > 0
    assert summary["comm/total_bytes_down"] == 0
    assert summary["memory/saved_peak_bytes"] >= summary["memory/saved_client_peak_bytes"] > 0
    assert summary["throughput/samples_per_sec"] > 0
    assert [row["epoch"] for row in summary["history"]] == [0.0]
    assert summary["history"][-1]["val/acc"] == summary["val/acc"]
    # The table is printed at the end of fit.
    printed = first_run.result.stdout + first_run.result.stderr
    assert "Run summary" in printed and re.search(r"comm/total_bytes_up\s+\S+", printed)


def test_fit_writes_the_run_folder(first_run: Run) -> None:
    assert {"metrics.csv", "config.yaml", "hparams.yaml", "summary.json", "checkpoints"} <= {
        p.name for p in first_run.run_dir.iterdir()
    }
    # The saved config reproduces the run: the quickstart plus the overrides.
    config = yaml.safe_load((first_run.run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["mode"] == "dsl"
    assert config["trainer"]["limit_train_batches"] == 3
    with open(first_run.run_dir / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"val/acc", "val/aux_acc", "comm/bytes_up_epoch", "comm/val_bytes_up", "memory/saved_peak_bytes"} <= columns
    assert any(c.startswith("throughput/") for c in columns)


def test_fit_writes_an_offline_wandb_run(first_run: Run) -> None:
    (run,) = (first_run.workdir / "runs" / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")
    content = records.read_bytes()
    # The metrics the callbacks log, and the end-of-run summary, are in the W&B run's records.
    for key in ("val/acc", "comm/bytes_up", "memory/saved_peak_bytes", "summary/comm/total_bytes_up"):
        assert key.encode() in content, key


def test_second_run_into_the_same_folder_by_the_console_script(first_run: Run) -> None:
    """Two bugs meet here. SaveConfigCallback refused to overwrite the config of the first run (with the W&B
    logger), and the console script exited 1 after a good run: pip's script runs ``sys.exit(<target>())``,
    and a target that returns the CLI object turns into exit status 1."""
    script = console_script_command()
    result = run_cli(first_run.workdir, "fit", "--config", str(QUICKSTART), *FEW_BATCHES, entry=script)
    assert result.returncode == 0, explain(result)
    second = first_run.workdir / "runs" / "csv" / "version_1"
    assert (second / "config.yaml").is_file() and (second / "summary.json").is_file()
    assert len(list((first_run.workdir / "runs" / "wandb").glob("offline-run-*"))) == 2
    # Seeded: the second run repeats the first exactly.
    assert json.loads((second / "summary.json").read_text())["val/acc"] == first_run.summary["val/acc"]


def test_validate_from_the_checkpoint(first_run: Run, tmp_path: Path) -> None:
    checkpoint = f"--ckpt_path={first_run.checkpoint}"
    result = run_cli(tmp_path, "validate", "--config", str(QUICKSTART), checkpoint, *FEW_BATCHES)
    assert result.returncode == 0, explain(result)
    # The same weights on the same validation batches: the same accuracy as at the end of fit.
    match = re.search(r"val/acc\s+([0-9.]+)", result.stdout)
    assert match, explain(result)
    assert float(match.group(1)) == pytest.approx(first_run.summary["val/acc"], abs=1e-6)


def test_test_from_the_checkpoint(first_run: Run, tmp_path: Path) -> None:
    checkpoint = f"--ckpt_path={first_run.checkpoint}"
    result = run_cli(tmp_path, "test", "--config", str(QUICKSTART), checkpoint, *FEW_BATCHES)
    assert result.returncode == 0, explain(result)
    summary = json.loads((tmp_path / "runs" / "csv" / "version_0" / "summary.json").read_text())
    assert {"test/acc", "test/aux_acc", "test/loss", "test/aux_loss"} <= summary.keys()
    assert 0.0 <= summary["test/acc"] <= 1.0
    assert (summary["mode"], summary["split_index"]) == ("dsl", 2)
    # Two test batches of 64 crossed the cut.
    assert summary["comm/test_bytes_up"] == 2 * BATCH_SIZE * first_run.summary["comm/bytes_per_sample_up"]


def test_print_config(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "fit", "--config", str(QUICKSTART), "--model.init_args.mode=sl", "--print_config")
    assert result.returncode == 0, explain(result)
    config = yaml.safe_load(result.stdout)
    assert config["model"]["init_args"]["mode"] == "sl"
    assert config["model"]["init_args"]["network"] == "small_cnn"
    assert config["data"]["class_path"] == "lightning_dsl.data.DigitsDataModule"
    loggers = {logger["class_path"].rsplit(".", 1)[-1]: logger["init_args"] for logger in config["trainer"]["logger"]}
    assert loggers["WandbLogger"]["offline"] is True and loggers["CSVLogger"]["save_dir"] == "runs"
    assert not (tmp_path / "runs").exists()


def test_bad_mode_stops_before_training(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "fit", "--config", str(QUICKSTART), "--model.init_args.mode=bogus", *FEW_BATCHES)
    assert result.returncode == 2, explain(result)
    # One line that names the argument, the value and what is allowed; not a traceback.
    assert "error: Expected argument `mode` to be one of ['dsl', 'sl', 'hybrid'], but got 'bogus'." in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("summary.json"))
    assert not list(tmp_path.rglob("metrics.csv"))


# ---------------------------------------------------------------------------------------- the console script
def console_script() -> str:
    """The target of the ``lightning-dsl`` script that ``pyproject.toml`` declares (``module:function``)."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["lightning-dsl"]


def console_script_command() -> list[str]:
    """What the installed ``lightning-dsl`` script runs (pip writes this wrapper), without installing it."""
    module, function = console_script().split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def test_console_script_is_installed() -> None:
    try:
        distribution = importlib.metadata.distribution("lightning-dsl")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("lightning-dsl is not installed in this environment (make install does `pip install -e .`)")
    (entry,) = [e for e in distribution.entry_points if e.group == "console_scripts" and e.name == "lightning-dsl"]
    assert entry.value == console_script()
    scripts = Path(sys.executable).parent
    assert shutil.which("lightning-dsl", path=str(scripts)), f"no lightning-dsl script in {scripts}"


# ---------------------------------------------------------------------------------------- bad arguments, in process
@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run ``main(args=...)`` in this process from ``tmp_path``, W&B offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-dsl"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--model.init_args.mode=sideways", "Expected argument `mode` to be one of ['dsl', 'sl', 'hybrid']"),
        ("--model.init_args.split_index=4", "Expected argument `split_index` to be in [1, 3]"),
        ("--model.init_args.split_index=0", "Expected argument `split_index` to be in [1, 3]"),
        ("--data.init_args.batch_size=0", "Expected argument `batch_size` to be a positive integer, but got 0."),
        ("--summary.filename=summary.txt", "Expected argument `filename` to end with '.json', got 'summary.txt'."),
    ],
)
def test_bad_argument_is_a_usage_error(
    argument: str, message: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dsl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args=["fit", "--config", str(QUICKSTART), argument, *FEW_BATCHES])
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not list(in_tmp.iterdir()), "nothing is written before the arguments are checked"


def test_unknown_aux_head_is_a_usage_error(in_tmp: Path) -> None:
    from lightning_dsl.cli import main

    try:
        main(args=["--config", str(QUICKSTART), "--model.init_args.aux_head=bogus"], run=False)
    except SystemExit as exit_info:
        assert exit_info.code == 2
    else:
        raise AssertionError("DecoupledSplitModule(aux_head='bogus') was built without an error")


# ---------------------------------------------------------------------------------------- misspelled keys
@pytest.mark.parametrize(
    ("argument", "error"),
    [
        (
            "--model.init_args.split_idx=3",
            "error: `model.init_args.split_idx` is not a valid key (lightning_dsl.DecoupledSplitModule has no"
            " argument `split_idx`): did you mean `model.init_args.split_index`?",
        ),
        (
            "--data.init_args.batchsize=32",
            "error: `data.init_args.batchsize` is not a valid key (lightning_dsl.data.DigitsDataModule has no"
            " argument `batchsize`): did you mean `data.init_args.batch_size`?",
        ),
        (
            "--model.init_args.client_optimizer.init_args.lrr=0.1",
            "error: `model.init_args.client_optimizer.init_args.lrr` is not a valid key (torch.optim.SGD has no"
            " argument `lrr`): did you mean `model.init_args.client_optimizer.init_args.lr`?",
        ),
        ("--summry.filename=s.json", "error: `summry.filename` is not a valid key: did you mean `summary.filename`?"),
        (
            "--trainer.max_epochz=3",
            "error: `trainer.max_epochz` is not a valid key: did you mean `trainer.max_epochs`?",
        ),
    ],
)
def test_misspelled_key_is_the_last_line_with_the_closest_key(
    argument: str, error: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dsl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args=["fit", "--config", str(QUICKSTART), argument])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == error
    # A one-line usage and the tip before it, not the ~70 lines of the full usage.
    assert len(lines) == 3 and lines[0].startswith("usage: ") and lines[1].startswith("tip: ")


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"model": {"init_args": {"split_idx": 2}}},
            "error: `model.init_args.split_idx` is not a valid key (lightning_dsl.DecoupledSplitModule has no"
            " argument `split_idx`): did you mean `model.init_args.split_index`?",
        ),
        (
            {"trainer": {"max_epoch": 2}},
            "error: `trainer.max_epoch` is not a valid key: did you mean `trainer.max_epochs`?",
        ),
    ],
)
def test_misspelled_key_in_a_config_file(
    config: dict, error: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dsl.cli import main

    (in_tmp / "typo.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(args=["fit", "--config", str(QUICKSTART), "--config", str(in_tmp / "typo.yaml")])
    assert capsys.readouterr().err.strip().splitlines()[-1] == error


def test_unknown_key_without_a_close_match_lists_the_arguments(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dsl.cli import main

    with pytest.raises(SystemExit):
        main(args=["fit", "--config", str(QUICKSTART), "--data.init_args.qqqq=1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: `data.init_args.qqqq` is not a valid key (lightning_dsl.data.DigitsDataModule")
    assert "; its arguments: batch_size, val_fraction, test_fraction, seed, num_workers, num_clients," in last


# ---------------------------------------------------------------------------------------- data errors found in setup
def test_data_error_found_in_setup_is_a_usage_error(tmp_path: Path) -> None:
    # The digits have 1,257 training images: only setup knows, so jsonargparse cannot check it while parsing.
    result = run_cli(tmp_path, "fit", "--config", str(QUICKSTART), "--data.init_args.num_clients=1258", *FEW_BATCHES)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data (DigitsDataModule): Expected argument `num_clients` to be at most the number of samples, 1257,"
        " so that every client has one, but got 1258."
    )
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("summary.json"))


def test_only_errors_raised_in_the_data_modules_setup_are_shortened() -> None:
    from lightning.pytorch import LightningDataModule

    from lightning_dsl.cli_parser import raised_in_data_setup

    class Data(LightningDataModule):
        def setup(self, stage: str | None = None) -> None:
            raise ValueError("Expected argument `x` ...")

        def train_dataloader(self) -> None:
            raise ValueError("a bug")

    data, other = Data(), Data()
    for call, expected in ((data.setup, True), (data.train_dataloader, False)):
        with pytest.raises(ValueError) as info:
            call()
        assert raised_in_data_setup(info.value, data) is expected
        assert raised_in_data_setup(info.value, other) is False  # another data module's setup
