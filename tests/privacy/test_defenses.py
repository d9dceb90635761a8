"""The defenses at the cut, measured on what the server receives, against hand-written references.

Each check is on plain torch (a :class:`Cut`, :func:`split_step`), in seconds: the clip and the noise's
spread as the server sees them, the bytes, randomized response's keep rate, NoPeek's client update and the
sl update through the clip written out with autograd, and the bad values of every field.
"""

from __future__ import annotations

import copy
import doctest
import math
import re

import pytest
import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from lightning_dsl.core.cut import Cut
from lightning_dsl.core.step import split_step
from lightning_dsl.privacy import CutPrivacy, NoPeek, clip_per_sample, defenses, distance_correlation

B, D, K = 512, 32, 5


def test_doctests() -> None:
    assert doctest.testmod(defenses, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -0.5, "clip_norm": 1.0}, "`noise_multiplier` to be a finite number >= 0, but got -0.5"),
        ({"clip_norm": 0.0}, "`clip_norm` to be a finite number > 0 or None, but got 0.0"),
        ({"clip_norm": -2}, "`clip_norm` to be a finite number > 0 or None, but got -2"),
        ({"noise_multiplier": 1.0}, "`clip_norm` to be a number > 0 when `noise_multiplier` > 0"),
        ({"nopeek_weight": -0.1}, "`nopeek_weight` to be a finite number >= 0, but got -0.1"),
        ({"label_epsilon": 0.0}, "`label_epsilon` to be a finite number > 0 or None, but got 0.0"),
        ({"label_epsilon": -1}, "`label_epsilon` to be a finite number > 0 or None, but got -1"),
        ({"delta": 0.0}, "`delta` to be a number in (0, 1), but got 0.0"),
        ({"delta": 1.0}, "`delta` to be a number in (0, 1), but got 1.0"),
        ({"seed": -1}, "`seed` to be an int >= 0 or None, but got -1"),
        ({"noise_multiplier": True, "clip_norm": 1.0}, "`noise_multiplier` to be a finite number >= 0, but got True"),
    ],
)
def test_bad_fields_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CutPrivacy(**kwargs)


def test_coerce_takes_a_dict_and_refuses_unknown_keys() -> None:
    assert CutPrivacy.coerce({"clip_norm": 2.0, "noise_multiplier": 0.5}) == CutPrivacy(2.0, 0.5)
    assert CutPrivacy.coerce(None) is None
    with pytest.raises(ValueError, match=r"Unknown keys \['sigma'\] in argument `privacy`"):
        CutPrivacy.coerce({"sigma": 1.0})
    with pytest.raises(ValueError, match="Expected argument `privacy` to be a lightning_dsl.privacy.CutPrivacy"):
        CutPrivacy.coerce(1.0)


