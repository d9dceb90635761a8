"""A network cut by name steps as fast as the same network hand-cut as a chain, measured side by side.

torchvision's ResNet-18 (10 classes, 32x32 inputs, CPU) is cut after ``layer2`` two ways, from the
same initial weights:

* ``by name``: ``split_network(resnet18, "layer2")``: the traced graph, one ``GraphModule`` per side;
* ``chain``: the same modules listed by hand, ``nn.Sequential(conv1, bn1, relu, maxpool, layer1, layer2)``
  and ``nn.Sequential(layer3, layer4, avgpool, Flatten(), fc)``.

Each arm runs :func:`~lightning_dsl.core.step.split_step` (the module's step, without Lightning) on
the same batches held in memory, batch by batch in turn (the order reversed on every other batch), so
a machine that slows down for a while slows every arm alike. Per repeat, an arm's time per batch is the
median over ``--batches`` batches after ``--warmup`` untimed ones, and the ratio ``by name / chain`` is
taken within the repeat. Printed: the hardware, a table (median and range over the repeats) and the verdict
against issue 19's target, a ratio of at most 1.02. A third row times a cut inside a block
(``layer2.0.conv1``: the block's input crosses with the conv's output) for reference; it has no chain
to compare with.

    python benchmarks/fx_cut_speed.py                   # batch 64, 5 repeats, about 3 min on one core
    python benchmarks/fx_cut_speed.py --mode dsl --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from benchmarks.cut_costs import hardware  # noqa: E402
from lightning_dsl.core import Cut, build_aux_head, split_network, split_step  # noqa: E402
from lightning_dsl.core.sequence import head_input  # noqa: E402

TARGET = 1.02  # issue 19: a network cut by name steps at the speed of the same network hand-cut as a chain
Batches = list[tuple[Tensor, Tensor]]


def by_name(network: nn.Module, point: str) -> tuple[nn.Module, nn.Module]:
    halves = split_network(network, point)
    return halves.client, halves.server


def chain(network: Any) -> tuple[nn.Module, nn.Module]:
    n = network
    client = nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool, n.layer1, n.layer2)
    return client, nn.Sequential(n.layer3, n.layer4, n.avgpool, nn.Flatten(1), n.fc)


class Arm:
    """One way of cutting, with its own auxiliary head, optimizers and cut: :meth:`step` times one ``split_step``."""

    def __init__(self, client: nn.Module, server: nn.Module, example: Tensor, mode: str) -> None:
        with torch.no_grad():
            z = client.eval()(example[:2])
        client.train(), server.train()
        torch.manual_seed(0)
        self.client, self.server = client, server
        self.head = build_aux_head("linear", head_input(z).shape[1:], 10)
        self.client_opt = torch.optim.SGD([*client.parameters(), *self.head.parameters()], lr=0.05, momentum=0.9)
        self.server_opt = torch.optim.SGD(server.parameters(), lr=0.05, momentum=0.9)
        self.cut, self.weight = Cut(), None if mode == "dsl" else 1.0

    def step(self, x: Tensor, y: Tensor) -> float:
        """Seconds of one step on ``(x, y)``."""
        start = time.perf_counter()
        split_step(
            self.client,
            self.server,
            self.head,
            x,
            y,
            cut=self.cut,
            client_optimizer=self.client_opt,
            server_optimizer=self.server_opt,
            feedback_weight=self.weight,
        )
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="timed batches per arm and repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    p.add_argument("--mode", choices=("sl", "dsl"), default="sl")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, 3, 32, 32, generator=generator), torch.randint(0, 10, (args.batch_size,)))
        for _ in range(args.warmup + args.batches)
    ]
    torch.manual_seed(0)
    initial = torchvision.models.resnet18(num_classes=10)
    makers = {
        "by name (layer2)": lambda net: by_name(net, "layer2"),
        "chain (layer2)": chain,
        "by name (layer2.0.conv1, skip crosses)": lambda net: by_name(net, "layer2.0.conv1"),
    }
    times: dict[str, list[float]] = {name: [] for name in makers}
    ratios = []
    for _ in range(args.repeats):
        arms = {name: Arm(*make(copy.deepcopy(initial)), batches[0][0], args.mode) for name, make in makers.items()}
        steps: dict[str, list[float]] = {name: [] for name in arms}
        # Batch by batch, the arms in turn (the order reversed every other batch): a slow spell of a shared
        # machine slows every arm alike.
        for i, (x, y) in enumerate(batches):
            for name in arms if i % 2 == 0 else reversed(arms):
                seconds = arms[name].step(x, y)
                if i >= args.warmup:
                    steps[name].append(seconds)
        for name, values in steps.items():
            times[name].append(statistics.median(values))
        ratios.append(statistics.median(steps["by name (layer2)"]) / statistics.median(steps["chain (layer2)"]))
    print(json.dumps(hardware(torch.device("cpu"))))
    print(
        f"ResNet-18, {args.mode}, batch {args.batch_size} of 3x32x32, {args.batches} timed batches after"
        f" {args.warmup} warm-up ones, {args.repeats} repeats, {args.threads} thread(s)\n"
    )
    print("| arm | ms per batch (median) | range |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(
            f"| {name} | {1000 * statistics.median(values):.1f} | {1000 * min(values):.1f}-{1000 * max(values):.1f} |"
        )
    ratio = statistics.median(ratios)
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"\nby name / chain: median {ratio:.3f} (range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)}"
        f" repeats): {verdict} the target of {TARGET}"
    )
    skip = [
        a / b for a, b in zip(times["by name (layer2.0.conv1, skip crosses)"], times["chain (layer2)"], strict=True)
    ]
    print(
        "by name at layer2.0.conv1 (the block's input crosses too) / chain at layer2: median"
        f" {statistics.median(skip):.3f} (the same traced graph with more bytes at the cut: a reading of the noise)"
    )
    figures = {
        "hardware": hardware(torch.device("cpu")),
        "times": times,
        "ratios": ratios,
        "median_ratio": ratio,
        "target": TARGET,
        "args": vars(args),
    }
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return figures


if __name__ == "__main__":
    main()
