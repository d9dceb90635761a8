"""Choosing the clipping norm ``C`` of the Gaussian mechanism from the activations themselves.

``C`` bounds each sample's contribution and scales the noise (``σ · C``): too small and every sample is
clipped hard (the signal shrinks toward a sphere), too large and the noise drowns what is left. The usual
choice is a quantile of the per-sample L2 norms of the undefended activations, the median by default:
half the samples are clipped, half are sent as they are.

:func:`activation_norms` measures those norms as the server would receive them in training: the client
half in training mode (BatchNorm normalises by the batch, as it does when the activations are sent) on a
copy, so no running statistic of the real client moves, and without gradients.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsl.core.peek import batch_inputs
from lightning_dsl.core.sequence import values_of


@torch.no_grad()
def activation_norms(client: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> Tensor:
    """Per-sample L2 norms of the client's cut activations (all of a sample's values together), in training mode.

    Args:
        client: the client half (not changed: a copy runs).
        batches: training batches, ``(inputs, labels, ...)`` or inputs alone.
        max_batches: read at most this many batches (``None``: all).

    Returns:
        A 1-d float64 tensor, one norm per sample read.

    Example::

        >>> net = nn.Linear(3, 4)
        >>> norms = activation_norms(net, [torch.ones(5, 3)])
        >>> norms.shape
        torch.Size([5])
    """
    if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
        raise ValueError(f"Expected argument `max_batches` to be an int >= 1 or None, but got {max_batches!r}.")
    probe = copy.deepcopy(client).train()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    norms = []
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        inputs = batch_inputs(batch)
        if inputs is None:
            raise ValueError(f"Expected batches of inputs or (inputs, labels, ...), but got {type(batch).__name__}.")
        values = values_of(probe(inputs.to(device)))
        norms.append(values.flatten(1).double().norm(dim=1).cpu())
    if not norms:
        raise ValueError("Expected at least one batch in argument `batches`, but it was empty.")
    return torch.cat(norms)


def clip_norm_from(norms: Tensor, quantile: float = 0.5) -> float:
    """The ``quantile`` of ``norms`` (default the median) as a clipping norm ``C``.

    Example::

        >>> clip_norm_from(torch.tensor([1.0, 2.0, 3.0, 10.0]))
        2.5
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"Expected argument `quantile` to be in (0, 1], but got {quantile!r}.")
    return float(torch.quantile(norms.double(), quantile))
