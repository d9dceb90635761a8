"""Distance correlation between a batch of inputs and their cut activations (Székely et al., 2007).

The sample distance correlation is the leakage figure NoPeek (Vepakomma et al., 2020) trains against:
with the pairwise Euclidean distances ``a_ij = |x_i - x_j|`` and ``b_ij = |z_i - z_j|`` of the
flattened samples, double-centred to ``A`` and ``B``,

    dCov²_n(x, z) = mean(A ∘ B),   dVar²_n(x) = mean(A ∘ A),
    dCor_n(x, z) = sqrt(dCov²_n(x, z) / sqrt(dVar²_n(x) · dVar²_n(z)))

(the V-statistic; not squared). It lies in ``[0, 1]``, is 1 when ``z`` is an affine map of ``x`` with an
orthogonal-times-scalar linear part (a rotation, a scaling, a shift), and tends to 0 with the batch size for
independent ``x`` and ``z``. It costs ``O(B² · D)`` per batch.

The V-statistic is biased up, and the more so the higher the dimension: for a fixed batch of independent
high-dimensional ``x`` and ``z`` it tends to 1 as the dimension grows (Székely and Rizzo, 2013). A cut
activation drowned in noise can show a dCor near 0.8 while it carries nothing an attacker can use.
:func:`bias_corrected_distance_correlation` is their bias-corrected ``dCor²`` (U-centred distances), which is
near 0 for independent data at any dimension: read it beside the V-statistic where the dimensions are high.
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
    a, b = _pair(x, z, dtype)
    A = _centred_distances(a, dtype)
    B = _centred_distances(b, dtype).to(A.dtype)
    dcov2 = (A * B).mean().clamp_min(0.0)  # >= 0 in exact arithmetic; rounding can dip below
    denominator = (A * A).mean() * (B * B).mean()
    ratio = dcov2 / _safe_sqrt(denominator).where(denominator > 0, torch.ones_like(denominator))
    ratio = ratio.where(denominator > 0, torch.zeros_like(ratio))
    return _safe_sqrt(ratio.clamp(max=1.0))


def bias_corrected_distance_correlation(x: Activation, z: Activation, dtype: torch.dtype | None = None) -> Tensor:
    """The bias-corrected squared distance correlation ``dCor²*`` of a batch (Székely and Rizzo, 2013; 2014).

    With the pairwise distances U-centred (``Ã_ij = a_ij - a_i·/(n-2) - a_·j/(n-2) + a_··/((n-1)(n-2))`` off the
    diagonal, 0 on it) and ``(Ã·B̃) = Σ_{i≠j} Ã_ij B̃_ij / (n(n-3))``, ``dCor²* = (Ã·B̃) / sqrt((Ã·Ã)(B̃·B̃))``:
    an unbiased estimate's ratio, in ``[-1, 1]``, near 0 for independent ``x`` and ``z`` at any dimension (it
    can be negative), 1 when ``z`` is a scaled rotation of ``x`` plus a shift. Equal to the ``dcor``
    package's ``u_distance_correlation_sqr``. Inputs are read as by :func:`distance_correlation`.

    Args:
        x: the inputs of the batch, ``[B, ...]``, ``B >= 4``.
        z: what the batch became at the cut, ``[B, ...]``.
        dtype: floating dtype of the computation, as for :func:`distance_correlation`.

    Returns:
        ``dCor²*`` as a 0-d tensor (0 when ``x`` or ``z`` is constant over the batch).

    Raises:
        ValueError: as :func:`distance_correlation`, and for fewer than 4 samples.

    Example::

        >>> x = torch.randn(64, 3, 8, 8, dtype=torch.float64)
        >>> noise = torch.randn(64, 4096, dtype=torch.float64)
        >>> float(distance_correlation(x, noise)) > 0.8  # the V-statistic, for independent data
        True
        >>> abs(float(bias_corrected_distance_correlation(x, noise))) < 0.05
        True
    """
    a, b = _pair(x, z, dtype)
    if len(a) < 4:
        raise ValueError(
            f"Expected at least 4 samples for the bias-corrected distance correlation, but got {len(a)}: its"
            " U-centring divides by n - 3."
        )
    A = _u_centred_distances(a, dtype)
    B = _u_centred_distances(b, dtype).to(A.dtype)
    denominator = (A * A).sum() * (B * B).sum()
    ratio = (A * B).sum() / _safe_sqrt(denominator).where(denominator > 0, torch.ones_like(denominator))
    return ratio.where(denominator > 0, torch.zeros_like(ratio)).clamp(-1.0, 1.0)


def _u_centred_distances(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """The U-centred matrix of pairwise distances of the rows of ``t`` (0 on the diagonal)."""
    d = _distances(t, dtype)
    n = len(d)
    rows = d.sum(dim=1, keepdim=True) / (n - 2)
    u = d - rows - rows.T + d.sum() / ((n - 1) * (n - 2))
    return u * (1.0 - torch.eye(n, dtype=u.dtype, device=u.device))


def _pair(x: Activation, z: Activation, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """``x`` and ``z`` flattened to ``[B, -1]`` each, after checking ``dtype`` and the batch sizes."""
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"Expected argument `dtype` to be a floating dtype or None, but got {dtype}.")
    a, b = _flat(x, "x"), _flat(z, "z")
    if len(a) != len(b):
        raise ValueError(
            f"Expected arguments `x` and `z` to hold the same samples, but their batch sizes differ: {len(a)} in `x`"
            f" and {len(b)} in `z`."
        )
    return a, b


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
    d = _distances(t, dtype)
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def _distances(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """The pairwise Euclidean distances of the rows of ``t`` (integer rows as one-hot categories)."""
    if t.is_floating_point():
        t = t.to(dtype or t.dtype)
        squared_norms = (t * t).sum(dim=1)
        d2 = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * (t @ t.T)).clamp_min(0.0)
        d2 = d2 * (1.0 - torch.eye(len(t), dtype=t.dtype, device=t.device))  # exactly 0 to itself
    else:  # categories as one-hot vectors: |e_i - e_j|² = 2 per position that differs
        d2 = 2.0 * (t[:, None, :] != t[None, :, :]).sum(dim=2).to(dtype or torch.float32)
    return _safe_sqrt(d2)


def _safe_sqrt(t: Tensor) -> Tensor:
    """``sqrt(t)`` with the value 0 and the gradient 0 where ``t`` is 0 (``sqrt``'s gradient there is infinite)."""
    positive = t > 0
    return torch.sqrt(torch.where(positive, t, torch.ones_like(t))).where(positive, torch.zeros_like(t))
