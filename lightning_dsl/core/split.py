"""Cutting a network into a client part and a server part.

A network can be cut when it exposes an ordered list of *cut units*: the pieces that run
one after another, so that the output of unit ``k - 1`` is the input of unit ``k``.

* An :class:`torch.nn.Sequential` is cut by child index.
* Any other module can implement the :class:`Cuttable` protocol: ``cut_units()`` returns
  the units, and optionally ``named_cuts()`` maps names such as ``"shallow"`` to indices.

``split_index = k`` puts units ``[0, k)`` on the client and ``[k, n)`` on the server, so the
valid indices are ``1 .. n - 1``: both sides hold at least one unit.

Any network ``torch.fx`` can trace is also cut **by name** (:mod:`lightning_dsl.core.graph_cut`):
``split_index="layer2"`` (a submodule's qualified name, or a node name of
``torchvision.models.feature_extraction.get_graph_node_names``) puts the traced graph up to and
including that point on the client. A string ``split_index`` is read, in this order, as an integer
(``"3"``), a named cut of the network (``named_cuts()``), then a point of its traced graph.

Whatever the cut, the halves are refused when they share a parameter or a buffer (both sides would
train it); :func:`check_split_matches` checks, on an example input, that they compute the network's
own ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_dsl.core.cut_tensors import CutTensors
from lightning_dsl.core.graph_cut import TracedNetwork, cut_graph, trace_network
from lightning_dsl.core.sequence import Activation, MaskedSequence


@runtime_checkable
class Cuttable(Protocol):
    """A module that says where it can be cut (see the module docstring)."""

    def cut_units(self) -> list[nn.Module]:
        """Return the units of the network, in the order they run."""
        ...


@dataclass(frozen=True)
class SplitNetwork:
    """The two halves of a cut network: ``server(client(x)) == network(x)``.

    A network cut by name has one unit on each side (a ``GraphModule`` each); ``split_index`` is then
    the position of its point among the network's cuttable points (:func:`graph_points`), ``num_units``
    their number plus one, as if each point were the end of a unit; ``point`` is the name it was cut at.
    """

    client: nn.Sequential
    server: nn.Sequential
    split_index: int
    num_units: int
    point: str | None = None


def cut_units(network: nn.Module) -> list[nn.Module]:
    """Return the ordered cut units of ``network``.

    Raises:
        TypeError: if ``network`` is neither an ``nn.Sequential`` nor implements ``cut_units()``.
    """
    if isinstance(network, nn.Sequential):
        return list(network)  # not children(), which skips a module listed twice: the chain would skip a call
    if isinstance(network, Cuttable):
        return list(network.cut_units())
    raise TypeError(
        f"Expected argument `network` to be an `nn.Sequential` or a module with a `cut_units()` method that"
        f" returns its units in order, but got `{type(network).__name__}`, which has neither. Wrap your layers"
        " in `nn.Sequential(...)` or implement `cut_units()` (see docs/user_guide.md, 'Networks that can be cut'),"
        " or cut it by name: `split_index` the qualified name of a submodule, such as 'layer2' (see 'Any network,"
        " cut by name')."
    )


def named_cuts(network: nn.Module) -> dict[str, int]:
    """Return the named cut points of ``network`` (empty when it defines none)."""
    method = getattr(network, "named_cuts", None)
    return dict(method()) if callable(method) else {}


def resolve_split_index(network: nn.Module, split_index: int | str) -> int:
    """Turn ``split_index`` (an index or a cut name) into a validated integer index.

    Raises:
        ValueError: for an index outside ``1 .. num_units - 1``, an unknown cut name, or a network
            with fewer than 2 cut units.
        TypeError: for a ``split_index`` that is neither an int nor a string.
    """
    units = cut_units(network)
    if len(units) < 2:
        raise ValueError(
            f"Expected argument `network` to have at least 2 cut units (one per side), but this"
            f" {type(network).__name__} has {len(units)}: add layers, or list finer units in `cut_units()`."
        )
    names = named_cuts(network)
    if isinstance(split_index, str):
        if split_index.lstrip("-").isdigit():
            split_index = int(split_index)
        elif split_index in names:
            split_index = names[split_index]
        else:
            allowed = f"one of {sorted(names)} or an integer" if names else "an integer (this network names no cuts)"
            raise ValueError(
                f"Expected argument `split_index` to be {allowed} in [1, {len(units) - 1}], but got {split_index!r}."
            )
    if isinstance(split_index, bool) or not isinstance(split_index, int):
        raise TypeError(f"Expected argument `split_index` to be an int or a cut name, but got {split_index!r}.")
    if not 1 <= split_index <= len(units) - 1:
        named = f" or one of {sorted(names)}" if names else ""
        raise ValueError(
            f"Expected argument `split_index` to be in [1, {len(units) - 1}]{named} for this"
            f" {type(network).__name__} with {len(units)} cut units (both sides need at least one unit),"
            f" but got {split_index}."
        )
    return split_index


def split_network(network: nn.Module, split_index: int | str) -> SplitNetwork:
    """Cut ``network`` into client units ``[0, k)`` and server units ``[k, n)``, or at a named point of its graph.

    The halves share parameters with ``network`` (no copy), so weights loaded into the
    network before the cut are the weights both sides start from.

    Raises:
        ValueError: for a bad ``split_index`` (see :func:`resolve_split_index`), a network ``torch.fx`` cannot
            trace when cut by name, or halves that share a parameter or a buffer.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> halves = split_network(net, 2)
        >>> x = torch.randn(5, 4)
        >>> torch.equal(halves.server(halves.client(x)), net(x))
        True
    """
    traced = _by_name(network, split_index)
    if traced is not None:
        assert isinstance(split_index, str)
        halves = _split_graph(traced, split_index)
    else:
        units = cut_units(network)
        index = resolve_split_index(network, split_index)
        halves = SplitNetwork(
            client=nn.Sequential(*units[:index]),
            server=nn.Sequential(*units[index:]),
            split_index=index,
            num_units=len(units),
        )
    if halves.point is not None:  # names as in the network
        check_nothing_shared(halves.client[0], halves.server[0])
    else:  # names as in the network's units: a unit's index, then the name inside it
        check_nothing_shared(halves.client, halves.server, server_offset=halves.split_index)
    return halves


def graph_points(network: nn.Module | TracedNetwork) -> list[str]:
    """The points ``network`` can be cut at by name, in the graph's order: one name per position.

    A position reached by several names is listed under the outermost module that ends there (``"layer2"``
    rather than ``"layer2.1.relu_1"``); every name of :attr:`TracedNetwork.points` is accepted.

    Raises:
        ValueError: when ``torch.fx`` cannot trace the network.
    """
    traced = network if isinstance(network, TracedNetwork) else trace_network(network)
    last = max(traced.points.values(), default=-1)
    # Both sides need an operation: the graph's last operation leaves the server nothing to do.
    return [name for name in traced.point_names() if traced.points[name] != last]


def _by_name(network: nn.Module, split_index: int | str) -> TracedNetwork | None:
    """The traced network when ``split_index`` names a point of its graph; ``None`` for the other kinds of cut."""
    if not isinstance(split_index, str) or split_index.lstrip("-").isdigit():
        return None
    chain = isinstance(network, (nn.Sequential, Cuttable))
    if chain and split_index in named_cuts(network):
        return None
    try:
        traced = trace_network(network)
    except ValueError:
        if chain:  # a chain refuses an unknown name exactly as it always did (resolve_split_index)
            return None
        raise
    if split_index in traced.points:
        return traced
    if chain:
        return None
    points = graph_points(traced)
    shown = points if len(points) <= 12 else [*points[:6], "...", *points[-6:]]
    raise ValueError(
        f"Expected argument `split_index` to be the name of a point of this {type(network).__name__}'s graph (a"
        f" submodule's qualified name, or a node name of torchvision's `get_graph_node_names`), one of {shown}"
        f" ({len(points)} points; `lightning-dsl cuts` lists them all), but got {split_index!r}."
    )


def _split_graph(traced: TracedNetwork, point: str) -> SplitNetwork:
    points = graph_points(traced)
    positions = [traced.points[name] for name in points]
    position = traced.points[point]
    if position not in positions:
        raise ValueError(
            f"Expected argument `split_index` to be a point with work on both sides, but {point!r} ends the graph of"
            f" this {type(traced.network).__name__}: the server would have nothing to compute. Cut earlier, e.g. at"
            f" {points[-1]!r}."
        )
    client, server = cut_graph(traced, point)
    return SplitNetwork(
        client=nn.Sequential(client),
        server=nn.Sequential(server),
        split_index=positions.index(position) + 1,
        num_units=len(points) + 1,
        point=point,
    )


def check_nothing_shared(client: nn.Module, server: nn.Module, server_offset: int = 0) -> None:
    """Refuse halves that share a parameter or a buffer: each side's optimizer would train it.

    ``server_offset``: for halves that are ``nn.Sequential`` s of units, the index of the server's first
    unit, so that a name says which unit of the network holds the tensor (``"4.weight"``).

    Raises:
        ValueError: naming the shared tensor on both sides.
    """
    owners: dict[int, str] = {}
    for name, tensor in _state(client):
        owners.setdefault(id(tensor), name)
    for name, tensor in _state(server):
        if server_offset:
            index, _, rest = name.partition(".")
            name = f"{int(index) + server_offset}.{rest}"
        if id(tensor) in owners:
            raise ValueError(
                f"Cannot cut the network here (argument `split_index`): the client and the server would both own"
                f" `{owners[id(tensor)]}` (on the server: `{name}`), a tensor of {tuple(tensor.shape)} that both sides"
                " would train. Cut where each parameter and buffer belongs to one side, or untie it."
            )


def _state(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    yield from module.named_parameters(remove_duplicate=True)
    yield from module.named_buffers(remove_duplicate=True)


# ---------------------------------------------------------------------------------------------- check on an input
@torch.no_grad()
def check_split_matches(network: nn.Module, halves: SplitNetwork, example_input: Activation) -> None:
    """Refuse halves that, chained, do not compute ``network``'s own ``forward`` on ``example_input``.

    Runs in evaluation mode (no BatchNorm statistic moves, no dropout) and restores the modes. For a
    network cut into units (an ``nn.Sequential`` or ``cut_units()``), a mismatch names the first unit
    whose output differs from what the network's forward gives it.

    Args:
        network: the network that was cut (the one given to :func:`split_network`).
        halves: what :func:`split_network` returned for it.
        example_input: a batch of inputs (``example_inputs(halves.client[0], input_shape, 2, ...)``).

    Raises:
        ValueError: naming the unit (or the point) where the halves part from the network.
    """
    modules = (network, halves.client, halves.server)
    modes = [[m.training for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        expected = network(example_input)
        got = halves.server(halves.client(example_input))
        if _same(got, expected):
            return
        if halves.point is not None:
            raise ValueError(
                f"Cannot cut `{type(network).__name__}` at {halves.point!r} (argument `split_index`): the traced"
                " halves, chained, do not compute the network's forward on an example input"
                f" ({_difference(got, expected)})."
                " Its forward may depend on something the trace froze (a Python value, a global): cut it as an"
                " `nn.Sequential` or with `cut_units()`."
            )
        raise ValueError(_first_difference(network, [*halves.client, *halves.server], example_input, got, expected))
    finally:
        for module, mode in zip(modules, modes, strict=True):
            for submodule, training in zip(module.modules(), mode, strict=True):
                submodule.training = training


def _first_difference(network: nn.Module, units: list[nn.Module], x: Activation, got: Any, expected: Any) -> str:
    seen: dict[int, Any] = {}
    hooks = [unit.register_forward_hook(lambda m, _, out, i=i: seen.setdefault(i, out)) for i, unit in enumerate(units)]
    try:
        network(x)
    finally:
        for hook in hooks:
            hook.remove()
    head = (
        f"The units of `{type(network).__name__}` (argument `network`: its `cut_units()`, or its layers), chained,"
        f" do not compute its own forward on an example input ({_difference(got, expected)})"
    )
    out = x
    for i, unit in enumerate(units):
        out = unit(out)
        if i in seen and not _same(out, seen[i]):
            return (
                f"{head}: unit {i} ({type(unit).__name__}) is the first whose output differs from its output in the"
                f" network's forward. List the units exactly as `forward` runs them, or cut the network by name."
            )
    return (
        f"{head}: every unit the forward calls gives the same output, so the forward does something the units do"
        " not (an operation between units, or a unit it never calls). List the units exactly as `forward` runs"
        " them, or cut the network by name."
    )


def _flat(value: Any) -> list[Any]:
    if isinstance(value, MaskedSequence):
        return [value.values, value.mask]
    if isinstance(value, CutTensors):
        return list(value.tensors)
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flat(value[k])]
    return [value]


def _same(a: Any, b: Any) -> bool:
    left, right = _flat(a), _flat(b)
    if len(left) != len(right):
        return False
    for x, y in zip(left, right, strict=True):
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if x.is_floating_point():
                if not torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True):
                    return False
            elif not torch.equal(x, y):
                return False
        elif isinstance(x, Tensor) or isinstance(y, Tensor) or x != y:
            return False
    return True


def _difference(got: Any, expected: Any) -> str:
    left, right = _flat(got), _flat(expected)
    if len(left) == len(right) == 1 and isinstance(left[0], Tensor) and isinstance(right[0], Tensor):
        x, y = left[0], right[0]
        if x.shape != y.shape:
            return f"output of shape {tuple(x.shape)}, the network's {tuple(y.shape)}"
        if x.is_floating_point() and y.is_floating_point():
            return f"largest difference {float((x.float() - y.float()).abs().max()):.3g}"
    return "different outputs"
