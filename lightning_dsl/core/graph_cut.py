"""Cutting any network that ``torch.fx`` can trace, at a point named the way users know.

The network is traced once (:func:`trace_network`) with torchvision's ``NodePathTracer``, the
tracer behind ``torchvision.models.feature_extraction.get_graph_node_names``, so the points of the
graph have the names users already use there: ``"layer2.0.conv1"``, ``"layer1.0.add"``,
``"features.4"``, ``"encoder.layers.encoder_layer_1"``. A point is one of

* a **node name** of that tracer (each names one operation or one call of a leaf module), or
* the **qualified name of a submodule** (``"layer2"``, ``"features.4"``) that is no node name: it
  names the last operation the module runs.

Cutting at a point (:func:`cut_graph`) gives two ``GraphModule`` s over the network's own
submodules (no copy): the client runs the graph up to and including the point, in the graph's
order; the server runs the rest. Whatever the server needs from the client crosses: the point's
output and, when the cut lies inside a skip connection, every other value computed before it and
used after it, together as :class:`~lightning_dsl.core.cut_tensors.CutTensors` (the point's output
first). A parameter the graph reads directly (``get_attr``: a ViT's class token) goes to the side
that reads it.
"""

from __future__ import annotations

import math
import operator
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from lightning_dsl.core.cut_tensors import pack_cut

OTHER_WAYS = (
    "Other ways to cut it: pass an `nn.Sequential` of its layers, or give the network a `cut_units()` method"
    " that returns its units in order (see docs/user_guide.md, 'Networks that can be cut')."
)


@dataclass(frozen=True)
class TracedNetwork:
    """A network's traced graph and its named points.

    Attributes:
        network: the network that was traced.
        graph_module: the traced graph over the network's submodules.
        node_names: each node's name, as ``get_graph_node_names`` gives it.
        points: every name a cut accepts, with the position (in ``graph.nodes``) of the node it ends after.
    """

    network: nn.Module
    graph_module: fx.GraphModule
    node_names: dict[fx.Node, str]
    points: dict[str, int]

    @property
    def nodes(self) -> list[fx.Node]:
        """The graph's nodes, in order."""
        return list(self.graph_module.graph.nodes)

    def point_names(self) -> list[str]:
        """One name per cuttable position, in the graph's order: the outermost module that ends there, else the node.

        Positions that are not worth a cut (right after a placeholder or a ``get_attr``) are left out.
        """
        by_position: dict[int, str] = {}
        for name, position in self.points.items():
            best = by_position.get(position)
            if best is None or (name.count("."), len(name)) < (best.count("."), len(best)):
                by_position[position] = name
        return [by_position[p] for p in sorted(by_position)]


def trace_network(network: nn.Module) -> TracedNetwork:
    """Trace ``network`` with ``torch.fx`` and name its points (see the module docstring).

    The network is traced in training and in evaluation mode: a ``forward`` whose graph depends on
    the mode cannot be cut by name, since the trace freezes one of them.

    Raises:
        ValueError: when ``torch.fx`` cannot trace it (naming the first call it cannot trace and the other
            ways in), when its forward takes more than one input, or when its graph depends on the mode.
    """
    was_training = network.training
    try:
        graphs = []
        for mode in (True, False):
            network.train(mode)
            graphs.append(_trace(network))
    finally:
        network.train(was_training)
    (graph, names), (eval_graph, _) = graphs
    signature = [(n.op, str(n.target)) for n in graph.nodes]
    if signature != [(n.op, str(n.target)) for n in eval_graph.nodes]:
        raise ValueError(
            f"Cannot cut `{type(network).__name__}` by name (argument `split_index`): its traced graph differs between"
            " training and evaluation (its forward branches on `self.training`), and a trace freezes one of them. "
            + OTHER_WAYS
        )
    inputs = [n for n in graph.nodes if n.op == "placeholder" and not n.args]  # args: a default value
    if len(inputs) != 1:
        raise ValueError(
            f"Cannot cut `{type(network).__name__}` by name (argument `split_index`): its forward takes"
            f" {len(inputs)} inputs without defaults ({[n.name for n in inputs]}), and a client half takes one. "
            + OTHER_WAYS
        )
    graph_module = fx.GraphModule(network, graph, class_name=type(network).__name__)
    return TracedNetwork(network, graph_module, names, _points(network, list(graph.nodes), names))


