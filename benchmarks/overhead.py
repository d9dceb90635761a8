"""What the framework costs: the module's step against hand-written loops, measured side by side.

On one model and one set of batches (random CIFAR-shaped tensors held in memory, so no data
loading is timed), every arm trains the same number of batches from the same initial weights:

* ``module dsl`` / ``module sl``: :class:`~lightning_dsl.DecoupledSplitModule` under a Lightning
  ``Trainer`` (no logger, no checkpointing, no progress bar: the loop and the module alone);
* ``module dsl + monitors``: the same with the communication, memory and throughput callbacks on,
  as every config in ``configs/`` has them (what leaving the measurements on costs);
* ``hand dsl`` / ``hand sl``: the same updates written out in plain torch (two SGD optimizers,
  one client forward per batch, the server on ``z.detach()``; in sl ``z.backward(grad)``);
* ``hand end-to-end``: plain training of the unsplit network, one optimizer, no cut at all.

The time per batch of an arm is taken from the start of its first timed batch to the end of its
last (so the loop's work between batches counts), after ``--warmup`` untimed batches. The arms run
in turn, the order reversed on every other repeat, and ratios are taken within each repeat, so a
machine that slows down for a while slows every arm alike. The script prints the hardware, a
markdown table (median and range over the repeats) and the verdict against issue 4's target:
``module dsl`` costs at most 1.05x ``hand dsl``.

    python benchmarks/overhead.py                       # ResNet-20, batch 128, ~5 min on 2 cores
    python benchmarks/overhead.py --depth 110 --repeats 3
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
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from benchmarks.cut_costs import hardware  # noqa: E402
from lightning_dsl import DecoupledSplitModule  # noqa: E402
from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor, SplitThroughputMonitor  # noqa: E402
from lightning_dsl.core import build_aux_head, split_network  # noqa: E402
from lightning_dsl.models import cifar_resnet  # noqa: E402

TARGET = 1.05  # issue 4: the module's dsl step costs at most 1.05x a hand-written loop doing the same updates
Batches = list[tuple[Tensor, Tensor]]


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


class Stopwatch(Callback):
    """Time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:  # noqa: D102
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:  # noqa: D102
        self.end = time.perf_counter()


def module_arm(mode: str, monitors: bool) -> Callable[[nn.Sequential, Batches, int, int], float]:
    def run(network: nn.Sequential, batches: Batches, split: int, warmup: int) -> float:
        model = DecoupledSplitModule(
            network,
            split_index=split,
            mode=mode,
            num_classes=10,
            client_optimizer=sgd,
            server_optimizer=sgd,
            input_shape=tuple(batches[0][0].shape[1:]),
        )
        watch = Stopwatch(warmup)
        callbacks: list[Callback] = [watch]
        if monitors:
            callbacks += [CommunicationMonitor(), PeakMemoryMonitor(), SplitThroughputMonitor()]
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=callbacks,
        )
        trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))  # type: ignore[arg-type]
        return (watch.end - watch.start) / (len(batches) - warmup)

    return run


def hand_split(mode: str) -> Callable[[nn.Sequential, Batches, int, int], float]:
    def run(network: nn.Sequential, batches: Batches, split: int, warmup: int) -> float:
        halves = split_network(network, split)
        client, server = halves.client.train(), halves.server.train()
        with torch.no_grad():
            shape = client(batches[0][0][:2]).shape[1:]
        head = build_aux_head("linear", shape, 10)
        client_optimizer = sgd([*client.parameters(), *head.parameters()])
        server_optimizer = sgd(server.parameters())
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                start = time.perf_counter()
            client_optimizer.zero_grad()
            z = client(x)
            if mode == "dsl":
                nn.functional.cross_entropy(head(z), y).backward()
                client_optimizer.step()
                server_optimizer.zero_grad()
                nn.functional.cross_entropy(server(z.detach()), y).backward()
                server_optimizer.step()
            else:
                nn.functional.cross_entropy(head(z.detach()), y).backward()  # the head as a probe, as the module
                server_optimizer.zero_grad()
                received = z.detach().requires_grad_()
                nn.functional.cross_entropy(server(received), y).backward()
                server_optimizer.step()
                z.backward(received.grad)
                client_optimizer.step()
        return (time.perf_counter() - start) / (len(batches) - warmup)

    return run


