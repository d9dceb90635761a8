"""Start a world of worker processes on 127.0.0.1 (gloo), wait for them with a cap, leave none behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    command: list[str], world_size: int, out_dir: Path, cap: float = 40.0, env: dict[str, str] | None = None
) -> tuple[list[int | None], dict[int, str]]:
    """Start ``command`` once per rank, as torchrun would (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...).

    Returns the exit codes (``None`` for a process killed at the cap) and each rank's output. Every
    process still running after ``cap`` seconds is killed: none is left behind.
    """
    base = dict(
        os.environ,
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
        TORCHELASTIC_RUN_ID=f"test-{os.getpid()}-{time.monotonic_ns()}",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        GLOO_SOCKET_IFNAME="lo",  # loopback only
        PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        **(env or {}),
    )
    procs, logs = [], []
    codes: list[int | None] = []
    try:
        for rank in range(world_size):
            log = open(out_dir / f"rank{rank}.log", "w+")  # noqa: SIM115 - closed in finally
            logs.append(log)
            rank_env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
            procs.append(subprocess.Popen(command, env=rank_env, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir))
        deadline = time.monotonic() + cap
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    output = {rank: (out_dir / f"rank{rank}.log").read_text() for rank in range(world_size)}
    return codes, output


def run_world(scenario: str, world_size: int, out_dir: Path, cap: float = 40.0) -> dict[str, Any]:
    """Run ``scenario`` on ``world_size`` processes; return their exit codes, results and stderr tails.

    Every process is killed if the world is not done within ``cap`` seconds.
    """
    codes, output = launch([sys.executable, str(WORKER), scenario, str(out_dir)], world_size, out_dir, cap)
    results = {}
    for rank in range(world_size):
        path = out_dir / f"rank{rank}.json"
        results[rank] = json.loads(path.read_text()) if path.exists() else None
    return {"codes": codes, "results": results, "output": {r: text[-3000:] for r, text in output.items()}}