def cut_graph(traced: TracedNetwork, point: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The client and server halves of ``traced`` cut after ``point`` (a key of :attr:`TracedNetwork.points`)."""
    nodes = traced.nodes
    position = traced.points[point]
    index = {node: i for i, node in enumerate(nodes)}
    main = nodes[position]
    crossing = [main] + [
        node
        for node in nodes[: position + 1]
        if node is not main and node.op != "get_attr" and any(index[user] > position for user in node.users)
    ]
    # Each tensor by the name the point list gives its position (the outermost module that ends there), the
    # point's own output by the name it was cut at.
    listed = {traced.points[name]: name for name in traced.point_names()}
    names = (point, *(listed.get(index[node], traced.node_names.get(node, node.name)) for node in crossing[1:]))

    client_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: position + 1]:
        if node.op != "get_attr":
            env[node] = client_graph.node_copy(node, _mapper(client_graph, env))
    client_graph.output(client_graph.call_function(pack_cut, (tuple(env[n] for n in crossing), names, point)))

    server_graph = fx.Graph()
    env = {}
    received = server_graph.placeholder("cut")
    for i, node in enumerate(crossing):
        env[node] = received if len(crossing) == 1 else server_graph.call_function(operator.getitem, (received, i))
    for node in nodes[position + 1 :]:
        if node.op != "get_attr":
            env[node] = server_graph.node_copy(node, _mapper(server_graph, env))
    root = traced.graph_module
    for graph in (client_graph, server_graph):
        graph._tracer_cls = HalfTracer  # how a pickled half is traced again when it is loaded
    return (
        fx.GraphModule(root, client_graph, class_name="ClientHalf"),
        fx.GraphModule(root, server_graph, class_name="ServerHalf"),
    )


class HalfTracer(fx.Tracer):
    """The tracer that rebuilds a pickled half from its code: :func:`pack_cut` and torchvision's ops stay calls."""

    def __init__(self) -> None:
        import torchvision

        super().__init__(autowrap_modules=(math, torchvision.ops), autowrap_functions=(pack_cut,))  # type: ignore[arg-type]


def _mapper(graph: fx.Graph, env: dict[fx.Node, fx.Node]) -> Callable[[fx.Node], fx.Node]:
    """Map a node's inputs into ``graph``: computed ones from ``env``, a parameter read (``get_attr``) read afresh."""

    def mapped(node: fx.Node) -> fx.Node:
        if node not in env:
            assert node.op == "get_attr", f"node {node.name} is used before it is computed"
            env[node] = graph.node_copy(node)
        return env[node]

    return mapped


# ---------------------------------------------------------------------------------------------- tracing
def _trace(network: nn.Module) -> tuple[fx.Graph, dict[fx.Node, str]]:
    from torchvision.models.feature_extraction import NodePathTracer

    class Tracer(NodePathTracer):  # type: ignore[misc]
        """NodePathTracer that remembers the innermost module it was in when tracing failed."""

        failed_in: tuple[str, nn.Module] | None = None

        def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
            try:
                return super().call_module(m, forward, args, kwargs)
            except Exception:
                if self.failed_in is None:
                    self.failed_in = (self.path_of_module(m), m)
                raise

    import torchvision

    tracer = Tracer(autowrap_modules=(math, torchvision.ops))
    try:
        graph = tracer.trace(network)
    except Exception as err:
        raise ValueError(_untraceable(network, tracer.failed_in, err)) from err
    return graph, dict(tracer.node_to_qualname)


def _untraceable(network: nn.Module, failed_in: tuple[str, nn.Module] | None, err: Exception) -> str:
    where = f"`{type(network).__name__}.forward`"
    if failed_in is not None and failed_in[0]:
        where = f"module `{failed_in[0]}` ({type(failed_in[1]).__name__})"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f"{torch.__name__}/fx" not in f.filename]
    line = f" at {frames[-1].filename}:{frames[-1].lineno}: `{(frames[-1].line or '').strip()}`" if frames else ""
    return (
        f"Cannot cut `{type(network).__name__}` by name (argument `split_index`): torch.fx cannot trace it. The first"
        f" call it cannot trace is in {where}{line}: {type(err).__name__}: {err}. " + OTHER_WAYS
    )


def _points(network: nn.Module, nodes: list[fx.Node], names: dict[fx.Node, str]) -> dict[str, int]:
    """Node names, then the submodules that are no node name (each ends at its last node)."""
    points: dict[str, int] = {}
    modules: dict[str, int] = {}
    submodules = {name for name, _ in network.named_modules() if name}
    for position, node in enumerate(nodes):
        if node.op in ("placeholder", "output", "get_attr") or node not in names:
            continue
        name = names[node]
        points[name] = position
        scope = str(node.target) if node.op == "call_module" else name.rpartition(".")[0]
        parts = scope.split(".") if scope else []
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            if module in submodules:
                modules[module] = position
    for module, position in modules.items():
        points.setdefault(module, position)
    return points
