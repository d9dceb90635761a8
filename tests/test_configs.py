"""Every YAML under ``configs/`` parses through the real CLI, resolves to what it says, and trains a few batches.

The files under ``configs/paper/`` are overlays on ``configs/cifar10_resnet110.yaml``, those under
``configs/clients/`` and ``configs/privacy/`` on ``configs/quickstart.yaml`` (their headers say so).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.cli import main
from lightning_dsl.data import CIFARDataModule, DigitsDataModule, TextDataModule
from lightning_dsl.privacy import CutPrivacy

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BASE = CONFIGS / "cifar10_resnet110.yaml"
ALL_CONFIGS = (
    sorted(CONFIGS.glob("*.yaml"))
    + sorted(CONFIGS.glob("paper/*.yaml"))
    + sorted(CONFIGS.glob("clients/*.yaml"))
    + sorted(CONFIGS.glob("privacy/*.yaml"))
)
OVERLAY_BASES = {"paper": BASE, "clients": CONFIGS / "quickstart.yaml", "privacy": CONFIGS / "quickstart.yaml"}
# What each defense overlay adds to a run's summary.json.
PRIVACY_SUMMARY = {
    "privacy/noise.yaml": "privacy/epsilon",
    "privacy/label_dp.yaml": "privacy/label_epsilon",
    "privacy/nopeek.yaml": None,
}


def name(config: Path) -> str:
    return config.relative_to(CONFIGS).as_posix()


def chain(config: Path) -> list[str]:
    """The ``--config`` arguments that run ``config``: an overlay comes after its base."""
    base = OVERLAY_BASES.get(config.parent.name)
    files = [base, config] if base else [config]
    return [arg for path in files for arg in ("--config", str(path))]


def parse(config: Path, *overrides: str) -> Any:
    """Parse and instantiate (model, data module, trainer) without running anything."""
    return main(args=[*chain(config), *overrides], run=False)


def final_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]


@pytest.fixture
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wandb_offline: None) -> Path:
    """Run from ``tmp_path``: the configs' loggers write under ``runs/`` of the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-dsl"])  # not pytest's arguments: the CLI gets `args=`
    return tmp_path


def test_every_config_is_covered() -> None:
    """Nothing nested deeper escapes the parametrization below, and the known configs are there."""
    assert sorted(CONFIGS.rglob("*.yaml")) == sorted(ALL_CONFIGS)
    assert {name(c) for c in ALL_CONFIGS} >= {
        "quickstart.yaml",
        "cifar10_resnet110.yaml",
        "cifar100_resnet110.yaml",
        "paper/cpu.yaml",
        "clients/iid.yaml",
        "clients/dirichlet.yaml",
        "clients/sequential.yaml",
        "privacy/fsha.yaml",
        "privacy/noise.yaml",
        "privacy/nopeek.yaml",
        "privacy/label_dp.yaml",
        "sst2_transformer.yaml",
    }


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=name)
def test_config_opens_with_its_command_and_an_override(config: Path) -> None:
    lines = config.read_text().splitlines()
    header = "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    assert lines[0].startswith("# "), "a config opens with a comment saying what it runs"
    command = " ".join(chain(config)).replace(f"{REPO}/", "")
    assert f"python -m lightning_dsl fit {command}" in header, "the header shows the command that runs it"
    assert re.search(r"--(model|data|trainer)\.\S+=", header), "the header shows an override example"


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=name)
def test_config_parses_and_instantiates(config: Path, in_tmp: Path) -> None:
    cli = parse(config)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, DecoupledSplitModule)
    assert model.mode in ("dsl", "sl", "hybrid")
    assert 1 <= model.split_index < model.num_units
    # num_classes reaches the model from the data module (link_arguments), never by hand.
    assert model.num_classes == data.num_classes
    assert final_linear(model.server).out_features == data.num_classes
    loggers = {type(logger) for logger in cli.trainer.loggers}
    assert loggers == {CSVLogger, WandbLogger}
    wandb_logger = next(logger for logger in cli.trainer.loggers if isinstance(logger, WandbLogger))
    assert wandb_logger._offline, "W&B is offline by default"


