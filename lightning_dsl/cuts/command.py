"""``lightning-dsl cuts --config <yaml>``: every possible cut of the configured network, with its costs.

The same config (and overrides) a ``fit`` would use builds the network, the codecs, the auxiliary
head and the batch; :func:`~lightning_dsl.cuts.costs.plan_cuts` measures each unit once on one batch
of that size and derives every cut. Output: a markdown table (default), ``--csv`` or ``--json``, the
recommendations below the table, and ``--plot FILE`` (a PNG of bytes and memory per cut).

    lightning-dsl cuts --config configs/cifar10_resnet110.yaml
    lightning-dsl cuts --config configs/quickstart.yaml --bandwidth-mbps 100 --latency-ms 20 --client-memory-mib 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsl.cli import build
from lightning_dsl.core.graph_cut import cut_segments, is_graph_half, rejoin, tensor_points
from lightning_dsl.core.heads import HEADS, build_aux_head
from lightning_dsl.core.sequence import MaskedSequence, example_inputs, values_of
from lightning_dsl.cuts.costs import LinkSpeed, plan_cuts
from lightning_dsl.cuts.report import markdown, plot, recommend, to_csv, to_json

USAGE = "lightning-dsl cuts --config CONFIG [--model.init_args.X=...] [options]"


def parser() -> argparse.ArgumentParser:
    """The planner's own options; everything else goes to the training CLI (``--config``, overrides)."""
    p = argparse.ArgumentParser(
        prog="lightning-dsl cuts",
        usage=USAGE,
        description="Every possible cut of the configured network, with its costs (the config and overrides of a fit).",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print the table as CSV")
    out.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE", help="write a PNG of bytes and memory per cut")
    p.add_argument("--bandwidth-mbps", type=float, help="estimate sl and dsl time per batch over this link")
    p.add_argument("--latency-ms", type=float, default=0.0, help="the link's one-way latency (default 0)")
    p.add_argument("--client-memory-mib", type=float, help="find the deepest cut whose client fits this budget")
    p.add_argument("--batch-size", type=int, help="batch size (default: the data module's)")
    p.add_argument("--input-shape", type=int, nargs="+", metavar="N", help="one sample's shape, e.g. 3 32 32")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the planner on ``argv`` (default ``sys.argv[2:]``: the arguments after ``cuts``); print and return 0."""
    cli_parser = parser()
    args, rest = cli_parser.parse_known_args(sys.argv[2:] if argv is None else argv)
    if not any(arg.startswith(("--config", "--model")) for arg in rest):
        cli_parser.error("pass --config CONFIG: the config a `lightning-dsl fit` would use (overrides may follow)")
    _check(args)
    cli = build(rest)
    model, data = cli.model, cli.datamodule
    shape = _input_shape(args, model, data)
    batch = args.batch_size or getattr(data, "batch_size", None)
    if not batch:
        raise SystemExit(
            "lightning-dsl cuts: cannot tell the batch size: pass --batch-size N, or use a data module with a"
            " `batch_size` argument."
        )
    device = cli.trainer.strategy.root_device
    parameter = next(model.parameters())
    inputs = example_inputs(model.client[0], shape, batch, device, parameter.dtype)
    if isinstance(inputs, Tensor) and inputs.is_floating_point():
        inputs = torch.randn_like(inputs)  # costs depend on shapes; random values keep every code path realistic
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    model.to(device).train()
    units, names, current = _units(model, inputs)
    spec = model.hparams.get("aux_head", "linear")
    head_note = ""
    if not isinstance(spec, str) or spec not in HEADS:
        spec, head_note = "linear", " (the configured head is a module: a linear head stands in at every cut)"
    options = dict(model.hparams.get("aux_head_kwargs") or {})
    link = LinkSpeed(args.bandwidth_mbps, args.latency_ms) if args.bandwidth_mbps else None
    plans = plan_cuts(
        units,
        inputs,
        labels,
        lambda z: build_aux_head(
            spec, values_of(z).shape[1:], model.num_classes, **options, sequence=isinstance(z, MaskedSequence)
        ).to(device, parameter.dtype),
        criterion=model.criterion,
        codec=model.cut.codec,
        grad_codec=model.cut.grad_codec,
        names=names,
        link=link,
    )
    try:
        advice = recommend(plans, args.client_memory_mib)
    except ValueError as err:
        raise SystemExit(f"lightning-dsl cuts: {err}") from err
    network = model.hparams.get("network")
    name = network if isinstance(network, str) else _network_name(model)
    context = {
        "network": name,
        "units": len(units),
        "batch_size": batch,
        "input_shape": list(shape),
        "device": str(device),
        "codec": model.cut.codec.name,
        "grad_codec": model.cut.grad_codec.name,
        "aux_head": spec,
        "link": None if link is None else {"bandwidth_mbps": link.bandwidth_mbps, "latency_ms": link.latency_ms},
    }
    header = (
        f"Cuts of {name} ({len(units)} units), batch {batch} of {tuple(shape)} on {device}, codec {context['codec']},"
        f" aux head {spec}{head_note}. FLOPs and bytes per sample; saved activations and seconds per batch"
        " (c, s: one forward + backward per side)."
    )
    if args.json:
        print(to_json(plans, advice, context))
    elif args.csv:
        print(to_csv(plans, current), end="")
    else:
        print(markdown(plans, advice, header, current))
    if args.plot is not None:
        plot(plans, args.plot, f"{name}, batch {batch}, codec {context['codec']}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _units(model: Any, inputs: Any) -> tuple[list[nn.Module], dict[str, int], int]:
    """The units to measure, the names of the cuts between them, and the index of the configured cut.

    A network cut by name is measured at every point of its graph where only tensors cross, each point named:
    the halves are joined again and cut at all of them (:func:`~lightning_dsl.core.graph_cut.cut_segments`).
    """
    client, server = list(model.client), list(model.server)
    if not (len(client) == len(server) == 1 and is_graph_half(client[0])):
        return [*client, *server], getattr(model, "cut_names", {}), model.split_index
    traced = rejoin(client[0], server[0])
    with torch.no_grad():
        points = tensor_points(traced, inputs[:2])
    configured = traced.points.get(str(model.hparams.get("split_index")))
    current = next((k for k, p in enumerate(points, start=1) if traced.points[p] == configured), 0)
    units: list[nn.Module] = list(cut_segments(traced, points))
    return units, {p: k for k, p in enumerate(points, start=1)}, current


def _network_name(model: Any) -> str:
    first = model.client[0]
    return f"{first.meta['network']} (cut by name)" if is_graph_half(first) else type(first).__name__ + "…"


def _check(args: argparse.Namespace) -> None:
    for name in ("bandwidth_mbps", "client_memory_mib", "batch_size"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SystemExit(f"lightning-dsl cuts: argument --{name.replace('_', '-')} must be > 0, got {value}.")
    if args.latency_ms < 0:
        raise SystemExit(f"lightning-dsl cuts: argument --latency-ms must be >= 0, got {args.latency_ms}.")
    if args.input_shape is not None and any(n < 1 for n in args.input_shape):
        raise SystemExit(f"lightning-dsl cuts: argument --input-shape must be positive sizes, got {args.input_shape}.")


def _input_shape(args: argparse.Namespace, model: Any, data: Any) -> tuple[int, ...]:
    shape = args.input_shape or model.input_shape or getattr(data, "input_shape", None)
    if shape is None:
        raise SystemExit(
            "lightning-dsl cuts: cannot tell the input shape: pass --input-shape with one sample's shape (e.g."
            " --input-shape 3 32 32), or --model.init_args.input_shape=[3,32,32], or use a data module with an"
            " `input_shape` attribute."
        )
    return tuple(int(n) for n in shape)
