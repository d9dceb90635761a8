"""Wall time of split training with client and server in separate processes: dsl vs sl (issue 10's benchmark).

One client process and one server process (one thread each; ``torchrun --standalone``, gloo on
127.0.0.1), the CIFAR ResNet (default ResNet-110), batch 128, random CIFAR-shaped inputs (data loading
is not what is measured), a fixed number of batches, at the named cuts. For each cut it runs dsl and
sl, and reports:

* wall time per batch: the steady pace, the slower process's interval between the ends of its
  batches after the warm-up (a dsl client ahead of the server waits on its window; with two clients
  the server's batch is a round of both clients' batches), and the ratio dsl / sl, next to its
  floor ``max(c, s) / (c + s)``, where ``c`` and ``s`` are the per-side compute times per batch
  measured in the dsl run itself (each side's phase time: a dsl client never waits for the server,
  so its phase is pure compute). Pipelining cannot beat ``max(c, s)``: the slower side sets the
  pace (the ratio can fall below the floor when sl pays more than ``c + s``: its waits and transfers);
* bytes on the wire (the server's received payload bytes, framing apart) against the simulated
  count of the one-process :class:`~lightning_dsl.core.Cut` for the same batches (equal);
* peak memory per process: the peak RSS and the peak of saved-for-backward bytes (PeakMemoryMonitor);

with an emulated link (``--link 100,20``: 100 Mbit/s, 20 ms each way, an emulation in the transport)
and with two clients (``--clients 2``). Arms are data: ``ARMS`` below.

    python benchmarks/split_wall_time.py                                  # ResNet-110: ~20 min on 2 cores
    python benchmarks/split_wall_time.py --depth 20 --batches 4 --arms plain  # a quick look

The worker (what each process runs) is this script too, under torchrun (``RANK`` set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARMS = {  # name: (clients, link "mbps,latency_ms" or None)
    "plain": (1, None),
    "link": (1, "100,20"),
    "two-clients": (2, None),
}
CUTS = ("shallow", "middle", "deep")
MODES = ("dsl", "sl")


# ---------------------------------------------------------------------------------------------- worker
def worker(options: dict[str, Any]) -> None:
    """One process of a split run: train ``batches`` batches, write this process's figures as JSON."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_dsl import DecoupledSplitModule
    from lightning_dsl.callbacks import PeakMemoryMonitor
    from lightning_dsl.strategies import SplitStrategy

    torch.set_num_threads(1)
    seed_everything(0)
    rank = int(os.environ["RANK"])
    batch, batches = options["batch_size"], options["batches"]
    generator = torch.Generator().manual_seed(rank)
    data = TensorDataset(
        torch.randn(batch * batches, 3, 32, 32, generator=generator),
        torch.randint(0, 10, (batch * batches,), generator=generator),
    )
    model = DecoupledSplitModule(
        f"resnet{options['depth']}", split_index=options["cut"], mode=options["mode"], input_shape=(3, 32, 32)
    )

    class Clock(Callback):
        """Wall-clock stamps of each training batch and the compute time of this process's side."""

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.phase_seconds: list[float] = []

        def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
            pl_module.add_phase_hook(self.phase)

        @contextlib.contextmanager
        def phase(self, side: str) -> Iterator[None]:
            start = time.perf_counter()
            yield
            self.phase_seconds.append(time.perf_counter() - start)

        def on_train_batch_start(self, *args: Any) -> None:
            self.starts.append(time.time())
            self.phase_seconds.append(-1.0)  # a batch marker

        def on_train_batch_end(self, *args: Any) -> None:
            self.ends.append(time.time())

    link = options.get("link")
    mbps, latency = (float(x) for x in link.split(",")) if link else (None, 0.0)
    strategy = SplitStrategy(
        timeout=600, uplink_mbps=mbps, uplink_latency_ms=latency, downlink_mbps=mbps, downlink_latency_ms=latency
    )
    clock, memory = Clock(), PeakMemoryMonitor()
    trainer = Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock, memory],
    )
    trainer.fit(model, DataLoader(data, batch_size=batch))
    per_batch: list[float] = []  # this side's compute per batch (phases between two batch markers)
    for value in clock.phase_seconds:
        if value < 0:
            per_batch.append(0.0)
        else:
            per_batch[-1] += value
    summary = strategy.summary()
    figures = {
        "role": strategy.run_name,
        "starts": clock.starts,
        "ends": clock.ends,
        "compute_per_batch": per_batch,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "saved_peak_bytes": memory.summary().get("memory/saved_peak_bytes"),
        "wire_payload_bytes_received": summary["split/wire_payload_bytes_received"],
        "wire_bytes_received": summary["split/wire_bytes_received"],
        "cut_bytes_up": summary["split/cut_bytes_up"],
        "cut_bytes_down": summary["split/cut_bytes_down"],
    }
    Path(options["out"], f"{strategy.run_name}.json").write_text(json.dumps(figures))


