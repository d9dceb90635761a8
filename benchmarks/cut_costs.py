"""What crosses the cut, what each side holds, and what a step costs: sl vs dsl (issue 3's benchmark).

For the canonical CIFAR ResNet (default ResNet-110), batch 128, random CIFAR-shaped inputs, at the
named cuts, each mode runs :func:`lightning_dsl.core.split_step` with a :class:`~lightning_dsl.core.Cut`
and the ``"linear"`` auxiliary head, and the script reports:

(a) bytes per batch up and down and the dsl/sl ratio next to the closed form ``(A + L) / (2A + L)``
    (A activation bytes, L label bytes), compared exactly;
(b) the peak of live saved-for-backward bytes per side and combined, and the dsl/sl ratio next to the
    ideal ``max(client, server) / (client + server)``;
(c) the CUDA peak allocated per phase and per step (``--device cuda`` only);
(d) the step time of each mode, measured side by side: every (cut, mode) warms up, then the
    repeats run all of them in turn (order reversed on every other repeat), tracker off;
(e) the auxiliary head's share of the dsl step: the head's forward, loss and backward (down to
    the gradient at the cut, where the client's backward starts) timed alone on a tensor of the
    cut's shape, right after each timed dsl step, divided by that step's time;
(f) each codec's encode + decode of one batch of ``z``, timed alone, as a share of the dsl step,
    with its exact bytes per batch;
(g) each built-in head (linear at pooling grids 1, 2, 4, mlp, conv): its parameters, and its
    forward + backward time alone relative to the client's forward + backward.

(a) and (b) are the package's cut planner's figures (:func:`lightning_dsl.cuts.plan_cuts`: each unit
measured once, every cut derived; its bytes are what the codec encodes, its saved bytes equal a real
step's :class:`~lightning_dsl.core.memory.SavedTensorTracker`, tested at every cut in
``tests/cuts/test_costs.py``); this script measures only what the planner does not: the CUDA peaks, the
steps' times side by side, and the heads' and codecs' costs alone. It prints the hardware and markdown
tables (:mod:`benchmarks.cut_costs_report`), and writes ``cut_costs.md``, ``cut_costs.json`` and
``cut_costs.png`` to ``--out``.

    python benchmarks/cut_costs.py                         # ResNet-110, batch 128: ~10 min on 2 cores
    python benchmarks/cut_costs.py --depth 20 --repeats 5  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from benchmarks.cut_costs_report import MODES, chart, checks, hardware, summary, tables  # noqa: E402
from lightning_dsl.core import Cut, build_aux_head, get_codec, split_network, split_step  # noqa: E402
from lightning_dsl.core.split import cut_units  # noqa: E402
from lightning_dsl.cuts import CutCosts, plan_cuts  # noqa: E402
from lightning_dsl.models import cifar_resnet  # noqa: E402

FEEDBACK_WEIGHT = {"sl": 1.0, "dsl": None}


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Run:
    """One (cut, mode): its own copy of the network, head, optimizers and cut."""

    cut_name: str
    mode: str
    split_index: int
    client: nn.Module
    server: nn.Module
    head: nn.Module
    client_optimizer: torch.optim.Optimizer
    server_optimizer: torch.optim.Optimizer
    z_shape: torch.Size  # one sample of the cut activation
    cut: Cut = field(default_factory=Cut)

    def step(self, inputs: Tensor, labels: Tensor, phase: Callable[[str], Any] | None = None) -> float:
        """One training step; returns the server's loss."""
        kwargs = {"phase": phase} if phase is not None else {}
        out = split_step(
            self.client,
            self.server,
            self.head,
            inputs,
            labels,
            cut=self.cut,
            client_optimizer=self.client_optimizer,
            server_optimizer=self.server_optimizer,
            feedback_weight=FEEDBACK_WEIGHT[self.mode],
            **kwargs,
        )
        return float(out.loss)


