"""What each defense costs per step at ResNet-20's shallow cut: side by side with the undefended step, in one run.

Every arm is :func:`lightning_dsl.core.step.split_step` (the step the module runs) on the same random
CIFAR-shaped batches held in memory, from the same initial weights, with one SGD optimizer per side:

* ``undefended``: no ``privacy``;
* ``noise``: the Gaussian mechanism (each sample clipped to ``C``, ``N(0, σ²C²)`` per element; σ = 1);
* ``labels``: k-ary randomized response on the labels sent (ε = 2);
* ``nopeek``: ``α · dCor(x, z)`` on the client's objective (α = 1), which is ``O(B²)`` per batch;
* ``all``: the three together.

The arms take their steps in turn, one step each (the order rotated at every step), and each defended
step's time is divided by the undefended step just around it, so a machine that slows down for a while
slows every arm alike; the table shows the median and the range of those ratios. On a shared machine the
ratios still scatter widely, so each defense's own work is also timed alone, many times on the same
batch (``isolated``: the transform on what is sent, NoPeek's dCor forward and backward), as a share of
the undefended step: the figure to read against the issue's target, each defense at most 5 % of a step.
NoPeek's distance correlation is timed at each ``--dcor-batches`` size beside the undefended step at it.

    python benchmarks/defense_overhead.py                   # ResNet-20, shallow cut, batch 128, ~5 min on 1 core
    python benchmarks/defense_overhead.py --mode sl --repeats 7 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from benchmarks.cut_costs import hardware  # noqa: E402
from lightning_dsl.core import Cut, build_aux_head, split_network, split_step  # noqa: E402
from lightning_dsl.models import create_model  # noqa: E402
from lightning_dsl.privacy import CutPrivacy, distance_correlation  # noqa: E402

TARGET = 1.05  # issue 21: each defense costs at most 5 % of a step at ResNet-20's shallow cut, batch 128
CLIP_NORM = 205.0  # the median per-sample norm at this cut (benchmarks/clip_norm.py on the CPU protocol)
ARMS: dict[str, CutPrivacy | None] = {
    "undefended": None,
    "noise": CutPrivacy(clip_norm=CLIP_NORM, noise_multiplier=1.0),
    "labels": CutPrivacy(label_epsilon=2.0),
    "nopeek": CutPrivacy(nopeek_weight=1.0),
    "all": CutPrivacy(clip_norm=CLIP_NORM, noise_multiplier=1.0, nopeek_weight=1.0, label_epsilon=2.0),
}


def batches(count: int, size: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(count)
    ]


class Arm:
    """One defense's split network, optimizers and cut, timed over a list of batches."""

    def __init__(self, network: nn.Module, cut_name: str, privacy: CutPrivacy | None, mode: str) -> None:
        halves = split_network(copy.deepcopy(network), cut_name)
        self.client, self.server = halves.client, halves.server
        with torch.no_grad():
            z = self.client.eval()(torch.zeros(2, 3, 32, 32))
        self.client.train()
        self.head = build_aux_head("linear", z.shape[1:], 10)
        self.cut = Cut(client_transform=privacy.mechanism(10) if privacy is not None else None)
        self.regularizer = privacy.regularizer() if privacy is not None else None
        self.feedback = 1.0 if mode == "sl" else None
        self.client_opt = torch.optim.SGD([*self.client.parameters(), *self.head.parameters()], lr=0.01, momentum=0.9)
        self.server_opt = torch.optim.SGD(self.server.parameters(), lr=0.01, momentum=0.9)

    def step(self, x: Tensor, y: Tensor) -> None:
        split_step(
            self.client,
            self.server,
            self.head,
            x,
            y,
            cut=self.cut,
            client_optimizer=self.client_opt,
            server_optimizer=self.server_opt,
            feedback_weight=self.feedback,
            client_regularizer=self.regularizer,
        )

    def timed_step(self, x: Tensor, y: Tensor) -> float:
        start = time.perf_counter()
        self.step(x, y)
        return time.perf_counter() - start

    def seconds_per_step(self, data: list[tuple[Tensor, Tensor]], warmup: int) -> float:
        for x, y in data[:warmup]:
            self.step(x, y)
        start = time.perf_counter()
        for x, y in data[warmup:]:
            self.step(x, y)
        return (time.perf_counter() - start) / len(data[warmup:])


def time_arms(arms: dict[str, Arm], data: list[tuple[Tensor, Tensor]], warmup: int, repeats: int) -> dict[str, Any]:
    """Seconds of every step of each arm, the arms taking one step each in turn (order rotated every step)."""
    names = list(arms)
    for x, y in data[:warmup]:
        for name in names:
            arms[name].step(x, y)
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    turn = 0
    for _ in range(repeats):
        for x, y in data[warmup:]:
            order = names[turn % len(names) :] + names[: turn % len(names)]
            turn += 1
            for name in order:
                seconds[name].append(arms[name].timed_step(x, y))
    return seconds


