"""What crosses the cut, what each side holds, and what a step costs: sl vs dsl (issue 3's benchmark).

For the canonical CIFAR ResNet (default ResNet-110), batch 128, random CIFAR-shaped inputs, at the
named cuts, each mode runs :func:`lightning_dsl.core.split_step` with a :class:`~lightning_dsl.core.Cut`
and the ``"linear"`` auxiliary head, and the script reports:

(a) bytes per batch up and down (``cut.traffic``) and the dsl/sl ratio next to the closed form
    ``(A + L) / (2A + L)`` (A activation bytes, L label bytes), compared exactly;
(b) the peak of live saved-for-backward bytes per side and combined, from the package's cut planner
    (:func:`lightning_dsl.cuts.plan_cuts`: each unit measured once with the saved-tensor hooks; equal to
    a real step's :class:`~lightning_dsl.core.memory.SavedTensorTracker`, tested at every cut) and the
    dsl/sl ratio next to the ideal ``max(client, server) / (client + server)``;
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

It prints the hardware and markdown tables, and writes ``cut_costs.md``, ``cut_costs.json`` and
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
import platform
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
from lightning_dsl.core import Cut, build_aux_head, get_codec, split_network, split_step  # noqa: E402
from lightning_dsl.core.split import cut_units  # noqa: E402
from lightning_dsl.cuts import plan_cuts  # noqa: E402
from lightning_dsl.models import cifar_resnet  # noqa: E402

MODES = ("sl", "dsl")
FEEDBACK_WEIGHT = {"sl": 1.0, "dsl": None}
MIB = 2**20
SHALLOW_TARGET = 0.60  # issue 3: dsl's combined saved-activation peak at the shallow cut, relative to sl
HEAD_TARGET = 0.02  # issue 3: the auxiliary head adds at most 2 % to the step time


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


def planned_memory(args: argparse.Namespace, inputs: Tensor, labels: Tensor, device: torch.device) -> dict[int, Any]:
    """The saved-activation figures of every cut from the package's planner (each unit measured once)."""
    torch.manual_seed(args.seed)
    network = cifar_resnet(args.depth, num_classes=args.num_classes).to(device).train()
    plans = plan_cuts(
        cut_units(network), inputs, labels, lambda z: build_aux_head("linear", z.shape[1:], args.num_classes).to(device)
    )
    return {plan.index: plan for plan in plans}


def measure_memory(run: Run, plan: Any, inputs: Tensor, labels: Tensor, device: torch.device) -> dict[str, Any]:
    """One real step (bytes from the cut's traffic, CUDA peaks on a GPU); the saved peaks from the planner."""
    cuda = CudaPeaks(device) if device.type == "cuda" else None
    before = run.cut.traffic.copy()
    if cuda is not None:
        cuda.start_step()
    loss = run.step(inputs, labels, cuda)
    if cuda is not None:
        cuda.end_step()
    traffic = run.cut.traffic - before
    result: dict[str, Any] = {
        "bytes_up": traffic.bytes_up,
        "bytes_down": traffic.bytes_down,
        # tests/cuts/test_costs.py: the planner's figures equal a real step's tracker at every cut
        "saved_client_peak_bytes": getattr(plan, f"saved_client_{run.mode}"),
        "saved_server_peak_bytes": getattr(plan, f"saved_server_{run.mode}"),
        "saved_peak_bytes": getattr(plan, f"saved_step_{run.mode}"),
        "loss": loss,
    }
    if cuda is not None:
        result.update({f"cuda_{side}_peak_bytes": value for side, value in cuda.phases.items()})
        result["cuda_step_peak_bytes"] = cuda.step
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run: Run, inputs: Tensor, labels: Tensor, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step over ``steps`` steps, and the last loss."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = run.step(inputs, labels)
    synchronize(device)
    return (time.perf_counter() - start) / steps, loss


def time_head(run: Run, z_shape: torch.Size, labels: Tensor, iters: int, device: torch.device) -> float:
    """Seconds of the auxiliary head's forward, loss and backward (to the cut's gradient), alone."""
    head = copy.deepcopy(run.head)
    z = torch.randn(labels.shape[0], *z_shape, device=device, requires_grad=True)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        z.grad = None
        head.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(z), labels).backward()
    synchronize(device)
    return (time.perf_counter() - start) / iters


CODECS = ("fp16", "bf16", "int8", "int8-channel")
HEADS = (("linear", {"pool": 1}), ("linear", {"pool": 2}), ("linear", {"pool": 4}), ("mlp", {}), ("conv", {}))
CODEC_TARGET = 0.05  # issue 5: encode + decode cost at most 5 % of the step at ResNet-110's shallow cut


