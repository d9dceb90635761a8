"""distance_correlation against the `dcor` package (numpy + numba, no autograd) as the independent oracle."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch

from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.privacy import bias_corrected_distance_correlation, distance_correlation


def _oracle(x: torch.Tensor, z: torch.Tensor) -> float:
    return float(dcor.distance_correlation(x.flatten(1).double().numpy(), z.flatten(1).double().numpy()))


@pytest.mark.parametrize(
    ("batch", "x_shape", "z_shape"), [(2, (3,), (1,)), (17, (1, 8, 8), (4, 2, 2)), (64, (5,), (9,))]
)
def test_matches_dcor_package(batch: int, x_shape: tuple[int, ...], z_shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *x_shape, dtype=torch.float64, generator=g)
    mix = torch.randn(x[0].numel(), int(np.prod(z_shape)), dtype=torch.float64, generator=g)
    z = (torch.relu(x.flatten(1) @ mix) ** 2).reshape(batch, *z_shape)
    z = z + 0.3 * torch.randn(z.shape, dtype=torch.float64, generator=g)
    assert distance_correlation(x, z).item() == pytest.approx(_oracle(x, z), abs=1e-10)
    # float32 in, float64 out on request; in float32 it is close
    x32, z32 = x.float(), z.float()
    assert distance_correlation(x32, z32, dtype=torch.float64).dtype == torch.float64
    assert distance_correlation(x32, z32).dtype == torch.float32
    assert distance_correlation(x32, z32).item() == pytest.approx(_oracle(x, z), abs=1e-4)


@pytest.mark.parametrize(("batch", "x_dim", "z_dim"), [(4, 3, 1), (17, 64, 16), (64, 5, 9)])
def test_bias_corrected_matches_dcor_package(batch: int, x_dim: int, z_dim: int) -> None:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, x_dim, dtype=torch.float64, generator=g)
    z = torch.tanh(x @ torch.randn(x_dim, z_dim, dtype=torch.float64, generator=g))
    z = z + 0.5 * torch.randn(z.shape, dtype=torch.float64, generator=g)
    expected = float(dcor.u_distance_correlation_sqr(x.numpy(), z.numpy()))
    assert bias_corrected_distance_correlation(x, z).item() == pytest.approx(expected, abs=1e-10)
    assert bias_corrected_distance_correlation(x, 3 * x + 1).item() == pytest.approx(1.0, abs=1e-10)


def test_high_dimensional_noise_fools_the_v_statistic_and_not_the_corrected_one() -> None:
    # A cut activation drowned in noise (what the Gaussian mechanism sends at the shallow cut): the V-statistic
    # stays high, the bias-corrected dCor² is near 0, as for the noise alone.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3 * 32 * 32, dtype=torch.float64, generator=g)
    signal = x @ torch.randn(3 * 32 * 32, 512, dtype=torch.float64, generator=g) / 55.0
    received = signal + 100.0 * torch.randn(64, 512, dtype=torch.float64, generator=g)
    assert distance_correlation(x, received).item() > 0.7
    assert abs(bias_corrected_distance_correlation(x, received).item()) < 0.05
    assert bias_corrected_distance_correlation(x, signal).item() > 0.3  # the projection alone: clearly above 0
    with pytest.raises(ValueError, match="at least 4 samples"):
        bias_corrected_distance_correlation(x[:3], received[:3])
    assert bias_corrected_distance_correlation(x, torch.ones(64, 5)).item() == 0.0


def test_similarity_map_gives_one_and_independence_gives_little() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, dtype=torch.float64, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g))
    assert distance_correlation(x, 3.0 * x @ rotation + 7.0).item() == pytest.approx(1.0, abs=1e-12)
    # The V-statistic of independent samples is biased up (0.39 at B = 128 here) and shrinks like 1/sqrt(B).
    values = []
    for batch in (128, 512):
        a, b = (torch.randn(batch, 6, dtype=torch.float64, generator=g) for _ in range(2))
        values.append(distance_correlation(a, b).item())
        assert values[-1] == pytest.approx(_oracle(a, b), abs=1e-10)
    assert values[1] < 0.22 and values[1] < 0.6 * values[0]


def test_constant_activation_gives_zero_with_finite_gradient() -> None:
    x = torch.randn(8, 4, dtype=torch.float64)
    z = torch.ones(8, 3, dtype=torch.float64, requires_grad=True)
    value = distance_correlation(x, z)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_gradcheck_including_repeated_samples() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g)
    z = torch.randn(6, 3, dtype=torch.float64, generator=g)
    x.requires_grad_(), z.requires_grad_()
    assert torch.autograd.gradcheck(distance_correlation, (x, z))
    # Two equal inputs: a zero distance off the diagonal, where |x_i - x_j| has a kink (no finite-difference
    # check there); the gradient is still finite (0 from that pair).
    x = x.detach().clone()
    x[3] = x[1]
    x.requires_grad_()
    value = distance_correlation(x, z)
    (gx, gz) = torch.autograd.grad(value, (x, z))
    assert torch.isfinite(gx).all() and torch.isfinite(gz).all()


def test_masked_sequence_zeroes_padding() -> None:
    g = torch.Generator().manual_seed(2)
    values = torch.randn(10, 4, 3, dtype=torch.float64, generator=g)
    mask = torch.ones(10, 4, dtype=torch.bool)
    mask[::2, 3] = False
    x = torch.randn(10, 7, dtype=torch.float64, generator=g)
    padded = values.clone()
    padded[~mask] = 0.0
    expected = _oracle(x, padded)
    assert distance_correlation(x, MaskedSequence(values, mask)).item() == pytest.approx(expected, abs=1e-10)
    noisy = values.clone()
    noisy[~mask] = 1e3  # whatever sits at padded positions does not count
    assert distance_correlation(x, MaskedSequence(noisy, mask)).item() == pytest.approx(expected, abs=1e-10)


def test_token_ids_are_categories() -> None:
    ids = torch.tensor([[2, 5, 0], [2, 6, 0], [3, 5, 9], [4, 4, 4]])
    z = torch.randn(4, 2, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(ids, 10).double()
    assert distance_correlation(ids, z, dtype=torch.float64).item() == pytest.approx(_oracle(one_hot, z), abs=1e-10)


@pytest.mark.parametrize(
    ("x", "z", "match"),
    [
        (torch.randn(1, 3), torch.randn(1, 2), "`x` to hold a batch of at least 2"),
        (torch.randn(4, 3), torch.randn(1, 2), "`z` to hold a batch of at least 2"),
        (torch.randn(4, 3), torch.randn(5, 2), "4 in `x` and 5 in `z`"),
        (torch.tensor(1.0), torch.randn(5, 2), "`x` to hold a batch"),
    ],
)
def test_bad_input(x: torch.Tensor, z: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        distance_correlation(x, z)


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="`dtype` to be a floating dtype"):
        distance_correlation(torch.randn(3, 2), torch.randn(3, 2), dtype=torch.int64)