EXPECTED = {
    "quickstart.yaml": {
        "data": DigitsDataModule,
        "network": "small_cnn",
        "mode": "dsl",
        "split_index": 2,
        "num_units": 4,
        "num_classes": 10,
        "max_epochs": 10,
        "lr": 0.05,
    },
    "cifar10_resnet110.yaml": {
        "data": CIFARDataModule,
        "network": "resnet110",
        "mode": "dsl",
        "split_index": 19,  # "shallow": the stem and the 18 blocks of stage 1
        "num_units": 56,
        "num_classes": 10,
        "max_epochs": 164,
        "lr": 0.1,
        "milestones": [82, 123],
        "root": "data/cifar10",
    },
    "cifar100_resnet110.yaml": {
        "data": CIFARDataModule,
        "network": "resnet110",
        "mode": "dsl",
        "split_index": 19,
        "num_units": 56,
        "num_classes": 100,
        "max_epochs": 164,
        "lr": 0.1,
        "milestones": [82, 123],
        "root": "data/cifar100",
    },
    "paper/cpu.yaml": {
        "data": CIFARDataModule,
        "network": "resnet20",
        "mode": "dsl",
        "split_index": 4,  # "shallow" of ResNet-20: the stem and the 3 blocks of stage 1
        "num_units": 11,
        "num_classes": 10,
        "max_epochs": 8,
        "lr": 0.1,
        "train_subset": 10000,
        "root": "data/cifar10-jpg",
        "download": False,
        "T_max": 8,
        "nesterov": True,
    },
    "sst2_transformer.yaml": {
        "data": TextDataModule,
        "network": {"class_path": "lightning_dsl.models.TextTransformer"},
        "mode": "dsl",
        "split_index": 4,  # "middle": the embeddings and 3 of the 6 blocks
        "num_units": 8,
        "num_classes": 2,
        "max_epochs": 1,
        "lr": 1.0e-3,
        "optimizer": "torch.optim.AdamW",
        "vocab_size": 8000,
        "max_length": 64,
    },
}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=name)
def test_config_resolves_to_what_it_says(config: Path, in_tmp: Path) -> None:
    expected = EXPECTED.get(name(config))
    if expected is None:
        pytest.skip(f"no expected values written down for {name(config)} (it still parses, see above)")
    cli = parse(config)
    model, data, init = cli.model, cli.datamodule, cli.config["model"]["init_args"]
    assert type(data) is expected["data"]
    network = init["network"]
    if isinstance(expected["network"], dict):  # given by class path: its vocabulary and positions come from the data
        assert network["class_path"] == expected["network"]["class_path"]
        assert network["init_args"]["vocab_size"] == expected["vocab_size"] == data.vocab_size
        assert network["init_args"]["max_length"] == expected["max_length"] == data.max_length
        assert model.client[0].positions.num_embeddings == data.max_length
    else:
        assert network == expected["network"]
    resolved = (model.mode, model.split_index, model.num_units)
    assert resolved == (expected["mode"], expected["split_index"], expected["num_units"])
    assert model.num_classes == expected["num_classes"] == data.num_classes
    assert model.val_acc.num_classes == expected["num_classes"]
    assert cli.trainer.max_epochs == expected["max_epochs"]
    for side in ("client_optimizer", "server_optimizer"):
        assert init[side]["class_path"] == expected.get("optimizer", "torch.optim.SGD")
        assert init[side]["init_args"]["lr"] == expected["lr"]
        if init[side]["class_path"] == "torch.optim.SGD":
            assert init[side]["init_args"]["momentum"] == 0.9
    # Both sides and both schedulers follow the same recipe.
    assert init["client_optimizer"] == init["server_optimizer"]
    assert init["client_lr_scheduler"] == init["server_lr_scheduler"]
    if "milestones" in expected:
        assert init["client_lr_scheduler"]["init_args"]["milestones"] == expected["milestones"]
    if "T_max" in expected:
        assert init["client_lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
        assert init["client_lr_scheduler"]["init_args"]["T_max"] == expected["T_max"] == cli.trainer.max_epochs
        assert init["client_optimizer"]["init_args"]["nesterov"] is expected["nesterov"]
    if isinstance(data, CIFARDataModule):
        assert data.root == Path(expected["root"])
        assert data.batch_size == 128
        assert data.download is expected.get("download", True)
        assert data.train_subset == expected.get("train_subset")


def test_print_config_shows_the_merged_overlay(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args=["fit", *chain(CONFIGS / "paper" / "cpu.yaml"), "--model.init_args.mode=sl", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"]["init_args"], printed["data"]["init_args"]
    assert (model["network"], model["split_index"], model["mode"]) == ("resnet20", "shallow", "sl")
    assert (data["name"], data["train_subset"], data["root"]) == ("cifar10", 10000, "data/cifar10-jpg")
    assert printed["trainer"]["max_epochs"] == 8
    assert "num_classes" not in model, "linked from the data module, so not a setting of its own"
    assert printed["summary"]["filename"] == "summary.json"
    assert not (in_tmp / "runs").exists(), "--print_config only prints"


# ---------------------------------------------------------------------------------------- a few batches
FEW_BATCHES = [
    "--trainer.accelerator=cpu",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--summary.print_summary=false",
]
# The CIFAR configs on the 40-image copy: two batches of 4 from a class-balanced subset of 20.
TINY_CIFAR = [
    "--data.init_args.download=false",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--data.init_args.train_subset=20",
]


def tiny_sst2(root: Path) -> Path:
    """SST-2's layout with a few made-up rows (train.tsv, dev.tsv, test.tsv): the config's own files are not needed."""
    words = ["good", "bad", "film", "plot", "a", "the", "boring", "great", "acting", "slow"]
    root.mkdir()
    for split, rows in (("train", 24), ("dev", 8), ("test", 8)):
        lines = ["sentence\tlabel"]
        for i in range(rows):
            lines.append(" ".join(words[(i + j) % len(words)] for j in range(3 + i % 7)) + f"\t{i % 2}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def is_text(config: Path) -> bool:
    return name(config).startswith("sst2")


def on_digits(config: Path) -> bool:
    """The quickstart and its overlays: the digits ship with scikit-learn."""
    return name(config) == "quickstart.yaml" or name(config).startswith(("clients/", "privacy/"))


def train_params() -> list[Any]:
    params = []
    for config in ALL_CONFIGS:
        marks: list[Any] = []
        if "cifar100" in name(config):
            marks = [pytest.mark.skip(reason="CIFAR-100 is not available offline: this config is only parsed")]
        elif not on_digits(config) and not is_text(config):
            marks = [pytest.mark.shared_data]
        params.append(pytest.param(config, marks=marks, id=name(config)))
    return params


@pytest.mark.parametrize("config", train_params())
def test_config_trains_a_few_batches(
    config: Path, in_tmp: Path, single_thread: None, request: pytest.FixtureRequest
) -> None:
    overrides = list(FEW_BATCHES) + [f"--trainer.default_root_dir={in_tmp / 'runs'}"]
    if is_text(config):
        overrides += [f"--data.init_args.root={tiny_sst2(in_tmp / 'sst2')}", "--data.init_args.batch_size=8"]
    elif not on_digits(config):
        root = request.getfixturevalue("cifar10_jpg_mini")
        overrides += [*TINY_CIFAR, f"--data.init_args.root={root}"]
    initial = parse(config, *overrides).model.state_dict()  # the same seed_everything: the same initial weights

    cli = main(args=["fit", *chain(config), *overrides])

    model = cli.model
    assert cli.trainer.state.finished
    assert model.batches_trained == 2
    # Two optimizer steps (client, server) per client batch: every client with a batch left in a parallel step
    # (a small non-IID shard can be used up after one), one client in a sequential step.
    data = cli.datamodule
    assert model.num_clients == getattr(data, "num_clients", 1)
    if model.num_clients > 1 and model.client_schedule == "parallel":
        client_batches = sum(min(2, -(-size // data.batch_size)) for size in data.partition.sizes)
    else:
        client_batches = 2
    assert cli.trainer.global_step == 2 * client_batches
    trained = model.state_dict()
    for key, value in initial.items():
        if key.startswith(("client.", "server.")) and value.is_floating_point():
            assert not torch.equal(trained[key], value), f"{key} did not change"
    assert model.aux_head is not None and final_linear(model.aux_head).out_features == model.num_classes
    # The run landed in the configs' run folder under the working directory, with its summary.
    run_dir = in_tmp / "runs" / "csv" / "version_0"
    assert {"metrics.csv", "config.yaml", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    summary = json.loads((run_dir / "summary.json").read_text())
    if name(config) == "privacy/fsha.yaml":  # the attack's figures reach the summary
        assert summary["privacy/fsha_mse"] > 0 and summary["privacy/fsha_baseline_mse"] > 0
    if PRIVACY_SUMMARY.get(name(config)):  # a defense's budget reaches the summary
        assert summary[PRIVACY_SUMMARY[name(config)]] > 0
    assert (summary["mode"], summary["split_index"], summary["batches"]) == (model.mode, model.split_index, 2)
    assert 0.0 <= summary["val/acc"] <= 1.0 and 0.0 <= summary["val/aux_acc"] <= 1.0
    assert summary["comm/total_bytes_up"] > 0
    if model.num_clients == 1 and not is_text(config):  # text batches are padded to their own length
        samples = 2 * data.batch_size
        assert summary["comm/total_bytes_up"] == samples * summary["comm/bytes_per_sample_up"]
    assert list((in_tmp / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_the_text_network_takes_its_vocabulary_and_positions_from_the_data(in_tmp: Path) -> None:
    cli = parse(CONFIGS / "sst2_transformer.yaml", "--data.init_args.vocab_size=500", "--data.init_args.max_length=32")
    embeddings = cli.model.client[0]
    assert (embeddings.tokens.num_embeddings, embeddings.positions.num_embeddings) == (500, 32)
    assert cli.config["model"]["init_args"]["network"]["init_args"]["max_length"] == 32


def test_the_fsha_overlay_adds_the_attack_and_keeps_the_monitors(in_tmp: Path) -> None:
    from lightning_dsl.callbacks import CommunicationMonitor, FeatureSpaceHijackingAttack, RunSummary

    cli = parse(CONFIGS / "privacy" / "fsha.yaml", "--model.init_args.mode=sl")
    (attack,) = [c for c in cli.trainer.callbacks if isinstance(c, FeatureSpaceHijackingAttack)]
    assert (attack.auxiliary, attack.options["gradient_penalty_weight"], attack.options["lr"]) == ("test", 100.0, 1e-4)
    assert {CommunicationMonitor, RunSummary} <= {type(c) for c in cli.trainer.callbacks}


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("noise.yaml", CutPrivacy(clip_norm=23.0, noise_multiplier=1.0, delta=1e-5)),
        ("nopeek.yaml", CutPrivacy(nopeek_weight=0.5)),
        ("label_dp.yaml", CutPrivacy(label_epsilon=2.0)),
    ],
)
def test_the_defense_overlays_set_the_privacy_argument(in_tmp: Path, overlay: str, expected: CutPrivacy) -> None:
    cli = parse(CONFIGS / "privacy" / overlay, "--model.init_args.mode=sl")
    assert cli.model.privacy == expected
    assert cli.model.mode == "sl"
