"""``lightning-dsl cuts``: the configured network's table, its formats, its recommendations, bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch import LightningDataModule

from lightning_dsl.cuts.command import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wandb_offline: None) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-dsl", "cuts"])
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["--config", QUICKSTART, *args]) == 0
    return capsys.readouterr().out


def test_markdown_marks_the_configured_cut_and_recommends(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--bandwidth-mbps", "100", "--latency-ms", "20", "--client-memory-mib", "1000")
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3  # small_cnn: 4 units, cuts 1..3
    assert "◀ config" in rows[1]  # the quickstart cuts after unit 2
    assert "sl s/batch" in out and "dsl/sl time" in out
    assert "- Lowest dsl peak memory: cut" in out
    assert "- Deepest cut whose client fits 1000 MiB: cut 3" in out
    assert "- Best dsl/sl time over the link: cut" in out


def test_json_csv_and_plot(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    data = json.loads(run(capsys, "--json", "--model.init_args.codec=fp16"))
    assert data["codec"] == "fp16" and data["batch_size"] == 64 and data["input_shape"] == [1, 8, 8]
    assert [c["index"] for c in data["cuts"]] == [1, 2, 3]
    low = min(data["cuts"], key=lambda c: c["saved_step_dsl"])
    assert data["recommended"]["lowest_dsl_memory"] == low["index"]
    table = list(csv.DictReader(io.StringIO(run(capsys, "--csv", "--batch-size", "16", "--plot", "cuts.png"))))
    assert [int(r["cut"]) for r in table] == [1, 2, 3] and "saved_step_mib_dsl" in table[0]
    assert (in_tmp / "cuts.png").stat().st_size > 10_000


def test_a_network_nobody_here_wrote(capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(
        run(
            capsys,
            "--json",
            "--model.init_args.network=tests.cuts.toy.TinyMLP",
            "--model.init_args.network.init_args.depth=4",
            "--model.init_args.split_index=2",
        )
    )
    assert data["units"] == 6 and [c["index"] for c in data["cuts"]] == [1, 2, 3, 4, 5]
    assert all(c["client_flops"] + c["server_flops"] > 0 for c in data["cuts"])


def test_a_network_cut_by_name_lists_its_points(capsys: pytest.CaptureFixture[str]) -> None:
    """One row per point of the traced graph where only tensors cross; the skip is counted where it crosses."""
    args = ["--json", "--model.init_args.network=tests.cuts.toy.TinyUNet", "--model.init_args.split_index=down2"]
    data = json.loads(run(capsys, *args))
    names = [c["name"] for c in data["cuts"]]
    assert names == ["down1.0", "down1", "pool", "down2.0", "down2", "up", "cat", "dec", "relu", "head.0", "head.1"]
    assert [c["index"] for c in data["cuts"]] == list(range(1, 12)) and data["units"] == 12
    assert data["network"].startswith("TinyUNet")
    at = {c["name"]: c for c in data["cuts"]}
    # After down2 the encoder's first output crosses too: (8 x 4 x 4 + 4 x 8 x 8) float32 values, then the label.
    assert at["down2"]["bytes_up"] == (8 * 4 * 4 + 4 * 8 * 8) * 4 + 8
    assert at["down2"]["bytes_down"] == (8 * 4 * 4 + 4 * 8 * 8) * 4
    assert at["head.1"]["bytes_up"] == 4 * 4 + 8
    rows = [
        line
        for line in run(
            capsys, "--model.init_args.network=tests.cuts.toy.TinyUNet", "--model.init_args.split_index=down2"
        ).splitlines()
        if "◀ config" in line
    ]
    assert len(rows) == 1 and "| 5 down2 ◀ config |" in rows[0]


def test_bad_input_is_refused_with_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="smaller than the smallest client: cut 1"):
        main(["--config", QUICKSTART, "--client-memory-mib", "0.0001"])
    with pytest.raises(SystemExit, match="--bandwidth-mbps must be > 0"):
        main(["--config", QUICKSTART, "--bandwidth-mbps", "0"])
    with pytest.raises(SystemExit, match=r"cannot tell the input shape: pass --input-shape"):
        main(["--config", QUICKSTART, "--data=tests.cuts.test_command.NoShapeData"])
    with pytest.raises(SystemExit):  # a network with no cut units: the module's own error, before any measuring
        main(["--config", QUICKSTART, "--model.init_args.network=torch.nn.Identity"])
    assert "`cut_units()`" in capsys.readouterr().err


def test_the_console_script_runs_resnet110_at_batch_128_in_under_a_minute(in_tmp: Path) -> None:
    """The issue's check: 55 rows, the named cuts, under a minute on 2 CPU cores (a generous cap here)."""
    command = [
        sys.executable,
        "-m",
        "lightning_dsl",
        "cuts",
        "--config",
        str(REPO / "configs" / "cifar10_resnet110.yaml"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=in_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 55
    assert any("| 19 shallow ◀ config |" in row and "| 0.579 |" in row for row in rows)


class NoShapeData(LightningDataModule):
    """A data module that does not say its input shape."""

    num_classes = 10
    batch_size = 8