def build_runs(args: argparse.Namespace, device: torch.device) -> list[Run]:
    torch.manual_seed(args.seed)
    network = cifar_resnet(args.depth, num_classes=args.num_classes)  # one initialisation for every run
    runs = []
    for cut_name in args.cuts:
        for mode in MODES:
            net = copy.deepcopy(network).to(device)
            halves = split_network(net, cut_name)
            with torch.no_grad():
                shape = halves.client.eval()(torch.zeros(2, 3, 32, 32, device=device)).shape[1:]
            halves.client.train()
            torch.manual_seed(args.seed + 1)  # the same head in both modes
            head = build_aux_head("linear", shape, args.num_classes).to(device)
            client_params = [*halves.client.parameters(), *head.parameters()]
            runs.append(
                Run(
                    cut_name=str(cut_name),
                    mode=mode,
                    split_index=halves.split_index,
                    client=halves.client,
                    server=halves.server,
                    head=head,
                    client_optimizer=sgd(client_params, args.lr),
                    server_optimizer=sgd(halves.server.parameters(), args.lr),
                    z_shape=shape,
                )
            )
    return runs


def sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


# ---------------------------------------------------------------------------------------------- measuring
class CudaPeaks:
    """Phase hook: ``torch.cuda.max_memory_allocated`` per phase (reset at each phase start) and per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.phases: dict[str, int] = {}
        self.step = 0

    def start_step(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.phases, self.step = {}, 0

    def end_step(self) -> None:
        torch.cuda.synchronize(self.device)
        self.step = max(self.step, torch.cuda.max_memory_allocated(self.device))

    @contextlib.contextmanager
    def __call__(self, side: str) -> Iterator[None]:
        torch.cuda.synchronize(self.device)
        self.step = max(self.step, torch.cuda.max_memory_allocated(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.step = max(self.step, peak)
            self.phases[side] = max(self.phases.get(side, 0), peak)


def planned(args: argparse.Namespace, inputs: Tensor, labels: Tensor, device: torch.device) -> dict[int, CutCosts]:
    """Every cut's bytes and saved activations from the package's planner (each unit measured once)."""
    torch.manual_seed(args.seed)
    network = cifar_resnet(args.depth, num_classes=args.num_classes).to(device).train()
    plans = plan_cuts(
        cut_units(network), inputs, labels, lambda z: build_aux_head("linear", z.shape[1:], args.num_classes).to(device)
    )
    return {plan.index: plan for plan in plans}


def from_plan(plan: CutCosts, mode: str, batch_size: int) -> dict[str, Any]:
    """The planner's figures of one (cut, mode): bytes per batch up and down, the saved-activation peaks."""
    return {
        "bytes_up": round(plan.bytes_up * batch_size),  # the planner's bytes are per sample
        "bytes_down": round(plan.bytes_down * batch_size) if mode == "sl" else 0,  # dsl sends no gradient down
        "saved_client_peak_bytes": getattr(plan, f"saved_client_{mode}"),
        "saved_server_peak_bytes": getattr(plan, f"saved_server_{mode}"),
        "saved_peak_bytes": getattr(plan, f"saved_step_{mode}"),
    }


