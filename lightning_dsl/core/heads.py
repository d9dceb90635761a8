"""Auxiliary heads: the small classifier the client trains at the cut in decoupled mode.

Built-in heads take the cut activation ``z`` of shape ``(N, C, H, W)`` (or ``(N, D)``):

* ``"linear"``: average-pool to a ``pool x pool`` grid, flatten, one linear layer. ``pool=1`` is
  global average pooling; ``pool=0`` keeps ``z`` as it is (the paper's literal "single
  fully-connected layer" on the flattened activation).
* ``"mlp"``: the same pooling, then a hidden layer with ReLU, then the linear layer.
* ``"conv"``: a 3x3 conv + BatchNorm + ReLU block at the cut's width before the pooling and
  the linear layer (as in greedy layer-wise training).

When the cut activation is a sequence with its padding mask
(:class:`~lightning_dsl.core.sequence.MaskedSequence`, a transformer's hidden states ``(N, T, D)``),
``"linear"`` and ``"mlp"`` pool by the mean over each sequence's real tokens (:class:`MaskedMeanPool`)
instead of the average pool; ``"conv"`` does not apply.

With several tensors at the cut (:class:`~lightning_dsl.core.cut_tensors.CutTensors`, a cut inside a
skip connection), a head takes the named module's output alone (:func:`~lightning_dsl.core.sequence.head_input`).

A user's own ``nn.Module`` is used as it is, after a check that it accepts ``z`` and returns
``(N, num_classes)`` logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_dsl.core.sequence import Activation, MaskedSequence, head_input, masked_mean

HEADS = ("linear", "mlp", "conv")
HEAD_OPTIONS = ("pool", "hidden")


class PoolFlatten(nn.Module):
    """Adaptive average pooling to a ``pool x pool`` grid (``pool=0``: none), then flatten."""

    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, z: Tensor) -> Tensor:  # noqa: D102
        if z.dim() > 2 and self.pool > 0:
            z = (
                nn.functional.adaptive_avg_pool2d(z, self.pool)
                if z.dim() == 4
                else z.mean(dim=tuple(range(2, z.dim())))
            )
        return z.flatten(1)

    def extra_repr(self) -> str:  # noqa: D102
        return f"pool={self.pool}"


class MaskedMeanPool(nn.Module):
    """Mean over the real tokens of each sequence: ``MaskedSequence`` ``(N, T, D)`` to ``(N, D)``."""

    def forward(self, z: MaskedSequence) -> Tensor:  # noqa: D102
        return masked_mean(z.values, z.mask)


class AuxHead(nn.Sequential):
    """A built-in head: its layers in order, on the cut activation (the named module's output of several tensors).

    An ``nn.Sequential`` (its parameter names are those of one), that takes
    :class:`~lightning_dsl.core.cut_tensors.CutTensors` as well and reads only their main tensor.
    """

    def forward(self, z: Activation) -> Tensor:  # noqa: D102
        return super().forward(head_input(z))


def _pooled_features(shape: torch.Size, pool: int) -> int:
    """Number of features after :class:`PoolFlatten` for a per-sample ``shape``."""
    if len(shape) == 1:
        return shape[0]
    if pool == 0:
        return int(torch.Size(shape).numel())
    if len(shape) == 3:
        return shape[0] * pool * pool
    return shape[0]


def build_aux_head(
    spec: str | nn.Module,
    activation_shape: torch.Size | tuple[int, ...],
    num_classes: int,
    pool: int = 1,
    hidden: int = 256,
    sequence: bool = False,
) -> nn.Module:
    """Build the auxiliary head for cut activations of per-sample shape ``activation_shape``.

    Args:
        spec: ``"linear"``, ``"mlp"``, ``"conv"`` or an ``nn.Module``.
        activation_shape: shape of one sample of ``z`` (without the batch dimension); for a sequence
            ``(T, D)``, of which only ``D`` matters.
        num_classes: number of classes the head predicts.
        pool: side of the average-pooling grid (1: global average pooling; 0: no pooling).
        hidden: hidden width of the ``"mlp"`` head.
        sequence: ``z`` is a :class:`~lightning_dsl.core.sequence.MaskedSequence`: pool by the masked mean.

    Raises:
        ValueError: for an unknown head name or bad options.
    """
    if isinstance(spec, nn.Module):
        return spec
    if spec not in HEADS:
        raise ValueError(f"Expected argument `aux_head` to be one of {list(HEADS)} or an nn.Module, got {spec!r}.")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise ValueError(f"Expected `aux_head_kwargs['pool']` to be an int >= 0 (0: no pooling), got {pool!r}.")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"Expected `aux_head_kwargs['hidden']` to be a positive int, got {hidden!r}.")
    shape = torch.Size(activation_shape)
    if sequence:
        _check_sequence_head(spec, shape, pool)
        pooling: nn.Module = MaskedMeanPool()
        features = shape[1]
    else:
        pooling, features = PoolFlatten(pool), _pooled_features(shape, pool)
    if spec == "linear":
        return AuxHead(pooling, nn.Linear(features, num_classes))
    if spec == "mlp":
        return AuxHead(pooling, nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
    if len(shape) != 3:
        raise ValueError(
            f"Expected argument `aux_head` to be 'linear', 'mlp' or an nn.Module for a cut activation of per-sample"
            f" shape {tuple(shape)}, got 'conv', which needs image-shaped activations (C, H, W)."
        )
    channels = shape[0]
    return AuxHead(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        pooling,
        nn.Linear(features, num_classes),
    )


def _check_sequence_head(spec: str, shape: torch.Size, pool: int) -> None:
    """Refuse what a head on hidden states ``(T, D)`` per sample cannot do: it pools by the masked mean."""
    if len(shape) != 2:
        raise ValueError(
            f"Expected a sequence cut activation of per-sample shape (length, features), got {tuple(shape)}."
        )
    if spec == "conv":
        raise ValueError(
            "Expected argument `aux_head` to be 'linear', 'mlp' or an nn.Module for a sequence cut activation"
            f" (per-sample shape {tuple(shape)}, with a padding mask), got 'conv', which needs images (C, H, W)."
        )
    if pool != 1:
        raise ValueError(
            f"Expected `aux_head_kwargs['pool']` to be 1 for a sequence cut activation (the mean over each sequence's"
            f" real tokens; sequences have no fixed length to flatten or grid to pool to), got {pool!r}."
        )


def check_aux_head(aux_head: nn.Module, z: Activation, num_classes: int) -> None:
    """Check that ``aux_head`` maps the cut activation ``z`` to ``(N, num_classes)`` logits.

    Runs one forward in eval mode without gradients, so no BatchNorm statistics move. With several tensors
    at the cut, the head is given the named module's output, as in training.

    Raises:
        ValueError: naming the head, the activation shape and what went wrong.
    """
    was_training = aux_head.training
    aux_head.eval()
    try:
        with torch.no_grad():
            out = aux_head(head_input(z))
    except Exception as err:  # any shape/dtype error from the user's module
        raise ValueError(
            f"Argument `aux_head` ({type(aux_head).__name__}) does not accept the cut activation of shape"
            f" {tuple(z.shape)} (batch, *per-sample shape). Build it for inputs of that shape. The error was: {err}"
        ) from err
    finally:
        aux_head.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (z.shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"Argument `aux_head` ({type(aux_head).__name__}) must return logits of shape (batch, num_classes)"
            f" = {(z.shape[0], num_classes)} for the cut activation of shape {tuple(z.shape)}, but returned {got}."
        )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
