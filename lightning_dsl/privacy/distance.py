"""Distance correlation between a batch of inputs and their cut activations (Székely et al., 2007).

The sample distance correlation is the leakage figure NoPeek (Vepakomma et al., 2020) trains against:
with the pairwise Euclidean distances ``a_ij = |x_i - x_j|`` and ``b_ij = |z_i - z_j|`` of the
flattened samples, double-centred to ``A`` and ``B``,

    dCov²_n(x, z) = mean(A ∘ B),   dVar²_n(x) = mean(A ∘ A),
    dCor_n(x, z) = sqrt(dCov²_n(x, z) / sqrt(dVar²_n(x) · dVar²_n(z)))

(the V-statistic; not squared). It lies in ``[0, 1]``, is 1 when ``z`` is an affine map of ``x`` with an
orthogonal-times-scalar linear part (a rotation, a scaling, a shift), and tends to 0 with the batch size for
independent ``x`` and ``z``. It costs ``O(B² · D)`` per batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dsl.core.sequence import Activation, MaskedSequence


def distance_correlation(x: Activation, z: Activation, dtype: torch.dtype | None = None) -> Tensor:
    """The sample distance correlation ``dCor_n(x, z)`` of a batch (a 0-d tensor, differentiable).

    Each sample is flattened: ``x`` and ``z`` are ``[B, ...]`` tensors, or :class:`MaskedSequence`s whose
    ``values`` are used with the padded positions set to zero (so padding adds no distance between two
    sequences; only real positions count). Integer (or bool) inputs, such as token ids, are read as
    categories, as one-hot vectors: the distance of two samples is ``sqrt(2 · positions that differ)``.

    Gradients are finite everywhere: the distance of a sample to itself (and of two equal samples) is
    0 with gradient 0, and a batch whose ``x`` or ``z`` is constant has ``dCor = 0`` (Székely's convention)
    with gradient 0.

    Args:
        x: the inputs of the batch, ``[B, ...]``.
        z: what the batch became at the cut, ``[B, ...]`` (any shape per sample).
        dtype: floating dtype of the computation; ``None`` computes in the floating dtype of the inputs
            (``float32`` for integer ones). ``torch.float64`` is accurate to about 1e-12 (the distances
            come from Gram matrices, which lose digits in ``float32`` when the norms are large).

    Returns:
        ``dCor_n(x, z)`` in ``[0, 1]`` as a 0-d tensor of ``dtype``.

    Raises:
        ValueError: if ``x`` or ``z`` holds fewer than 2 samples, if their batch sizes differ, or if ``dtype``
            is not a floating dtype.

    Example::

        >>> x = torch.randn(16, 3, 4, 4, dtype=torch.float64)
        >>> round(distance_correlation(x, 2 * x.flatten(1) + 1).item(), 6)
        1.0
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"Expected argument `dtype` to be a floating dtype or None, but got {dtype}.")
    a, b = _flat(x, "x"), _flat(z, "z")
    if len(a) != len(b):
        raise ValueError(
            f"Expected arguments `x` and `z` to hold the same samples, but their batch sizes differ: {len(a)} in `x`"
            f" and {len(b)} in `z`."
        )
    A = _centred_distances(a, dtype)
    B = _centred_distances(b, dtype).to(A.dtype)
    dcov2 = (A * B).mean().clamp_min(0.0)  # >= 0 in exact arithmetic; rounding can dip below
    denominator = (A * A).mean() * (B * B).mean()
    ratio = dcov2 / _safe_sqrt(denominator).where(denominator > 0, torch.ones_like(denominator))
    ratio = ratio.where(denominator > 0, torch.zeros_like(ratio))
    return _safe_sqrt(ratio.clamp(max=1.0))


def _flat(t: Activation, name: str) -> Tensor:
    """``[B, -1]`` of a tensor or of a sequence's values (padding zeroed)."""
    if isinstance(t, MaskedSequence):
        values = t.values
        mask = t.mask.reshape(*t.mask.shape, *([1] * (values.ndim - 2)))
        values = values * mask.to(values.dtype) if values.is_floating_point() else values.masked_fill(~mask, 0)
    elif isinstance(t, Tensor):
        values = t
    else:
        raise ValueError(f"Expected argument `{name}` to be a tensor or a MaskedSequence, but got {type(t).__name__}.")
    if values.ndim == 0 or len(values) < 2:
        shape = tuple(values.shape)
        raise ValueError(
            f"Expected argument `{name}` to hold a batch of at least 2 samples (shape [B, ...] with B >= 2), but got"
            f" shape {shape}: the distance correlation of fewer than 2 samples is undefined."
        )
    return values.reshape(len(values), -1)


def _centred_distances(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """The double-centred matrix of pairwise Euclidean distances of the rows of ``t``."""
    if t.is_floating_point():
        t = t.to(dtype or t.dtype)
        squared_norms = (t * t).sum(dim=1)
        d2 = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * (t @ t.T)).clamp_min(0.0)
        d2 = d2 * (1.0 - torch.eye(len(t), dtype=t.dtype, device=t.device))  # exactly 0 to itself
    else:  # categories as one-hot vectors: |e_i - e_j|² = 2 per position that differs
        d2 = 2.0 * (t[:, None, :] != t[None, :, :]).sum(dim=2).to(dtype or torch.float32)
    d = _safe_sqrt(d2)
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def _safe_sqrt(t: Tensor) -> Tensor:
    """``sqrt(t)`` with the value 0 and the gradient 0 where ``t`` is 0 (``sqrt``'s gradient there is infinite)."""
    positive = t > 0
    return torch.sqrt(torch.where(positive, t, torch.ones_like(t))).where(positive, torch.zeros_like(t))