def hand_end_to_end(network: nn.Sequential, batches: Batches, split: int, warmup: int) -> float:
    network.train()
    optimizer = sgd(network.parameters())
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(network(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


ARMS: dict[str, Callable[[nn.Sequential, Batches, int, int], float]] = {
    "module dsl": module_arm("dsl", monitors=False),
    "hand dsl": hand_split("dsl"),
    "module dsl + monitors": module_arm("dsl", monitors=True),
    "module sl": module_arm("sl", monitors=False),
    "hand sl": hand_split("sl"),
    "hand end-to-end": hand_end_to_end,
}
RATIOS = (
    ("module dsl", "hand dsl"),
    ("module sl", "hand sl"),
    ("module dsl + monitors", "module dsl"),
    ("module dsl", "hand end-to-end"),
    ("module sl", "hand end-to-end"),
    ("hand dsl", "hand sl"),
)


def as_sequential(depth: int) -> tuple[nn.Sequential, int]:
    network = cifar_resnet(depth)
    units = nn.Sequential(*network.cut_units())
    return units, int(network.named_cuts()["shallow"])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=12, help="batches per arm and repeat, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "overhead")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.batches:
        parser.error(f"--warmup must be in [0, --batches), got {args.warmup} with --batches {args.batches}")
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = hardware(torch.device("cpu"))
    print("Hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)

    torch.manual_seed(0)
    network, split = as_sequential(args.depth)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, 3, 32, 32, generator=generator), torch.randint(0, 10, (args.batch_size,)))
        for _ in range(args.batches)
    ]
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    order = list(ARMS)
    for repeat in range(args.repeats):
        for arm in order if repeat % 2 == 0 else order[::-1]:
            seconds = ARMS[arm](copy.deepcopy(network), batches, split, args.warmup)
            times[arm].append(seconds)
            print(f"repeat {repeat} {arm:>22}: {seconds:.4f} s/batch", flush=True)

    lines = [
        f"ResNet-{args.depth}, batch {args.batch_size}, shallow cut (split {split}), {args.batches - args.warmup}"
        f" timed batches per arm, {args.repeats} interleaved repeats: median [min, max]",
        "",
        "| arm | s / batch |",
        "|---|---|",
        *(f"| {arm} | {spread(values)} |" for arm, values in times.items()),
        "",
        "| ratio (paired within each repeat) | median [min, max] |",
        "|---|---|",
    ]
    ratios = {}
    for over, under in RATIOS:
        values = [a / b for a, b in zip(times[over], times[under], strict=True)]
        ratios[f"{over} / {under}"] = values
        lines.append(f"| {over} / {under} | {spread(values)} |")
    verdict_value = statistics.median(ratios["module dsl / hand dsl"])
    verdict = f"module dsl / hand dsl = {verdict_value:.3f} (target <= {TARGET}): " + (
        "PASS" if verdict_value <= TARGET else "MISS"
    )
    report = "\n".join(lines)
    print("\n" + report + "\n\n" + verdict)
    hw["load_average_at_end"] = list(__import__("os").getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "hardware": hw,
        "command": " ".join(sys.argv),
        "config": {k: str(v) for k, v in vars(args).items()},
        "times": times,
        "ratios": ratios,
        "verdict": verdict,
    }
    (args.out / "overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    header = f"Command: `{results['command']}`\n\nHardware: " + ", ".join(f"{k}={v}" for k, v in hw.items())
    (args.out / "overhead.md").write_text(header + "\n\n" + report + "\n\n" + verdict + "\n")
    print(f"wrote {args.out / 'overhead.md'} and overhead.json")
    return results


if __name__ == "__main__":
    main()
