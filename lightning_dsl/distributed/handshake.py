"""The start-up check: every client and the server agree on the run's configuration before training.

Each client sends its configuration (a JSON-able dict: model, split index, mode, codecs, number of
clients, links...) to the server in a ``HELLO`` message; the server compares each with its own and
answers every client with ``HELLO`` ``{"ok": true}`` or ``{"ok": false, "error": ...}``. On a
mismatch every process raises the same ``ValueError``, which lists each differing key with both
values, so that whichever log a user reads says what to fix.
"""

from __future__ import annotations

import json
from typing import Any

from lightning_dsl.distributed.transport import SERVER, Transport, peer_name
from lightning_dsl.distributed.wire import Kind, Message


def check_world_size(world_size: int, num_clients: int) -> None:
    """Raise a ``ValueError`` unless the process group holds one server and ``num_clients`` clients.

    Example::

        >>> check_world_size(2, num_clients=2)
        Traceback (most recent call last):
        ...
        ValueError: Expected WORLD_SIZE to be num_clients + 1 = 3 (one server, 2 clients), got 2.
    """
    if world_size != num_clients + 1:
        raise ValueError(
            f"Expected WORLD_SIZE to be num_clients + 1 = {num_clients + 1} (one server, {num_clients} clients),"
            f" got {world_size}."
        )


def config_mismatches(server: dict[str, Any], client: dict[str, Any]) -> list[str]:
    """One line per key whose values differ (or that one side lacks), naming both values.

    Example::

        >>> config_mismatches({"mode": "dsl", "split": 3}, {"mode": "sl", "split": 3})
        ["mode: server 'dsl', client 'sl'"]
    """
    missing = object()
    lines = []
    for key in sorted(set(server) | set(client)):
        ours, theirs = server.get(key, missing), client.get(key, missing)
        if ours != theirs:
            show = [("(missing)" if v is missing else repr(v)) for v in (ours, theirs)]
            lines.append(f"{key}: server {show[0]}, client {show[1]}")
    return lines


def handshake(transport: Transport, config: dict[str, Any], timeout: float | None = None) -> None:
    """Check that every client runs with the server's ``config``; raise ``ValueError`` everywhere if not.

    The role comes from the transport (rank 0 is the server). When ``config`` holds ``num_clients``,
    the process group's size is checked against it first, on every process, before anything is sent.

    Args:
        transport: this process's transport.
        config: what must be equal everywhere; JSON-able (tuples compare equal to lists).
        timeout: seconds to wait for each message (default: the transport's).
    """
    if "num_clients" in config:
        check_world_size(transport.world_size, config["num_clients"])
    try:
        mine = json.loads(json.dumps(config, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"Expected argument `config` to be JSON-able, got {config!r}: {err}") from err
    if not transport.is_server:
        transport.send(Message.from_json(Kind.HELLO, mine), SERVER, timeout)
        answer = transport.recv(SERVER, timeout, expect=Kind.HELLO).json()
        if not answer["ok"]:
            raise ValueError(answer["error"])
        return
    errors = []
    for peer in transport.peers:  # client order: the answer is the same whichever client is slow
        theirs = transport.recv(peer, timeout, expect=Kind.HELLO).json()
        lines = config_mismatches(mine, theirs)
        if lines:
            errors.append(f"{peer_name(peer)} differs from the server (rank 0): " + "; ".join(lines))
    error = "configuration mismatch: " + " | ".join(errors) if errors else ""
    for peer in transport.peers:
        transport.send(Message.from_json(Kind.HELLO, {"ok": not errors, "error": error}), peer, timeout)
    if errors:
        raise ValueError(error)