def activations(seed: int = 0) -> Tensor:
    """Samples whose norms spread from 0.5 to 5: half are clipped at C = 2, half are not."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(B, 4, 2, 4, generator=g, dtype=torch.float64)
    norms = torch.linspace(0.5, 5.0, B, dtype=torch.float64)
    return direction / direction.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * norms.reshape(-1, 1, 1, 1)


def test_the_server_receives_each_sample_clipped_to_the_norm_and_in_its_direction() -> None:
    z, labels = activations(), torch.zeros(B, dtype=torch.long)
    cut = Cut(client_transform=CutPrivacy(clip_norm=2.0).mechanism(K))
    received, _ = cut.send_up(z, labels)
    norms, original = received.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1)
    assert norms.max() <= 2.0 + 1e-12
    torch.testing.assert_close(norms, original.clamp(max=2.0), rtol=0, atol=1e-12)
    # Same direction: the clip only scales each sample.
    cosine = (received.flatten(1) * z.flatten(1)).sum(1) / (norms * original)
    torch.testing.assert_close(cosine, torch.ones(B, dtype=torch.float64))
    assert torch.equal(received[original <= 2.0], z[original <= 2.0])  # short samples untouched


@pytest.mark.parametrize(("sigma", "clip"), [(0.5, 2.0), (1.0, 2.0), (2.0, 0.25)])
def test_the_noise_the_server_receives_has_spread_sigma_times_clip(sigma: float, clip: float) -> None:
    z, labels = activations(), torch.zeros(B, dtype=torch.long)
    cut = Cut(client_transform=CutPrivacy(clip_norm=clip, noise_multiplier=sigma, seed=3).mechanism(K))
    received, _ = cut.send_up(z, labels)
    noise = (received - clip_per_sample(z, clip)).flatten()
    n = noise.numel()  # 16,384 draws: the sample std's standard error is about std / sqrt(2n)
    tolerance = 5 * sigma * clip / math.sqrt(2 * n)
    assert abs(noise.std().item() - sigma * clip) < tolerance
    assert abs(noise.mean().item()) < 5 * sigma * clip / math.sqrt(n)
    # Independent of the sample: the noise of short and of clipped samples has the same spread.
    short = z.flatten(1).norm(dim=1) <= clip
    if short.any() and (~short).any():
        halves = noise.reshape(B, -1)
        assert abs(halves[short].std().item() - halves[~short].std().item()) < 4 * tolerance * math.sqrt(2)


def test_noise_and_clip_change_no_byte_sent() -> None:
    z, labels = activations().float(), torch.arange(B) % K
    for codec in ("none", "fp16", "int8"):
        plain, defended = Cut(codec), Cut(codec, client_transform=CutPrivacy(1.0, 1.0, label_epsilon=1.0).mechanism(K))
        received, _ = defended.send_up(z, labels)
        plain.send_up(z, labels)
        assert defended.traffic == plain.traffic, codec
        assert received.dtype == z.dtype and received.shape == z.shape


def test_noise_goes_in_before_the_int8_codec() -> None:
    """The codec encodes the noised activation: what arrives is int8's round trip of clip + noise."""
    z, labels = activations().float(), torch.zeros(B, dtype=torch.long)
    privacy = CutPrivacy(clip_norm=2.0, noise_multiplier=1.0, seed=5)
    received, _ = Cut("int8", client_transform=privacy.mechanism(K)).send_up(z, labels)
    reference_noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=z.dtype)
    noised = clip_per_sample(z, 2.0) + 2.0 * reference_noise
    codec = Cut("int8").codec
    assert torch.equal(received, codec.decode(codec.encode(noised)))


def test_randomized_response_keeps_each_label_with_the_stated_probability() -> None:
    epsilon, k, n = 1.0, K, 40_000
    labels = torch.arange(n) % k
    mechanism = CutPrivacy(label_epsilon=epsilon, seed=1).mechanism(k)
    _, sent = Cut(client_transform=mechanism).send_up(torch.zeros(n, 1), labels)
    keep = math.exp(epsilon) / (math.exp(epsilon) + k - 1)
    assert abs((sent == labels).double().mean().item() - keep) < 5 * math.sqrt(keep * (1 - keep) / n)
    # A changed label is any of the other k - 1 classes, uniformly.
    changed = sent[sent != labels] - labels[sent != labels]
    shares = torch.bincount(changed % k, minlength=k)[1:].double() / len(changed)
    assert (shares - 1 / (k - 1)).abs().max() < 5 * math.sqrt(1 / (k - 1) / len(changed))
    assert sent.dtype == labels.dtype and int(sent.min()) >= 0 and int(sent.max()) < k


def test_label_privacy_refuses_labels_that_are_not_class_indices() -> None:
    mechanism = CutPrivacy(label_epsilon=2.0).mechanism(K)
    assert mechanism is not None
    with pytest.raises(ValueError, match=r"Field `label_epsilon`=2.0 .* dtype torch.float32: .* integer class"):
        mechanism.check_labels(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"Field `label_epsilon`=2.0 .* label 5: .* class indices in \[0, 4\]"):
        Cut(client_transform=mechanism).send_up(torch.zeros(2, 1), torch.tensor([0, 5]))


def test_draws_come_from_their_own_generator_not_torchs_global_one() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cut = Cut(client_transform=CutPrivacy(1.0, 1.0, label_epsilon=1.0).mechanism(K))
    cut.send_up(torch.randn(8, 3).detach() * 0 + 1, torch.zeros(8, dtype=torch.long))
    torch.manual_seed(0)
    cut.send_up(torch.ones(8, 3), torch.zeros(8, dtype=torch.long))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------- the client's update, by hand
def halves() -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    client = nn.Sequential(nn.Flatten(), nn.Linear(D, 16), nn.Tanh()).double()
    server = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, K)).double()
    head = nn.Linear(16, K).double()
    return client, server, head


def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, D, generator=g, dtype=torch.float64), torch.randint(0, K, (16,), generator=g)