def measure_step(run: Run, inputs: Tensor, labels: Tensor, device: torch.device) -> dict[str, Any]:
    """One real step: its loss and, on a GPU, the CUDA peaks per phase and per step (it also warms the run up)."""
    cuda = CudaPeaks(device) if device.type == "cuda" else None
    if cuda is not None:
        cuda.start_step()
    result: dict[str, Any] = {"loss": run.step(inputs, labels, cuda)}
    if cuda is not None:
        cuda.end_step()
        result.update({f"cuda_{side}_peak_bytes": value for side, value in cuda.phases.items()})
        result["cuda_step_peak_bytes"] = cuda.step
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call(call: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Seconds per ``call()`` over ``iters`` calls (synchronized on ``device``)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        call()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def time_steps(run: Run, inputs: Tensor, labels: Tensor, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step over ``steps`` steps, and the last loss."""
    losses: list[float] = []
    seconds = per_call(lambda: losses.append(run.step(inputs, labels)), steps, device)
    return seconds, losses[-1]


def time_head(run: Run, z_shape: torch.Size, labels: Tensor, iters: int, device: torch.device) -> float:
    """Seconds of the auxiliary head's forward, loss and backward (to the cut's gradient), alone."""
    head = copy.deepcopy(run.head)
    z = torch.randn(labels.shape[0], *z_shape, device=device, requires_grad=True)

    def call() -> None:
        z.grad = None
        head.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(z), labels).backward()

    return per_call(call, iters, device)


CODECS = ("fp16", "bf16", "int8", "int8-channel")
HEADS = (("linear", {"pool": 1}), ("linear", {"pool": 2}), ("linear", {"pool": 4}), ("mlp", {}), ("conv", {}))


def time_codec(codec_name: str, z: Tensor, iters: int, device: torch.device) -> tuple[float, int]:
    """Seconds of one encode + decode of ``z``, and the encoded bytes."""
    codec = get_codec(codec_name)
    return per_call(lambda: codec.decode(codec.encode(z)), iters, device), codec.encode(z).nbytes


def time_client(run: Run, inputs: Tensor, iters: int, device: torch.device) -> float:
    """Seconds of the client's forward and backward (from a gradient at the cut), parameters not stepped."""
    client = copy.deepcopy(run.client)

    def call() -> None:
        client.zero_grad(set_to_none=True)
        z = client(inputs)
        z.backward(torch.ones_like(z))

    return per_call(call, iters, device)


def head_costs(run: Run, inputs: Tensor, labels: Tensor, iters: int, device: torch.device) -> list[dict[str, Any]]:
    """Parameters and forward + backward time of each built-in head, relative to the client's."""
    client_s = time_client(run, inputs, max(1, iters // 5), device)
    client_params = sum(p.numel() for p in run.client.parameters())
    rows = []
    for spec, kwargs in HEADS:
        torch.manual_seed(0)
        head = build_aux_head(spec, run.z_shape, int(labels.max()) + 1, **kwargs).to(device)
        probe = Run(**{**vars(run), "head": head})
        seconds = time_head(probe, run.z_shape, labels, iters, device)
        params = sum(p.numel() for p in head.parameters())
        rows.append(
            {
                "head": spec + "".join(f" {k}={v}" for k, v in kwargs.items()),
                "params": params,
                "params_over_client": params / client_params,
                "seconds": seconds,
                "time_over_client": seconds / client_s,
                "client_seconds": client_s,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=110, help="CIFAR-ResNet depth 6n+2 (default 110)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--cuts", nargs="+", default=["shallow", "middle", "deep"], help="cut names or indices")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run after the measured one")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per run and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    parser.add_argument("--head-iters", type=int, default=10, help="iterations of the head timed alone")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD lr (ResNet-110's warm-up lr: no divergence)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "cut_costs")
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "repeats", "head_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} asked for, but torch sees no CUDA device (use 'cpu' or 'auto')")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    started = time.perf_counter()
    hw = hardware(device)
    print("Hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)

    runs = build_runs(args, device)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(args.batch_size, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)

    # (a, b): the bytes and saved activations of every cut from the planner; (c): one real step per run for the
    # CUDA peaks, which also warms the run up.
    plans = planned(args, inputs, labels, device)
    measured: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        figures = from_plan(plans[run.split_index], run.mode, args.batch_size)
        measured[run.cut_name, run.mode] = {**figures, **measure_step(run, inputs, labels, device)}
        print(f"measured {run.cut_name:>8} {run.mode:>3}: {measured[run.cut_name, run.mode]}", flush=True)
    for run in runs:
        for _ in range(args.warmup):
            run.step(inputs, labels)

    # (d, e): all runs in turn, the order reversed on every other repeat; the head alone after each dsl step.
    times: dict[tuple[str, str], list[float]] = {(r.cut_name, r.mode): [] for r in runs}
    head_times: dict[str, list[float]] = {r.cut_name: [] for r in runs}
    losses: dict[tuple[str, str], float] = {}
    z_shapes = {r.cut_name: r.z_shape for r in runs}
    for repeat in range(args.repeats):
        for run in runs if repeat % 2 == 0 else runs[::-1]:
            seconds, losses[run.cut_name, run.mode] = time_steps(run, inputs, labels, args.steps, device)
            times[run.cut_name, run.mode].append(seconds)
            if run.mode == "dsl":
                head_times[run.cut_name].append(time_head(run, z_shapes[run.cut_name], labels, args.head_iters, device))
            print(f"repeat {repeat} {run.cut_name:>8} {run.mode:>3}: {seconds:.3f} s/step", flush=True)

    cuts: dict[str, Any] = {}
    for run in runs:
        if run.mode != "dsl":
            continue
        name = run.cut_name
        sl, dsl = measured[name, "sl"], measured[name, "dsl"]
        activation_bytes = z_shapes[name].numel() * args.batch_size * inputs.element_size()
        label_bytes = labels.numel() * labels.element_size()
        ratio = Fraction(dsl["bytes_up"] + dsl["bytes_down"], sl["bytes_up"] + sl["bytes_down"])
        closed = Fraction(activation_bytes + label_bytes, 2 * activation_bytes + label_bytes)
        # C: the client's graph (its peak in dsl, where nothing else is alive); S: the rest of the end-to-end
        # graph that sl holds (sl's combined peak minus C). The server's input z is in C; run alone in dsl the
        # server holds z as well, so dsl's server peak is S + A.
        client = dsl["saved_client_peak_bytes"]
        server = sl["saved_peak_bytes"] - client
        pairs = list(zip(times[name, "sl"], times[name, "dsl"], head_times[name], strict=True))
        dsl_step = statistics.median(times[name, "dsl"])
        with torch.no_grad():
            z = run.client(inputs)
        codecs = {}
        for codec in CODECS:
            seconds, nbytes = time_codec(codec, z, args.head_iters, device)
            codecs[codec] = {"seconds": seconds, "bytes": nbytes, "share": seconds / dsl_step}
        heads = head_costs(run, inputs, labels, args.head_iters, device)
        cuts[name] = {
            "split_index": run.split_index,
            "activation_shape": list(z_shapes[name]),
            "activation_bytes": activation_bytes,
            "label_bytes": label_bytes,
            "bytes_ratio": str(ratio),
            "bytes_ratio_closed_form": str(closed),
            "bytes_ratio_exact": ratio == closed,
            "saved_peak_ratio": dsl["saved_peak_bytes"] / sl["saved_peak_bytes"],
            "saved_peak_ideal": max(client, server) / (client + server),
            "saved_peak_ideal_sides": {"client": client, "server": server},
            "sl": sl,
            "dsl": dsl,
            "codecs": codecs,
            "heads": heads,
            "time": {
                "sl_s": summary(times[name, "sl"]),
                "dsl_s": summary(times[name, "dsl"]),
                "dsl_over_sl": summary([d / s for s, d, _ in pairs]),
                "head_s": summary(head_times[name]),
                "head_share": summary([h / d for _, d, h in pairs]),
                "raw": {"sl_s": times[name, "sl"], "dsl_s": times[name, "dsl"], "head_s": head_times[name]},
                "last_loss": {"sl": losses[name, "sl"], "dsl": losses[name, "dsl"]},
            },
        }
    hw["load_average_at_end"] = list(os.getloadavg())
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {"hardware": hw, "config": config, "command": " ".join(sys.argv), "cuts": cuts}
    results["wall_s"] = time.perf_counter() - started

    report = tables(results)
    verdicts = checks(results)
    print("\n" + report + "\n\n" + "\n".join(verdicts))
    print(f"\nwall time {results['wall_s']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    header = f"Command: `{results['command']}`\n\nHardware: " + ", ".join(f"{k}={v}" for k, v in hw.items())
    (args.out / "cut_costs.md").write_text(header + "\n\n" + report + "\n\n" + "\n".join(verdicts) + "\n")
    (args.out / "cut_costs.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, args.out / "cut_costs.png")
    print(f"wrote {args.out / 'cut_costs.md'}, cut_costs.json, cut_costs.png")
    return results


if __name__ == "__main__":
    main()
