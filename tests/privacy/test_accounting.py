"""The budgets: ε of the activations against Opacus' RDP analysis called directly and the Gaussian RDP formula."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as privacy_analysis

from lightning_dsl.privacy import CutPrivacy, accounting, activation_epsilon, label_epsilon


def test_doctests() -> None:
    assert doctest.testmod(accounting).failed == 0


@pytest.mark.parametrize(
    ("sigma", "epochs", "delta"), [(0.5, 3, 1e-5), (1.0, 10, 1e-5), (2.0, 30, 1e-6), (4.0, 1, 1e-3)]
)
def test_epsilon_is_opacus_rdp_at_sample_rate_one_composed_over_epochs(sigma: float, epochs: int, delta: float) -> None:
    got = activation_epsilon(sigma, epochs, delta)
    orders = RDPAccountant.DEFAULT_ALPHAS
    # 1. Opacus' analysis, called directly: q = 1, one step per epoch.
    rdp = privacy_analysis.compute_rdp(q=1.0, noise_multiplier=sigma, steps=epochs, orders=orders)
    expected, _ = privacy_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    assert got == pytest.approx(expected, rel=1e-12)
    # 2. The Gaussian mechanism's RDP, by hand: order α costs α / (2σ²) per release, composed additively...
    alphas = np.array(orders, dtype=float)
    analytic = epochs * alphas / (2 * sigma**2)
    np.testing.assert_allclose(rdp, analytic, rtol=1e-12)
    # ... converted to (ε, δ) with Balle et al. 2020 (Theorem 21), the conversion Opacus uses.
    by_hand = analytic - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    assert got == pytest.approx(by_hand.min(), rel=1e-12)
    # 3. Stepping the accountant once per epoch is the same.
    stepped = RDPAccountant()
    for _ in range(epochs):
        stepped.step(noise_multiplier=sigma, sample_rate=1.0)
    assert got == pytest.approx(stepped.get_epsilon(delta), rel=1e-12)


def test_epsilon_grows_with_epochs_and_shrinks_with_noise() -> None:
    assert activation_epsilon(1.0, 0, 1e-5) == 0.0
    assert math.isinf(activation_epsilon(0.0, 1, 1e-5))
    by_epochs = [activation_epsilon(1.0, e, 1e-5) for e in (1, 2, 5, 10)]
    assert by_epochs == sorted(by_epochs)
    by_sigma = [activation_epsilon(s, 10, 1e-5) for s in (0.5, 1.0, 2.0)]
    assert by_sigma == sorted(by_sigma, reverse=True)


def test_label_budget_composes_over_epochs() -> None:
    assert label_epsilon(2.0, 5) == 10.0
    privacy = CutPrivacy(label_epsilon=1.5)
    assert privacy.budgets(4) == {"privacy/label_epsilon": 6.0}
    noisy = CutPrivacy(clip_norm=1.0, noise_multiplier=2.0, delta=1e-6)
    assert noisy.budgets(3) == {"privacy/epsilon": activation_epsilon(2.0, 3, 1e-6)}
    assert CutPrivacy(nopeek_weight=1.0).budgets(3) == {}
