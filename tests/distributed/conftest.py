"""The world of three processes that several transport and hand-shake tests read (started once)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.distributed.launch import run_world


@pytest.fixture(scope="session")
def basic_world(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    """Results of the ``basic`` scenario: a server and two clients (see ``worker.basic``)."""
    run = run_world("basic", 3, tmp_path_factory.mktemp("basic"))
    assert run["codes"] == [0, 0, 0], run["output"]
    return run["results"]
