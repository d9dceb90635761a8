"""``lightning-dsl <command>``: the table of commands, each imported only when it runs."""

from __future__ import annotations

import sys

import pytest

from lightning_dsl import commands

SEEN: list[list[str]] = []


def record(argv: list[str]) -> int:
    """A command for the tests: remembers its arguments, exits with status 3."""
    SEEN.append(argv)
    return 3


def test_a_command_gets_the_arguments_after_its_name_and_its_status_is_the_exit_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(commands.COMMANDS, "record", f"{__name__}:record")
    monkeypatch.setattr(sys, "argv", ["lightning-dsl", "record", "--config", "x.yaml"])
    SEEN.clear()
    with pytest.raises(SystemExit) as exit_info:
        commands.entrypoint()
    assert exit_info.value.code == 3 and SEEN == [["--config", "x.yaml"]]


def test_anything_else_is_the_training_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "TRAINING", f"{__name__}:training")
    monkeypatch.setattr(sys, "argv", ["lightning-dsl", "fit", "--config", "x.yaml"])
    SEEN.clear()
    assert commands.entrypoint() is None  # the console script's exit status 0
    assert SEEN == [["fit", "--config", "x.yaml"]]


def training() -> object:
    """Stands in for the training CLI: it reads ``sys.argv`` and returns a CLI object."""
    SEEN.append(sys.argv[1:])
    return object()


def test_the_cut_planner_is_a_command_and_an_unknown_name_is_refused() -> None:
    assert commands.COMMANDS["cuts"] == "lightning_dsl.cuts.command:main"
    from lightning_dsl.cuts.command import main

    assert commands.command("cuts") is main
    with pytest.raises(ValueError) as error:
        commands.command("fit")
    assert str(error.value) == f"Expected argument `name` to be one of {sorted(commands.COMMANDS)}, but got 'fit'."
