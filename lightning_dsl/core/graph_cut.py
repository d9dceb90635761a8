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

NAME = "lightning_dsl_name"
"""The key of a node's ``meta`` that holds its point name (as ``get_graph_node_names`` gives it)."""

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
    def network_name(self) -> str:
        """The class name of the network (of the one the halves were cut from, after :func:`rejoin`)."""
        return str(self.graph_module.meta.get("network", type(self.network).__name__))

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
    modes = [m.training for m in network.modules()]  # each module's own: a frozen BatchNorm stays in eval
    try:
        graphs = []
        for mode in (True, False):
            network.train(mode)
            graphs.append(_trace(network))
    finally:
        for module, training in zip(network.modules(), modes, strict=True):
            module.training = training
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
    for node, name in names.items():
        node.meta[NAME] = name  # copied with the node into each half, so the halves can be rejoined
    graph_module = fx.GraphModule(network, graph, class_name=type(network).__name__)
    return TracedNetwork(network, graph_module, names, _points(network, list(graph.nodes), names))


def cut_graph(traced: TracedNetwork, point: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The client and server halves of ``traced`` cut after ``point`` (a key of :attr:`TracedNetwork.points`)."""
    client, server = cut_segments(traced, [point])
    return client, server


def cut_segments(traced: TracedNetwork, points: list[str]) -> list[fx.GraphModule]:
    """``traced`` cut after each of ``points`` (in the graph's order): ``len(points) + 1`` modules in a chain.

    The first takes the network's input; each returns what the rest of the graph needs of what was computed so
    far (one tensor, or :class:`~lightning_dsl.core.cut_tensors.CutTensors`, the point's output first), which
    the next one takes. With one point: the client and the server halves.
    """
    nodes = traced.nodes
    index = {node: i for i, node in enumerate(nodes)}
    positions = [traced.points[point] for point in points]
    if positions != sorted(set(positions)):
        raise ValueError(f"Expected points in the graph's order, each at its own position, got {points}.")
    listed = {traced.points[name]: name for name in traced.point_names()}
    segments = []
    received: list[fx.Node] = []  # what the segment being built takes, in order
    start = 0
    for point, position in [*zip(points, positions, strict=True), (None, len(nodes) - 1)]:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if received:
            cut = graph.placeholder("cut")
            for i, node in enumerate(received):
                env[node] = cut if len(received) == 1 else graph.call_function(operator.getitem, (cut, i))
        for node in nodes[start : position + 1]:
            if node.op != "get_attr" and (node.op != "output" or point is None):
                env[node] = graph.node_copy(node, _mapper(graph, env))
        if point is not None:
            main = nodes[position]
            crossing = [main] + [
                node
                for node in nodes[: position + 1]
                if node is not main and node.op != "get_attr" and any(index[user] > position for user in node.users)
            ]
            # Each tensor by the name the point list gives its position (the outermost module that ends there),
            # the point's own output by the name it was cut at.
            names = (point, *(listed.get(index[n], traced.node_names.get(n, n.name)) for n in crossing[1:]))
            graph.output(graph.call_function(pack_cut, (tuple(env[n] for n in crossing), names, point)))
            received = crossing
        graph._tracer_cls = HalfTracer  # how a pickled half is traced again when it is loaded
        segments.append(graph)
        start = position + 1
    root = traced.graph_module
    if len(segments) == 2:
        modules = [fx.GraphModule(root, segments[0], "ClientHalf"), fx.GraphModule(root, segments[1], "ServerHalf")]
    else:
        modules = [fx.GraphModule(root, graph, f"Segment{i}") for i, graph in enumerate(segments)]
    for module in modules:
        module.meta["network"] = traced.network_name  # what the network was, for the planner's table
    return modules


def is_graph_half(module: nn.Module) -> bool:
    """Whether ``module`` is a half (or a segment) made by :func:`cut_segments`."""
    return isinstance(module, fx.GraphModule) and "network" in module.meta


def rejoin(client: fx.GraphModule, server: fx.GraphModule) -> TracedNetwork:
    """The traced network that two halves of :func:`cut_graph` were cut from (its points named as before)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    crossing: list[fx.Node] = []
    for node in client.graph.nodes:
        if node.op == "output":
            (packed,) = node.args
            crossing = [env[n] for n in packed.args[0]]
        elif not (node.op == "call_function" and node.target is pack_cut):
            env[node] = graph.node_copy(node, env.__getitem__)
    for node in server.graph.nodes:
        if node.op == "placeholder":
            env[node] = crossing[0]
        elif node.op == "call_function" and node.target is operator.getitem and node.args[0].op == "placeholder":
            env[node] = crossing[node.args[1]]
        else:
            env[node] = graph.node_copy(node, env.__getitem__)
    root: dict[str, Any] = {}
    for half in (client, server):
        for node in half.graph.nodes:
            if node.op in ("call_module", "get_attr"):
                root[str(node.target)] = _attribute(half, str(node.target))
    network = fx.GraphModule(root, graph, "Rejoined")
    network.meta["network"] = client.meta.get("network", "network")
    names = {node: node.meta[NAME] for node in graph.nodes if NAME in node.meta}
    return TracedNetwork(network, network, names, _points(network, list(graph.nodes), names))


def tensor_points(traced: TracedNetwork, example_input: Any) -> list[str]:
    """The points of ``traced`` (as :meth:`TracedNetwork.point_names` lists them) where only tensors would cross.

    Runs the graph once on ``example_input`` in evaluation mode, without gradients, to see which values are
    tensors: a cut that would send a shape, a number or a tuple to the server is left out.
    """
    module = traced.graph_module
    was_training = [m.training for m in module.modules()]
    is_tensor: dict[fx.Node, bool] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            is_tensor[n] = isinstance(out, torch.Tensor)
            return out

    module.eval()
    try:
        with torch.no_grad():
            Recorder(module).run(example_input)
    finally:
        for m, training in zip(module.modules(), was_training, strict=True):
            m.training = training
    nodes = traced.nodes
    index = {node: i for i, node in enumerate(nodes)}
    last = max(traced.points.values(), default=-1)
    kept = []
    for name in traced.point_names():
        position = traced.points[name]
        crossing = [
            node
            for node in nodes[: position + 1]
            if node.op != "get_attr" and (node is nodes[position] or any(index[u] > position for u in node.users))
        ]
        if position != last and all(is_tensor.get(node, False) for node in crossing):
            kept.append(name)
    return kept


def _attribute(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


class HalfTracer(fx.Tracer):
    """The tracer that rebuilds a pickled segment from its code: :func:`pack_cut` and torchvision's ops stay calls."""

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
