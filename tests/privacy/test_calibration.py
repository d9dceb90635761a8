"""The clipping norm from the activations: per-sample norms in training mode, on a copy of the client."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
from torch import nn

from lightning_dsl.privacy import calibration
from lightning_dsl.privacy.calibration import activation_norms, clip_norm_from


def test_doctests() -> None:
    assert doctest.testmod(calibration).failed == 0


def test_norms_are_per_sample_over_all_values_in_training_mode_and_nothing_moves() -> None:
    torch.manual_seed(0)
    client = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
    before = {k: v.clone() for k, v in client.state_dict().items()}
    batches = [(torch.randn(6, 1, 4, 4), torch.zeros(6)) for _ in range(3)]
    norms = activation_norms(client, batches, max_batches=2)
    assert norms.shape == (12,) and norms.dtype == torch.float64
    with torch.no_grad():  # the reference: a copy in training mode (BatchNorm on the batch's statistics)
        reference = copy.deepcopy(client).train()
        expected = torch.cat([reference(x).flatten(1).double().norm(dim=1) for x, _ in batches[:2]])
    torch.testing.assert_close(norms, expected)
    assert all(torch.equal(v, before[k]) for k, v in client.state_dict().items())  # running stats untouched
    sorted_norms = norms.sort().values  # an even count: the median is the mean of the middle two
    assert clip_norm_from(norms) == pytest.approx(float(sorted_norms[5:7].mean()), rel=1e-12)
    with pytest.raises(ValueError, match="`quantile` to be in"):
        clip_norm_from(norms, 0.0)
    with pytest.raises(ValueError, match="`max_batches` to be an int >= 1"):
        activation_norms(client, batches, max_batches=0)
