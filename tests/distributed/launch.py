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


def run_world(scenario: str, world_size: int, out_dir: Path, cap: float = 40.0) -> dict[str, Any]:
    """Run ``scenario`` on ``world_size`` processes; return their exit codes, results and stderr tails.

    Every process is killed if the world is not done within ``cap`` seconds.
    """
    env = dict(
        os.environ,
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        GLOO_SOCKET_IFNAME="lo",  # loopback only
        PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
    )
    procs = []
    logs = []
    try:
        for rank in range(world_size):
            log = open(out_dir / f"rank{rank}.log", "w+")  # noqa: SIM115 - closed in finally
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), scenario, str(out_dir)],
                    env=dict(env, RANK=str(rank)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + cap
        codes = [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    results = {}
    for rank in range(world_size):
        path = out_dir / f"rank{rank}.json"
        results[rank] = json.loads(path.read_text()) if path.exists() else None
    output = {rank: (out_dir / f"rank{rank}.log").read_text()[-3000:] for rank in range(world_size)}
    return {"codes": codes, "results": results, "output": output}
