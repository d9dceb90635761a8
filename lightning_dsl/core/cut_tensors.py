"""Several tensors at the cut: what a network cut inside a skip connection sends to the server.

A network cut by name (:mod:`lightning_dsl.core.graph_cut`) sends the server everything it needs
from the client. Usually that is one tensor, the named module's output. When the cut lies inside a
skip connection (a residual block, a U-Net's encoder, an encoder-decoder), the server also needs
tensors computed before it: :class:`CutTensors` carries them together, the named module's output
first (:attr:`CutTensors.main`, the one the auxiliary head takes).

At the cut each floating-point tensor goes through the codec and, with feedback, gets its gradient
back; any other tensor (a ``bool`` mask, integer indices) crosses exact and gets none. Every tensor is
counted in the bytes (:class:`~lightning_dsl.core.cut.Cut`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class CutTensors:
    """The tensors that cross the cut, the named module's output first.

    Args:
        tensors: the tensors, ``tensors[0]`` the output of the module the cut is named after.
        names: a name per tensor (the graph node it is the value of), for messages; may be empty.

    Lightning moves it to the device like a tensor (``to``), and its ``shape``, ``device`` and ``dtype``
    are the main tensor's, so code that asks an activation for its batch size or device works unchanged.

    Example::

        >>> z = CutTensors((torch.ones(2, 4), torch.zeros(2, 3)), ("layer1.0.conv1", "maxpool"))
        >>> tuple(z.shape), len(z), [tuple(t.shape) for t in z]
        ((2, 4), 2, [(2, 4), (2, 3)])
    """

    tensors: tuple[Tensor, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("Expected `tensors` to hold at least one tensor (the named module's output), got none.")
        if self.names and len(self.names) != len(self.tensors):
            raise ValueError(f"Expected a name per tensor ({len(self.tensors)}), got {len(self.names)}: {self.names}.")

    @property
    def main(self) -> Tensor:
        """The named module's output: what the auxiliary head takes."""
        return self.tensors[0]

    @property
    def shape(self) -> torch.Size:
        """The shape of :attr:`main`."""
        return self.main.shape

    @property
    def device(self) -> torch.device:
        """The device of :attr:`main`."""
        return self.main.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of :attr:`main`."""
        return self.main.dtype

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors)

    def __getitem__(self, index: int) -> Tensor:
        return self.tensors[index]

    @property
    def differentiable(self) -> tuple[int, ...]:
        """Positions of the floating-point tensors: those that go through the codec and get a gradient."""
        return tuple(i for i, t in enumerate(self.tensors) if t.is_floating_point())

    def replace(self, positions: Sequence[int], tensors: Sequence[Tensor]) -> CutTensors:
        """The same tensors with those at ``positions`` replaced by ``tensors``."""
        new = list(self.tensors)
        for position, tensor in zip(positions, tensors, strict=True):
            new[position] = tensor
        return CutTensors(tuple(new), self.names)

    def detach(self) -> CutTensors:
        """Every tensor detached from the graph."""
        return CutTensors(tuple(t.detach() for t in self.tensors), self.names)

    def to(self, *args: Any, **kwargs: Any) -> CutTensors:
        """``tensor.to(*args, **kwargs)`` for the floating-point tensors; the others follow their device, dtype kept."""
        moved = [t.to(*args, **kwargs) if t.is_floating_point() else t for t in self.tensors]
        device = moved[self.differentiable[0]].device if self.differentiable else None
        blocking = kwargs.get("non_blocking", False)
        if device is not None:
            moved = [t if t.is_floating_point() else t.to(device, non_blocking=blocking) for t in moved]
        return CutTensors(tuple(moved), self.names)

    def pin_memory(self) -> CutTensors:
        """Every tensor in pinned memory."""
        return CutTensors(tuple(t.pin_memory() for t in self.tensors), self.names)


def pack_cut(values: tuple[Any, ...], names: tuple[str, ...], point: str) -> Tensor | CutTensors:
    """What a client half cut at ``point`` returns: its one tensor, or :class:`CutTensors` of several.

    Called by the client half's generated code (:mod:`lightning_dsl.core.graph_cut`): it checks that
    each value the server needs is a tensor, since only tensors can cross the cut.

    Raises:
        ValueError: naming the value that is not a tensor, and the cut.
    """
    for value, name in zip(values, names, strict=True):
        if not isinstance(value, Tensor):
            role = "its output" if name == names[0] else f"`{name}`"
            raise ValueError(
                f"Cannot cut at {point!r} (argument `split_index`): the server needs {role}, which is a"
                f" {type(value).__name__}, not a tensor, and only tensors cross the cut. Cut at a point whose output"
                " and skip connections are tensors (a module's output, not a shape or a tuple)."
            )
    return values[0] if len(values) == 1 else CutTensors(values, names)
