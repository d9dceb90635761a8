"""strategy="split" without processes: its arguments, the registry, the run configuration, the roles."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import StrategyRegistry

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.strategies import SplitStrategy
from lightning_dsl.strategies.split import _check_clients, process_name, run_config


def test_registered_by_name_in_lightnings_registry() -> None:
    assert "split" in StrategyRegistry
    trainer = Trainer(strategy="split", accelerator="cpu", devices=2, logger=False)
    assert isinstance(trainer.strategy, SplitStrategy)
    assert trainer.strategy.num_clients == 1 and trainer.strategy.role == "server"
    assert trainer.strategy.global_rank == 0 and trainer.strategy.world_size == 1  # its own run for Lightning


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_in_flight": 0}, "`max_in_flight` to be an int >= 1, but got 0"),
        ({"timeout": 0}, "`timeout` to be a number of seconds > 0, but got 0"),
        ({"server_order": "random"}, "`server_order` to be one of ['client', 'arrival'], but got 'random'"),
        ({"process_group_backend": "mpi"}, "'gloo', 'nccl' or None, but got 'mpi'"),
        ({"uplink_mbps": -5.0}, "emulated uplink (arguments `uplink_mbps`, `uplink_latency_ms`)"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        SplitStrategy(**kwargs)
    assert message in str(error.value)


def test_num_clients_must_be_one_or_the_processes_count() -> None:
    model = DecoupledSplitModule("small_cnn", split_index=2, num_clients=3, input_shape=(1, 8, 8))
    trainer = Trainer(logger=False)
    _check_clients(model, trainer, 3)  # as many as processes: fine
    with pytest.raises(ValueError, match=r"`num_clients`=3 of the model does not match the processes: .* 2 clients"):
        _check_clients(model, trainer, 2)
    with pytest.raises(ValueError, match=r"`max_steps`=10 is not supported with strategy='split' and 3 clients"):
        _check_clients(model, Trainer(logger=False, max_steps=10), 3)
    with pytest.raises(ValueError, match=r"`val_check_interval`=0.5 is not supported with strategy='split' and 3"):
        _check_clients(model, Trainer(logger=False, val_check_interval=0.5), 3)
    one = DecoupledSplitModule("small_cnn", split_index=2, input_shape=(1, 8, 8))
    _check_clients(one, Trainer(logger=False, max_steps=10, val_check_interval=0.5), 1)  # one client: both fine
    sequential = DecoupledSplitModule("small_cnn", split_index=2, client_schedule="sequential", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="`client_schedule`='sequential' is not supported with strategy='split'"):
        _check_clients(sequential, trainer, 1)


def test_the_run_configuration_names_what_both_sides_must_share() -> None:
    model = DecoupledSplitModule("small_cnn", split_index=2, mode="sl", codec="fp16", input_shape=(1, 8, 8))
    trainer = Trainer(strategy="split", accelerator="cpu", devices=3, logger=False, max_epochs=4)
    config = run_config(model, trainer, trainer.strategy)
    assert config["mode"] == "sl" and config["codec"] == "fp16" and config["split_index"] == 2
    assert config["num_clients"] == 2 and config["max_epochs"] == 4 and config["network"] == "small_cnn"
    assert config["server_parameters"] == sum(p.numel() for p in model.server.parameters())


@pytest.mark.parametrize(
    ("env", "devices", "name"),
    [
        ({"RANK": "0"}, None, "server"),
        ({"RANK": "2"}, None, "client1"),
        ({"LOCAL_RANK": "1"}, 3, "client0"),
        ({"LOCAL_RANK": "1", "NODE_RANK": "1"}, 2, "client2"),
        ({}, 3, "server"),
    ],
)
def test_each_process_knows_its_role_from_the_launch_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict, devices: int | None, name: str
) -> None:
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert process_name(devices) == name


def test_from_the_cli_each_process_logs_its_own_run_named_by_its_role(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wandb_offline: None
) -> None:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from lightning_dsl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LIGHTNING_DSL_RUN_GROUP", "run-42")  # what the first process hands to those it starts
    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    cli = main(args=[f"--config={config}", "--trainer.strategy=split"], run=False)
    csv = next(logger for logger in cli.trainer.loggers if isinstance(logger, CSVLogger))
    wandb = next(logger for logger in cli.trainer.loggers if isinstance(logger, WandbLogger))
    assert csv.name == "csv/client1"
    assert wandb._wandb_init["name"] == "client1" and wandb._wandb_init["group"] == "run-42"


def test_a_bad_strategy_argument_from_the_cli_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wandb_offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dsl.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    args = [
        f"--config={config}",
        "--trainer.strategy=lightning_dsl.strategies.SplitStrategy",
        "--trainer.strategy.init_args.max_in_flight=0",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args=args, run=False)
    assert exit_info.value.code == 2
    assert "error: Expected argument `max_in_flight` to be an int >= 1, but got 0." in capsys.readouterr().err
