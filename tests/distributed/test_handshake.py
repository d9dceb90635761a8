from __future__ import annotations

import doctest
import importlib
from typing import Any

import pytest

from lightning_dsl.distributed import check_world_size, config_mismatches, handshake
from tests.distributed.launch import needs_gloo


def test_mismatches_name_each_key_with_both_values() -> None:
    server = {"mode": "dsl", "split": 3, "codec": "fp16", "links": [10.0, None]}
    client = {"mode": "sl", "split": 3, "links": [10.0, 5.0], "extra": True}
    assert config_mismatches(server, client) == [
        "codec: server 'fp16', client (missing)",
        "extra: server (missing), client True",
        "links: server [10.0, None], client [10.0, 5.0]",
        "mode: server 'dsl', client 'sl'",
    ]
    assert config_mismatches(server, dict(server)) == []


def test_world_size_must_be_clients_plus_one() -> None:
    check_world_size(3, num_clients=2)
    with pytest.raises(ValueError, match=r"num_clients \+ 1 = 5 \(one server, 4 clients\), got 3"):
        check_world_size(3, num_clients=4)


def test_doctests() -> None:
    module = importlib.import_module("lightning_dsl.distributed.handshake")  # the package's `handshake` is the function
    assert doctest.testmod(module).failed == 0


@needs_gloo
def test_every_process_raises_the_same_mismatch_error(basic_world: dict[int, Any]) -> None:
    expected = (
        "configuration mismatch: client 1 (rank 2) differs from the server (rank 0):"
        " codec: server 'fp16', client 'none'; mode: server 'dsl', client 'sl'"
    )
    for rank in range(3):  # the server, the client that differs and the one that does not
        assert basic_world[rank]["mismatch"]["type"] == "ValueError"
        assert basic_world[rank]["mismatch"]["text"] == expected


@needs_gloo
def test_world_size_is_checked_on_every_process(basic_world: dict[int, Any]) -> None:
    for rank in range(3):
        assert basic_world[rank]["world_size"] == {
            "type": "ValueError",
            "text": "Expected WORLD_SIZE to be num_clients + 1 = 4 (one server, 3 clients), got 3.",
            "elapsed": basic_world[rank]["world_size"]["elapsed"],
        }


def test_config_must_be_json() -> None:
    class Fake:
        world_size, is_server = 2, False

    with pytest.raises(ValueError, match="`config` to be JSON-able"):
        handshake(Fake(), {"model": object()})  # type: ignore[arg-type]