def time_codec(codec_name: str, z: Tensor, iters: int, device: torch.device) -> tuple[float, int]:
    """Seconds of one encode + decode of ``z``, and the encoded bytes."""
    codec = get_codec(codec_name)
    nbytes = codec.encode(z).nbytes
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        codec.decode(codec.encode(z))
    synchronize(device)
    return (time.perf_counter() - start) / iters, nbytes


def time_client(run: Run, inputs: Tensor, iters: int, device: torch.device) -> float:
    """Seconds of the client's forward and backward (from a gradient at the cut), parameters not stepped."""
    client = copy.deepcopy(run.client)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        client.zero_grad(set_to_none=True)
        z = client(inputs)
        z.backward(torch.ones_like(z))
    synchronize(device)
    return (time.perf_counter() - start) / iters


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


# ---------------------------------------------------------------------------------------------- statistics
def summary(values: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values * 3)
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def hardware(device: torch.device) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    info: dict[str, Any] = {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------- report
def mib(value: float) -> str:
    return f"{value / MIB:,.1f}"


def tables(results: dict[str, Any]) -> str:
    cuts = results["cuts"]
    lines = [
        "### (a) Bytes per batch across the cut",
        "",
        "| cut | split | A (act. bytes) | L (label bytes) | sl up | sl down | dsl up | dsl down | dsl/sl"
        " | (A+L)/(2A+L) | equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        sl, dsl = c["sl"], c["dsl"]
        lines.append(
            f"| {name} | {c['split_index']} | {c['activation_bytes']:,} | {c['label_bytes']:,} | {sl['bytes_up']:,}"
            f" | {sl['bytes_down']:,} | {dsl['bytes_up']:,} | {dsl['bytes_down']:,} | {c['bytes_ratio']}"
            f" = {float(Fraction(c['bytes_ratio'])):.6f} | {c['bytes_ratio_closed_form']} | {c['bytes_ratio_exact']} |"
        )
    lines += [
        "",
        "### (b) Peak saved-for-backward activations (MiB)",
        "",
        "| cut | sl client | sl server | sl combined | dsl client | dsl server | dsl combined | dsl/sl"
        " | ideal max(C,S)/(C+S) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        sl, dsl = c["sl"], c["dsl"]
        lines.append(
            f"| {name} | {mib(sl['saved_client_peak_bytes'])} | {mib(sl['saved_server_peak_bytes'])}"
            f" | {mib(sl['saved_peak_bytes'])} | {mib(dsl['saved_client_peak_bytes'])}"
            f" | {mib(dsl['saved_server_peak_bytes'])} | {mib(dsl['saved_peak_bytes'])}"
            f" | {c['saved_peak_ratio']:.4f} | {c['saved_peak_ideal']:.4f} |"
        )
    lines += [
        "",
        "C: the client's graph (dsl client peak; it includes the cut activation z); S: the rest of the end-to-end"
        " graph (sl combined - C). Run alone in dsl, the server also holds its input z, so its peak is S + A.",
    ]
    if any("cuda_step_peak_bytes" in c["sl"] for c in cuts.values()):
        lines += [
            "",
            "### (c) CUDA peak allocated (MiB; model, gradients and optimizer state included)",
            "",
            "| cut | mode | client phase | server phase | step |",
            "|---|---|---|---|---|",
        ]
        for name, c in cuts.items():
            for mode in MODES:
                m = c[mode]
                lines.append(
                    f"| {name} | {mode} | {mib(m.get('cuda_client_peak_bytes', 0))}"
                    f" | {mib(m.get('cuda_server_peak_bytes', 0))} | {mib(m['cuda_step_peak_bytes'])} |"
                )
    repeats = results["config"]["repeats"]
    lines += [
        "",
        f"### (d, e) Step time, side by side ({repeats} interleaved repeats; median [IQR]; tracker off)",
        "",
        "| cut | sl s/step | dsl s/step | dsl/sl (paired, median [min, max]) | head alone ms | head share of dsl step"
        " (median [min, max]) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        t = c["time"]
        sl, dsl, ratio, head, share = t["sl_s"], t["dsl_s"], t["dsl_over_sl"], t["head_s"], t["head_share"]
        lines.append(
            f"| {name} | {sl['median']:.3f} [{sl['q1']:.3f}, {sl['q3']:.3f}]"
            f" | {dsl['median']:.3f} [{dsl['q1']:.3f}, {dsl['q3']:.3f}]"
            f" | {ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]"
            f" | {head['median'] * 1e3:.2f} | {share['median']:.3%} [{share['min']:.3%}, {share['max']:.3%}] |"
        )
    lines += [
        "",
        "### (f) Codecs at the cut: bytes per batch up and encode + decode time (alone) over the dsl step",
        "",
        "| cut | codec | bytes up / batch | / float32 | encode+decode ms | share of dsl step |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        fp32 = c["activation_bytes"] + c["label_bytes"]
        for codec, row in c["codecs"].items():
            up = row["bytes"] + c["label_bytes"]
            lines.append(
                f"| {name} | {codec} | {up:,} | {up / fp32:.4f} | {row['seconds'] * 1e3:.2f} | {row['share']:.3%} |"
            )
    lines += [
        "",
        "### (g) Auxiliary heads: parameters and forward + backward time, relative to the client",
        "",
        "| cut | head | params | params / client's | fwd+bwd ms | time / client's fwd+bwd |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in cuts.items():
        for row in c["heads"]:
            lines.append(
                f"| {name} | {row['head']} | {row['params']:,} | {row['params_over_client']:.4f}"
                f" | {row['seconds'] * 1e3:.2f} | {row['time_over_client']:.3%} |"
            )
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> list[str]:
    cuts = results["cuts"]
    out = []
    for name, c in cuts.items():
        out.append(f"bytes ratio == (A+L)/(2A+L) at {name}: {'PASS' if c['bytes_ratio_exact'] else 'MISS'}")
    if "shallow" in cuts:
        ratio = cuts["shallow"]["saved_peak_ratio"]
        verdict = "PASS" if ratio <= SHALLOW_TARGET else "MISS"
        out.append(f"saved-activation peak dsl/sl at shallow = {ratio:.4f} (target <= {SHALLOW_TARGET}): {verdict}")
    for name, c in cuts.items():
        share = c["time"]["head_share"]["median"]
        verdict = "PASS" if share <= HEAD_TARGET else "MISS"
        out.append(f"aux head share of the dsl step at {name} = {share:.3%} (target <= {HEAD_TARGET:.0%}): {verdict}")
    if "shallow" in cuts:
        for codec, row in cuts["shallow"]["codecs"].items():
            verdict = "PASS" if row["share"] <= CODEC_TARGET else "MISS"
            out.append(
                f"{codec} encode+decode share of the dsl step at shallow = {row['share']:.3%}"
                f" (target <= {CODEC_TARGET:.0%}): {verdict}"
            )
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = list(results["cuts"])
    x = range(len(cuts))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for i, mode in enumerate(MODES):
        values = [results["cuts"][c][mode]["saved_peak_bytes"] / MIB for c in cuts]
        bars = left.bar([k + (i - 0.5) * width for k in x], values, width, label=mode)
        left.bar_label(bars, fmt="%.0f", fontsize=8)
    for k, c in enumerate(cuts):
        left.annotate(f"dsl/sl {results['cuts'][c]['saved_peak_ratio']:.3f}", (k, 0), xytext=(0, -28),
                      textcoords="offset points", ha="center", fontsize=8)  # fmt: skip
    left.set(xticks=list(x), xticklabels=cuts, ylabel="MiB", title="Peak saved-for-backward activations (combined)")
    left.legend(loc="upper center", ncols=2)
    left.margins(y=0.15)
    width = 0.2
    for i, (mode, direction) in enumerate((m, d) for m in MODES for d in ("up", "down")):
        values = [results["cuts"][c][mode][f"bytes_{direction}"] / MIB for c in cuts]
        bars = right.bar([k + (i - 1.5) * width for k in x], values, width, label=f"{mode} {direction}")
        right.bar_label(bars, fmt="%.1f", fontsize=7)
    right.set(xticks=list(x), xticklabels=cuts, ylabel="MiB per batch", title="Bytes across the cut per batch")
    right.legend(loc="upper center", ncols=4, fontsize=8)
    right.margins(y=0.15)
    config = results["config"]
    fig.suptitle(f"ResNet-{config['depth']}, batch {config['batch_size']}, float32", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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

    # (a, b, c): the saved activations of every cut from the planner; one real step per run for the bytes (and the
    # CUDA peaks), which also warms the run up.
    plans = planned_memory(args, inputs, labels, device)
    measured: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        measured[run.cut_name, run.mode] = measure_memory(run, plans[run.split_index], inputs, labels, device)
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
