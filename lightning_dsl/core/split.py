"""Cutting a network into a client part and a server part.

A network can be cut when it exposes an ordered list of *cut units*: the pieces that run
one after another, so that the output of unit ``k - 1`` is the input of unit ``k``.

* An :class:`torch.nn.Sequential` is cut by child index.
* Any other module can implement the :class:`Cuttable` protocol: ``cut_units()`` returns
  the units, and optionally ``named_cuts()`` maps names such as ``"shallow"`` to indices.

``split_index = k`` puts units ``[0, k)`` on the client and ``[k, n)`` on the server, so the
valid indices are ``1 .. n - 1``: both sides hold at least one unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class Cuttable(Protocol):
    """A module that says where it can be cut (see the module docstring)."""

    def cut_units(self) -> list[nn.Module]:
        """Return the units of the network, in the order they run."""
        ...


@dataclass(frozen=True)
class SplitNetwork:
    """The two halves of a cut network: ``server(client(x)) == network(x)``."""

    client: nn.Sequential
    server: nn.Sequential
    split_index: int
    num_units: int


def cut_units(network: nn.Module) -> list[nn.Module]:
    """Return the ordered cut units of ``network``.

    Raises:
        TypeError: if ``network`` is neither an ``nn.Sequential`` nor implements ``cut_units()``.
    """
    if isinstance(network, nn.Sequential):
        return list(network.children())
    if isinstance(network, Cuttable):
        return list(network.cut_units())
    raise TypeError(
        f"Expected argument `network` to be an `nn.Sequential` or a module with a `cut_units()` method that"
        f" returns its units in order, but got `{type(network).__name__}`, which has neither. Wrap your layers"
        " in `nn.Sequential(...)` or implement `cut_units()` (see docs/user_guide.md, 'Networks that can be cut')."
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
    """Cut ``network`` into client units ``[0, k)`` and server units ``[k, n)``.

    The halves share parameters with ``network`` (no copy), so weights loaded into the
    network before the cut are the weights both sides start from.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> halves = split_network(net, 2)
        >>> x = torch.randn(5, 4)
        >>> torch.equal(halves.server(halves.client(x)), net(x))
        True
    """
    units = cut_units(network)
    index = resolve_split_index(network, split_index)
    return SplitNetwork(
        client=nn.Sequential(*units[:index]),
        server=nn.Sequential(*units[index:]),
        split_index=index,
        num_units=len(units),
    )
