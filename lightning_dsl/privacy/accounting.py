"""The privacy budget of what a client sends up: the activations' ε (Opacus' RDP accountant) and the labels' ε.

**Activations.** Each training sample's cut activation is computed from that sample alone and released
once per epoch, clipped to L2 norm ``C`` and with ``N(0, σ²C²)`` added to each element. Subsampling into
batches does not amplify this release (every sample is sent every epoch), so an epoch is one Gaussian
mechanism with noise multiplier σ at sample rate 1, and ``E`` epochs compose ``E`` of them. The ε for a
given δ is Opacus' RDP accountant's (add/remove adjacency), not a formula of our own: at sample rate 1 its
Rényi divergence of order α is exactly ``E · α / (2σ²)``, converted to (ε, δ) by Opacus' conversion.

**Labels.** k-ary randomized response at ``ε_label`` is ``ε_label``-DP for one release of a label; the
labels are drawn afresh every time they are sent, so ``E`` epochs compose to ``E · ε_label`` (basic
composition, which is tight for pure DP in the worst case).

The activations' ε assumes each sample's activation depends on that sample alone: BatchNorm in training
mode on the client ties the samples of a batch together through its statistics, which no per-sample clip
bounds (see ``docs/privacy.md``). Both budgets are per training sample; an evaluation sample is sent once
per evaluation pass through the same mechanisms, so its budget is the same formula with the number of
passes it went through.
"""

from __future__ import annotations

import math


def activation_epsilon(noise_multiplier: float, epochs: int, delta: float) -> float:
    """ε at ``delta`` of ``epochs`` releases of one sample's clipped, noised activation (Opacus' RDP accountant).

    Args:
        noise_multiplier: σ, the noise's standard deviation over the clipping norm. ``0`` gives ``inf``.
        epochs: number of epochs trained (releases of each sample); ``0`` gives ``0.0``.
        delta: δ in ``(0, 1)``.

    Example::

        >>> round(activation_epsilon(1.0, 10, 1e-5), 4)
        19.0536
    """
    if epochs < 0:
        raise ValueError(f"Expected argument `epochs` to be an int >= 0, but got {epochs!r}.")
    if epochs == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant  # imported here: opacus is heavy and only noise needs it

    accountant = RDPAccountant()
    # One entry (σ, q = 1, steps = epochs): exactly what calling step() once per epoch records.
    accountant.history = [(float(noise_multiplier), 1.0, int(epochs))]
    return float(accountant.get_epsilon(delta=delta))


def label_epsilon(epsilon: float, epochs: int) -> float:
    """The labels' budget after ``epochs`` releases at ``epsilon`` each (basic composition: ``epochs · epsilon``)."""
    if epochs < 0:
        raise ValueError(f"Expected argument `epochs` to be an int >= 0, but got {epochs!r}.")
    return float(epsilon) * int(epochs)