def one_step(mode: str, privacy: CutPrivacy | None, lr: float = 0.1) -> tuple[nn.Module, nn.Module, nn.Module]:
    client, server, head = halves()
    x, y = batch()
    mechanism = privacy.mechanism(K) if privacy is not None else None
    regularizer = privacy.regularizer() if privacy is not None else None
    split_step(
        client,
        server,
        head,
        x,
        y,
        cut=Cut(client_transform=mechanism),
        client_optimizer=torch.optim.SGD([*client.parameters(), *head.parameters()], lr=lr),
        server_optimizer=torch.optim.SGD(server.parameters(), lr=lr),
        feedback_weight=None if mode == "dsl" else 1.0,
        client_regularizer=regularizer,
    )
    return client, server, head


def sgd(module: nn.Module, loss: Tensor, lr: float = 0.1) -> nn.Module:
    """``module`` after one plain SGD step on ``loss`` (a copy; gradients by torch.autograd)."""
    after = copy.deepcopy(module)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    with torch.no_grad():
        for p, g in zip(after.parameters(), grads, strict=True):
            p -= lr * g
    return after


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_nopeek_dsl_client_update_equals_a_hand_written_sgd_step(alpha: float) -> None:
    client, _, head = halves()
    x, y = batch()
    z = client(x)
    # dCor written out here, not the package's: double-centred distance matrices, the V-statistic.
    a, b = torch.cdist(x, x), torch.cdist(z, z)
    a = a - a.mean(0) - a.mean(1, keepdim=True) + a.mean()
    b = b - b.mean(0) - b.mean(1, keepdim=True) + b.mean()
    dcor = ((a * b).mean() / ((a * a).mean() * (b * b).mean()).sqrt()).sqrt()
    torch.testing.assert_close(dcor, distance_correlation(x, z))
    expected = sgd(client, cross_entropy(head(z), y) + alpha * dcor)
    got, _, _ = one_step("dsl", CutPrivacy(nopeek_weight=alpha))
    for p, q in zip(got.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_nopeek_sl_client_update_is_end_to_end_plus_the_dcor_term() -> None:
    client, server, _ = halves()
    x, y = batch()
    z = client(x)
    expected = sgd(client, cross_entropy(server(z), y) + 1.5 * NoPeek(1.0)(x, z))
    got, _, _ = one_step("sl", CutPrivacy(nopeek_weight=1.5))
    for p, q in zip(got.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_sl_client_update_goes_through_the_clip_and_the_same_noise() -> None:
    """sl: the client's gradient is the end-to-end one of server(clip(z) + noise), the noise a constant."""
    client, server, _ = halves()
    x, y = batch()
    z = client(x)
    clip, sigma = 0.5 * z.detach().flatten(1).norm(dim=1).median().item(), 0.3
    noise = sigma * clip * torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=z.dtype)
    expected = sgd(client, cross_entropy(server(clip_per_sample(z, clip) + noise), y))
    got, got_server, _ = one_step("sl", CutPrivacy(clip_norm=clip, noise_multiplier=sigma, seed=9))
    for p, q in zip(got.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    expected_server = sgd(server, cross_entropy(server(clip_per_sample(z, clip).detach() + noise), y))
    for p, q in zip(got_server.parameters(), expected_server.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_dsl_client_update_is_bit_exact_without_the_mechanism() -> None:
    plain, _, plain_head = one_step("dsl", None)
    defended, _, defended_head = one_step("dsl", CutPrivacy(clip_norm=0.1, noise_multiplier=2.0, label_epsilon=0.5))
    for p, q in zip(
        [*plain.parameters(), *plain_head.parameters()],
        [*defended.parameters(), *defended_head.parameters()],
        strict=True,
    ):
        assert torch.equal(p, q)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_mechanism_draws_on_the_activations_device() -> None:
    """On a GPU the noise and the labels come from a generator on that device (no host round trip)."""
    z, labels = activations().float().cuda(), (torch.arange(B) % K).cuda()
    cut = Cut(client_transform=CutPrivacy(clip_norm=2.0, noise_multiplier=1.0, label_epsilon=1.0, seed=0).mechanism(K))
    received, sent = cut.send_up(z, labels)
    assert received.device == z.device and sent.device == labels.device
    noise = (received - clip_per_sample(z, 2.0)).flatten()
    assert abs(noise.std().item() - 2.0) < 5 * 2.0 / math.sqrt(2 * noise.numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_clip_of_half_precision_activations_measures_norms_in_float32(dtype: torch.dtype) -> None:
    z = torch.full((2, 4096), 8.0, dtype=dtype)  # norm 512: its sum of squares overflows float16
    clipped = clip_per_sample(z, 100.0)
    assert clipped.dtype == dtype
    torch.testing.assert_close(clipped.float().norm(dim=1), torch.full((2,), 100.0), rtol=1e-2, atol=0)