# ---------------------------------------------------------------------------------------------- driver
def simulated_bytes(depth: int, cut: str, batch: int) -> tuple[int, int, int]:
    """What the one-process Cut counts for this cut: bytes up and down per batch, and one client's state.

    sl sends the gradient down; with several clients each FedAvg round moves a client's state (half and
    head) up and down once per client.
    """
    import torch

    from lightning_dsl import DecoupledSplitModule
    from lightning_dsl.core import Cut
    from lightning_dsl.core.fedavg import client_state, state_nbytes

    model = DecoupledSplitModule(f"resnet{depth}", split_index=cut, input_shape=(3, 32, 32))
    with torch.no_grad():
        z = model.client.eval()(torch.zeros(batch, 3, 32, 32))
    cut_ = Cut()
    cut_.send_up(z, torch.zeros(batch, dtype=torch.long))
    cut_.send_down(z)
    return cut_.traffic.bytes_up, cut_.traffic.bytes_down, state_nbytes(client_state(model.client, model.aux_head))


def run_arm(args: argparse.Namespace, arm: str, cut: str, mode: str, out: Path) -> dict[str, Any]:
    clients, link = ARMS[arm]
    run_dir = out / f"{arm}-{cut}-{mode}"
    run_dir.mkdir(parents=True, exist_ok=True)
    options = {"depth": args.depth, "cut": cut, "mode": mode, "batch_size": args.batch_size,
               "batches": args.batches, "link": link, "out": str(run_dir)}  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={clients + 1}",
               __file__, "--worker", json.dumps(options)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{arm} {cut} {mode} failed:\n{done.stderr[-3000:]}")
    return summarize(run_dir, arm, cut, mode, args)