def isolated(batch: int, z_shape: tuple[int, ...], repeats: int) -> dict[str, list[float]]:
    """Seconds of each defense's own work on one batch: the transform on what is sent; dCor forward + backward."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    z = torch.randn(batch, *z_shape, generator=g) * 2.0  # norms about 2 sqrt(numel): every sample is clipped
    y = torch.randint(0, 10, (batch,), generator=g)
    jobs: dict[str, Callable[[], Any]] = {}
    for name in ("noise", "labels"):
        mechanism = ARMS[name].mechanism(10)  # type: ignore[union-attr]
        assert mechanism is not None
        jobs[name] = lambda m=mechanism: m.release(m.bound(z), y)
    leaf = z.clone().requires_grad_()
    jobs["nopeek"] = lambda: distance_correlation(x, leaf).backward()
    out: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():
        job()  # warm up
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            out[name].append(time.perf_counter() - start)
    return out


def time_dcor(size: int, z_shape: tuple[int, ...], repeats: int) -> list[float]:
    """Seconds of one dCor(x, z) forward and backward at batch ``size`` (z a leaf that needs its gradient)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(size, 3, 32, 32, generator=g)
    z = torch.randn(size, *z_shape, generator=g).requires_grad_()
    distance_correlation(x, z).backward()  # warm up
    out = []
    for _ in range(repeats):
        z.grad = None
        start = time.perf_counter()
        distance_correlation(x, z).backward()
        out.append(time.perf_counter() - start)
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    network = create_model(args.network, num_classes=10)
    data = batches(args.warmup + args.steps, args.batch)
    arms = {name: Arm(network, args.cut, privacy, args.mode) for name, privacy in ARMS.items()}
    z_shape = tuple(arms["undefended"].client.eval()(torch.zeros(2, 3, 32, 32)).shape[1:])
    for arm in arms.values():
        arm.client.train()
    seconds = time_arms(arms, data, args.warmup, args.repeats)
    base = seconds["undefended"]
    alone = isolated(args.batch, z_shape, 5 * args.repeats)
    alone["all"] = [sum(times) for times in zip(*alone.values(), strict=True)]  # the three, one after another
    results: dict[str, Any] = {
        "network": args.network,
        "cut": args.cut,
        "mode": args.mode,
        "batch": args.batch,
        "z_shape": list(z_shape),
        "steps": args.steps,
        "repeats": args.repeats,
        "hardware": hardware(torch.device("cpu")),
        "arms": {},
        "dcor": {},
    }
    for name, times in seconds.items():
        ratios = [t / b for t, b in zip(times, base, strict=True)]
        results["arms"][name] = {"seconds_per_step": spread(times), "ratio": spread(ratios)}
        if name in alone:
            results["arms"][name]["isolated_seconds"] = spread(alone[name])
            results["arms"][name]["isolated_share"] = statistics.median(alone[name]) / statistics.median(base)
    for size in args.dcor_batches:
        dcor = time_dcor(size, z_shape, args.repeats)
        entry: dict[str, Any] = {"seconds": spread(dcor)}
        if size == args.batch:
            entry["share_of_step"] = statistics.median(dcor) / statistics.median(base)
        else:  # the undefended step at this size, for scale
            step_data = batches(2, size, seed=2)
            step = [arms["undefended"].seconds_per_step(step_data, 1) for _ in range(max(1, args.repeats // 2))]
            entry["undefended_step_seconds"] = spread(step)
            entry["share_of_step"] = statistics.median(dcor) / statistics.median(step)
        results["dcor"][str(size)] = entry
    results["load_average_at_end"] = list(__import__("os").getloadavg())
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['network']}, cut {results['cut']} (z {tuple(results['z_shape'])}), mode {results['mode']}, "
        f"batch {results['batch']}, {results['steps']} timed steps x {results['repeats']} repeats; "
        f"CPU: {results['hardware']['cpu']}, {results['hardware']['torch_threads']} thread(s)",
        "",
        "| arm | s / step (median) | step ratio to undefended (median, range) | defense alone, share of a step"
        " | within 5 % |",
        "|---|---|---|---|---|",
    ]
    for name, entry in results["arms"].items():
        r = entry["ratio"]
        share = entry.get("isolated_share")
        ok = "yes" if share is not None and share <= TARGET - 1 else "no" if share is not None else "—"
        lines.append(
            f"| {name} | {entry['seconds_per_step']['median']:.3f} | {r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"
            f" | {'—' if share is None else f'{100 * share:.2f} %'} | {ok} |"
        )
    lines += ["", "| dCor(x, z) forward + backward | s (median) | share of an undefended step |", "|---|---|---|"]
    for size, entry in results["dcor"].items():
        lines.append(f"| batch {size} | {entry['seconds']['median']:.4f} | {100 * entry['share_of_step']:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, report: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet20")
    parser.add_argument("--cut", default="shallow")
    parser.add_argument("--mode", choices=["dsl", "sl"], default="dsl")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm and repeat (one batch each)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dcor-batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared: 1 by default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args)
    report(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
