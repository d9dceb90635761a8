"""Sequences with a padding mask: the inputs of a text model and the activation at a transformer's cut.

A batch of token sequences is padded to its longest sequence, so every activation of a sequence
model comes with a mask saying which positions are real tokens. :class:`MaskedSequence` keeps the
two together through the network, across the cut and into the auxiliary head:

* ``values``: token ids ``[B, T]`` (the inputs) or hidden states ``[B, T, D]`` (an activation);
* ``mask``: ``bool [B, T]``, ``True`` on real tokens.

At the cut only ``values`` is differentiable and goes through the codec; the mask crosses exact
(as ``bool``, one byte per position) and is counted with the rest (:class:`~lightning_dsl.core.cut.Cut`).
The training step, the cut and the heads take a plain tensor, a ``MaskedSequence`` or several
tensors (:class:`~lightning_dsl.core.cut_tensors.CutTensors`, a cut inside a skip connection), together
:data:`Activation`, through the few helpers below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsl.core.cut_tensors import CutTensors


@dataclass(frozen=True)
class MaskedSequence:
    """A padded batch of sequences and its mask (``True`` on real tokens).

    Lightning moves it to the device like a tensor (it has ``to``), and a ``DataLoader`` pins it
    (``pin_memory``); the mask keeps its ``bool`` dtype whatever dtype ``to`` is given.

    Example::

        >>> ids = torch.tensor([[2, 7, 8], [2, 9, 0]])
        >>> batch = MaskedSequence(ids, ids != 0)
        >>> tuple(batch.shape), batch.tokens
        ((2, 3), 5)
    """

    values: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool or tuple(self.mask.shape) != tuple(self.values.shape[:2]):
            raise ValueError(
                f"Expected `mask` to be a bool tensor of shape (batch, length) = {tuple(self.values.shape[:2])}, but"
                f" got dtype {self.mask.dtype} and shape {tuple(self.mask.shape)}."
            )

    @property
    def shape(self) -> torch.Size:
        """The shape of ``values``."""
        return self.values.shape

    @property
    def tokens(self) -> int:
        """Number of real (unpadded) positions in the batch."""
        return int(self.mask.sum())

    def detach(self) -> MaskedSequence:
        """The same sequence, ``values`` detached from the graph."""
        return MaskedSequence(self.values.detach(), self.mask)

    def with_values(self, values: Tensor) -> MaskedSequence:
        """A sequence with the same mask and new ``values`` (a layer's output)."""
        return MaskedSequence(values, self.mask)

    def to(self, *args: Any, **kwargs: Any) -> MaskedSequence:
        """``values.to(*args, **kwargs)``; the mask moves to the same device and stays ``bool``."""
        values = self.values.to(*args, **kwargs)
        return MaskedSequence(values, self.mask.to(values.device, non_blocking=kwargs.get("non_blocking", False)))

    def pin_memory(self) -> MaskedSequence:
        """Both tensors in pinned memory (``DataLoader(pin_memory=True)``)."""
        return MaskedSequence(self.values.pin_memory(), self.mask.pin_memory())


Activation = Tensor | MaskedSequence | CutTensors
"""What a client half returns and the server half takes: a tensor, a sequence with its mask, or several tensors."""


def values_of(activation: Activation) -> Tensor:
    """The activation's main tensor: itself, a sequence's ``values``, or the named module's output of several."""
    if isinstance(activation, MaskedSequence):
        return activation.values
    if isinstance(activation, CutTensors):
        return activation.main
    return activation


def replace_values(activation: Activation, values: Tensor) -> Activation:
    """``activation`` with its main tensor replaced by ``values`` (a sequence keeps its mask, several the others)."""
    if isinstance(activation, MaskedSequence):
        return activation.with_values(values)
    if isinstance(activation, CutTensors):
        return activation.replace((0,), (values,))
    return values


def grad_tensors(activation: Activation) -> tuple[Tensor, ...]:
    """The tensors of an activation that a gradient flows through, in order.

    A tensor: itself; a sequence: its ``values`` (the mask has no gradient); several tensors: the
    floating-point ones (:attr:`CutTensors.differentiable`).
    """
    if isinstance(activation, CutTensors):
        return tuple(activation.tensors[i] for i in activation.differentiable)
    return (values_of(activation),)


def with_grad_tensors(activation: Activation, tensors: Sequence[Tensor]) -> Activation:
    """``activation`` with its :func:`grad_tensors` replaced by ``tensors`` (one each, in order)."""
    if isinstance(activation, CutTensors):
        return activation.replace(activation.differentiable, tensors)
    (values,) = tensors
    return replace_values(activation, values)


def head_input(activation: Activation) -> Tensor | MaskedSequence:
    """What the auxiliary head takes: the activation itself, or the named module's output of several tensors."""
    return activation.main if isinstance(activation, CutTensors) else activation


def is_inputs(batch: Any) -> bool:
    """Whether ``batch`` is a batch of inputs by itself (a tensor or a :class:`MaskedSequence`)."""
    return isinstance(batch, (Tensor, MaskedSequence))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values [B, T, D]`` over the real positions of each sequence: ``[B, D]``.

    Example::

        >>> values = torch.tensor([[[1.0], [3.0], [100.0]]])
        >>> masked_mean(values, torch.tensor([[True, True, False]])).tolist()
        [[2.0]]
    """
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def example_inputs(
    first_unit: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device, dtype: torch.dtype
) -> Activation:
    """A batch of ``batch_size`` dummy inputs for a network whose first cut unit is ``first_unit``.

    A unit that takes something other than a float tensor says so with a method
    ``example_input(batch_size, input_shape)`` (the text transformer's embeddings return a
    :class:`MaskedSequence` of token ids); otherwise the inputs are zeros of ``input_shape``.
    """
    make = getattr(first_unit, "example_input", None)
    if callable(make):
        inputs = make(batch_size, tuple(input_shape))
        return inputs.to(device)
    return torch.zeros(batch_size, *input_shape, device=device, dtype=dtype)
