"""Who is who in a split run, read from the launch environment before any strategy exists.

Rank 0 is the server, rank ``i + 1`` client ``i``. The CLI names each process's loggers and
checkpoints by its role (:func:`process_name`) and puts every process of one launch in one W&B group
(:func:`run_group`) while it parses the config, before the Trainer (and so the strategy) is built.
"""

from __future__ import annotations

import os
import time
from typing import Any

from lightning_dsl.distributed import SERVER


def process_name(devices: Any = None) -> str:
    """``server`` or ``client<i>`` for this process of a split run, from the launch environment.

    torchrun sets ``RANK``; the processes the Trainer starts itself (``devices=N + 1``) have ``LOCAL_RANK``
    and ``NODE_RANK`` (the first has neither: it is the server, or node ``NODE_RANK``'s first process).
    """
    if "RANK" in os.environ:
        rank = int(os.environ["RANK"])
    else:
        per_node = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
        rank = int(os.environ.get("NODE_RANK", 0)) * per_node + int(os.environ.get("LOCAL_RANK", 0))
    return role_name(rank)


def role_name(rank: int) -> str:
    """``server`` for rank 0, ``client<i>`` for rank ``i + 1``: the role in loggers' names and files."""
    return "server" if rank == SERVER else f"client{rank - 1}"


def run_group() -> str:
    """An id shared by every process of one split run (W&B's ``group``).

    torchrun's ``TORCHELASTIC_RUN_ID``, else one made by the first process and inherited by the
    processes it starts (``LIGHTNING_DSL_RUN_GROUP``).
    """
    group = os.environ.get("LIGHTNING_DSL_RUN_GROUP") or os.environ.get("TORCHELASTIC_RUN_ID")
    if not group or group == "none":
        group = f"split-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    os.environ["LIGHTNING_DSL_RUN_GROUP"] = group
    return group


__all__ = ["process_name", "role_name", "run_group"]
