"""Sequences with a padding mask: the inputs of a text model and the activation at a transformer's cut.

A batch of token sequences is padded to its longest sequence, so every activation of a sequence
model comes with a mask saying which positions are real tokens. :class:`MaskedSequence` keeps the
two together through the network, across the cut and into the auxiliary head:

* ``values``: token ids ``[B, T]`` (the inputs) or hidden states ``[B, T, D]`` (an activation);
* ``mask``: ``bool [B, T]``, ``True`` on real tokens.

At the cut only ``values`` is differentiable and goes through the codec; the mask crosses exact
(as ``bool``, one byte per position) and is counted with the rest (:class:`~lightning_dsl.core.cut.Cut`).
The training step, the cut and the heads take either a plain tensor or a ``MaskedSequence``
(:data:`Activation`), through the few helpers below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


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


Activation = Tensor | MaskedSequence
"""What a client half returns and the server half takes: a tensor, or a sequence with its mask."""


def values_of(activation: Activation) -> Tensor:
    """The differentiable tensor of an activation: itself, or a sequence's ``values``."""
    return activation.values if isinstance(activation, MaskedSequence) else activation


def replace_values(activation: Activation, values: Tensor) -> Activation:
    """``activation`` with its tensor replaced by ``values`` (a sequence keeps its mask)."""
    return activation.with_values(values) if isinstance(activation, MaskedSequence) else values


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