def summarize(run_dir: Path, arm: str, cut: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row from the processes' figures in ``run_dir`` (also used by ``--report`` on earlier runs)."""
    clients, link = ARMS[arm]
    roles = {path.stem: json.loads(path.read_text()) for path in run_dir.glob("*.json")}
    warm, timed = args.warmup, args.batches - args.warmup
    # Steady pace: the slower process's interval between the ends of its batches after the warm-up (a dsl
    # client that runs ahead waits on its window; the server's batch with two clients is a round of both).
    # The last batch is left out: with several clients it ends with the FedAvg round, a wait for all.
    paces = {role: (r["ends"][-2] - r["ends"][warm - 1]) / (timed - 1) for role, r in roles.items()}
    per_side = {role: sum(r["compute_per_batch"][warm:]) / timed for role, r in roles.items()}
    up, down, state = simulated_bytes(args.depth, cut, args.batch_size)
    rounds = 1 if clients > 1 else 0  # one epoch: one FedAvg round
    return {
        "arm": arm, "cut": cut, "mode": mode, "clients": clients, "link": link,
        "wall_per_batch": max(paces.values()),
        "paces": paces,
        "client_compute": max(per_side[f"client{i}"] for i in range(clients)),
        "server_compute": per_side["server"] / clients,
        "wire_payload_bytes": roles["server"]["wire_payload_bytes_received"]
        + sum(roles[f"client{i}"]["wire_payload_bytes_received"] for i in range(clients)),
        "simulated_bytes": clients * (args.batches * (up + (down if mode == "sl" else 0)) + rounds * 2 * state),
        "bytes_up_per_batch": up, "bytes_down_per_batch": down,
        "peak_rss_mib": {role: round(r["peak_rss_mib"]) for role, r in roles.items()},
        "saved_peak_mib": {role: round((r["saved_peak_bytes"] or 0) / 2**20, 1) for role, r in roles.items()},
        "depth": args.depth, "batches": args.batches,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8, help="training batches per client (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="first batches not timed (default 2, at least 1)")
    parser.add_argument("--repeat", type=int, default=1, help="a repeat's number: its runs go to --out/rep<N>")
    parser.add_argument("--cuts", nargs="+", default=list(CUTS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/split"))
    parser.add_argument("--report", action="store_true", help="only summarize the runs already in --out")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.repeat > 1:
        args.out = args.out / f"rep{args.repeat}"
    if args.report:
        rows = [summarize(args.out / f"{a}-{c}-{m}", a, c, m, args) for a in args.arms for c in args.cuts for m in MODES
                if (args.out / f"{a}-{c}-{m}" / "server.json").exists()]  # fmt: skip
        (args.out / "table.md").write_text(table(rows) + "\n")
        print(table(rows))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["arm"], r["cut"], r["mode"], r.get("depth", 110), r.get("batches")) for r in results}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"# {machine}, ResNet-{args.depth}, batch {args.batch_size}, {args.batches} batches ({args.warmup} warm-up)")
    for arm in args.arms:
        for cut in args.cuts:
            for mode in MODES:
                if (arm, cut, mode, args.depth, args.batches) in done:
                    continue  # resume where a previous invocation stopped
                row = run_arm(args, arm, cut, mode, args.out)
                results.append(row)
                results_path.write_text(json.dumps(results, indent=1))
                print(json.dumps(row), flush=True)
    print(table([r for r in results if r["depth"] == args.depth and r["batches"] == args.batches]))


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per arm and cut, dsl and sl wall time, the ratio and its floor, bytes, memory.

    The floor is ``max(c, s) / (c + s)`` with the dsl run's per-side compute times; over an emulated link
    it takes the plain arm's ``c`` and ``s`` (a dsl client's phase there includes waiting on its window)
    and the link's transfer times ``u`` (up) and ``d`` (down, sl only) and latency ``l``:
    ``max(c, s, u) / (c + s + u + d + 2 l)`` (dsl's upload overlaps compute; sl pays the round trip).
    """
    lines = [
        "| arm | cut | c s/batch | s s/batch | sl s/batch | dsl s/batch | dsl/sl | floor | ratio/floor"
        " | wire = simulated bytes | peak RSS MiB (dsl) | saved peak MiB (dsl) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {(r["arm"], r["cut"], r["mode"]): r for r in results}
    for arm, cut in dict.fromkeys((r["arm"], r["cut"]) for r in results):
        dsl, sl = rows.get((arm, cut, "dsl")), rows.get((arm, cut, "sl"))
        if dsl is None or sl is None:
            continue
        c, s = dsl["client_compute"], dsl["server_compute"]
        plain = rows.get(("plain", cut, "dsl"))
        if dsl["link"] and plain is not None:
            c, s = plain["client_compute"], plain["server_compute"]
            mbps, latency = (float(x) for x in dsl["link"].split(","))
            u, d = (dsl[f"bytes_{k}_per_batch"] * 8 / (mbps * 1e6) for k in ("up", "down"))
            floor = max(c, s, u) / (c + s + u + d + 2 * latency / 1000)
        else:
            floor = max(c, s) / (c + s)
        ratio = dsl["wall_per_batch"] / sl["wall_per_batch"]
        equal = all(r["wire_payload_bytes"] == r["simulated_bytes"] for r in (dsl, sl))
        rss = ", ".join(f"{k} {v}" for k, v in sorted(dsl["peak_rss_mib"].items()))
        saved = ", ".join(f"{k} {v}" for k, v in sorted(dsl["saved_peak_mib"].items()))
        lines.append(
            f"| {arm} | {cut} | {c:.2f} | {s:.2f} | {sl['wall_per_batch']:.2f} | {dsl['wall_per_batch']:.2f}"
            f" | {ratio:.2f} | {floor:.2f} | {ratio / floor:.2f} | {'yes' if equal else 'NO'} | {rss} | {saved} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
