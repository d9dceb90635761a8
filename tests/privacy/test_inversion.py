"""The inversion attack succeeds against an (invertible) identity-like client and fails against a blind one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.data import DigitsDataModule
from lightning_dsl.models.transformer import TokenEmbeddings
from lightning_dsl.privacy import InversionDecoder, invert_images, probe_tokens, save_grid

OPTIONS = {"epochs": 10, "width": 16, "batch_size": 32}


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, DigitsDataModule]:
    """400 auxiliary images (training split) and 100 private ones (test split): disjoint, as for the attack."""
    dm = DigitsDataModule()
    dm.setup()
    assert dm.train_set is not None and dm.test_set is not None
    return dm.train_set.tensors[0][:400], dm.test_set.tensors[0][:100], dm


def pixels(dm: DigitsDataModule):  # noqa: ANN201
    return lambda x: x * dm.std + dm.mean


class Constant(nn.Module):
    """A client whose output carries nothing of its input: ``value`` everywhere, of shape (4, 4, 4)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return torch.full((len(x), 4, 4, 4), self.value)


def test_identity_client_is_inverted(digits, single_thread) -> None:  # noqa: ANN001
    auxiliary, private, dm = digits
    report = invert_images(nn.Identity(), auxiliary, private, pixels(dm), **OPTIONS)
    assert report.dcor == pytest.approx(1.0, abs=1e-9)
    assert report.psnr > report.baseline_psnr + 8.0 and report.psnr > 20.0
    assert report.ssim > 0.9 > 0.7 > report.baseline_ssim
    assert report.mse < report.baseline_mse / 5
    shown = torch.tensor([0, 14, 28, 42, 57, 71, 85, 99])  # evenly spaced over the 100 private images
    expected_mse = float(((report.reconstructions - report.originals) ** 2).mean())
    assert expected_mse == pytest.approx(
        float(((report.reconstructions - pixels(dm)(private[shown]).clamp(0, 1)) ** 2).mean()), abs=1e-7
    )
    assert torch.equal(report.originals, pixels(dm)(private[shown]).clamp(0, 1))
    assert (report.auxiliary_samples, report.private_samples) == (400, 100)
    assert tuple(report.originals.shape) == (8, 1, 8, 8) and report.time_s > 0


def test_flat_activation_is_inverted_by_the_linear_decoder(digits, single_thread) -> None:  # noqa: ANN001
    auxiliary, private, dm = digits
    torch.manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(64, 64))
    client = nn.Sequential(nn.Flatten(), nn.Linear(64, 64, bias=False))
    client[1].weight.data.copy_(rotation)
    assert isinstance(InversionDecoder((64,), (1, 8, 8)).body[1], nn.Linear)
    report = invert_images(client, auxiliary, private, pixels(dm), epochs=10, width=128, batch_size=32)
    assert report.psnr > report.baseline_psnr + 8.0


def test_zero_client_gives_exactly_the_baseline(digits, single_thread) -> None:  # noqa: ANN001
    auxiliary, private, dm = digits
    report = invert_images(Constant(0.0), auxiliary, private, pixels(dm), **OPTIONS)
    # The decoder sees the zeros its blind twin sees, from the same seed: the same numbers (to rounding: the twin
    # computes one sample's output for the whole batch).
    assert report.mse == pytest.approx(report.baseline_mse, rel=1e-4)
    assert report.psnr == pytest.approx(report.baseline_psnr, abs=1e-3)
    assert report.ssim == pytest.approx(report.baseline_ssim, abs=1e-4)
    assert report.dcor == 0.0 and report.dcor_corrected == 0.0


def test_constant_client_is_no_better_than_the_baseline(digits, single_thread) -> None:  # noqa: ANN001
    auxiliary, private, dm = digits
    report = invert_images(Constant(3.0), auxiliary, private, pixels(dm), **OPTIONS)
    assert report.psnr == pytest.approx(report.baseline_psnr, abs=0.5)
    assert report.ssim == pytest.approx(report.baseline_ssim, abs=0.05)
    # The baseline is the mean auxiliary image: its MSE on the private images is that image's.
    mean_image = pixels(dm)(auxiliary).clamp(0, 1).mean(0, keepdim=True)
    target = pixels(dm)(private).clamp(0, 1)
    assert report.baseline_mse == pytest.approx(float(((mean_image - target) ** 2).mean()), rel=0.05)


def test_what_the_server_receives_is_what_is_attacked(digits, single_thread) -> None:  # noqa: ANN001
    auxiliary, private, dm = digits
    clean = invert_images(nn.Identity(), auxiliary, private, pixels(dm), **OPTIONS)
    # Nothing received: the decoder sees zeros, as its blind twin, whatever the client computes.
    erased = invert_images(nn.Identity(), auxiliary, private, pixels(dm), received=torch.zeros_like, **OPTIONS)
    assert erased.psnr == pytest.approx(erased.baseline_psnr, abs=1e-3) and erased.dcor == 0.0
    # Noise far above the signal: the attack fails, though the client is the identity.
    generator = torch.Generator().manual_seed(0)
    noisy = invert_images(
        nn.Identity(),
        auxiliary,
        private,
        pixels(dm),
        received=lambda z: z + 10.0 * torch.randn(z.shape, generator=generator),
        **OPTIONS,
    )
    assert noisy.psnr < min(clean.psnr - 5.0, noisy.baseline_psnr + 1.0)
    # dCor falls less: the V-statistic of a batch of 32 high-dimensional samples is biased up (0.86 here);
    # the bias-corrected dCor² falls to about 0.
    assert noisy.dcor < clean.dcor and clean.dcor_corrected == pytest.approx(1.0, abs=1e-9)
    assert abs(noisy.dcor_corrected) < 0.1 < 0.5 < noisy.dcor
    assert noisy.baseline_psnr == pytest.approx(clean.baseline_psnr, abs=1e-6)  # the baseline sees no activations


def test_decoder_shapes() -> None:
    for z_shape, x_shape in (((16, 32, 32), (3, 32, 32)), ((32, 16, 16), (3, 32, 32)), ((64, 3, 3), (1, 8, 8))):
        assert tuple(InversionDecoder(z_shape, x_shape)(torch.zeros(2, *z_shape)).shape) == (2, *x_shape)
    with pytest.raises(ValueError, match="`x_shape` to be an image's"):
        InversionDecoder((4,), (8, 8))


def test_text_inputs_are_refused_naming_the_text_metric(digits) -> None:  # noqa: ANN001
    ids = torch.randint(1, 9, (4, 5))
    with pytest.raises(ValueError, match="token_accuracy"):
        invert_images(nn.Identity(), MaskedSequence(ids, ids > 0), digits[1], lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_accuracy"):
        invert_images(nn.Identity(), ids, ids, lambda x: x)
    with pytest.raises(ValueError, match="for images measure mse, psnr and ssim"):
        probe_tokens(nn.Identity(), [digits[1]], [digits[1]], vocab_size=10)  # type: ignore[list-item]


def test_grid_png(tmp_path: Path) -> None:
    originals, reconstructions = torch.zeros(8, 1, 8, 8), torch.ones(8, 1, 8, 8)
    path = save_grid(originals, reconstructions, tmp_path / "out" / "reconstructions.png")
    image = Image.open(path).convert("L")
    # 8 images of 8x8 enlarged 4x, padding 2: 8 * 34 + 2 wide, 2 rows of 34 + 2 high.
    assert image.size == (8 * 34 + 2, 2 * 34 + 2)
    assert image.getpixel((2 + 16, 2 + 16)) == 0  # an original (black) above
    assert image.getpixel((2 + 16, 36 + 16)) == 255  # its reconstruction (white) below


def token_batches(count: int, seed: int) -> list[MaskedSequence]:
    """Batches of 16 sequences of up to 12 ids, Zipf-like so that one token is the most frequent."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = (torch.rand(16, 12, generator=generator) ** 3 * 49).long() + 1
        lengths = torch.randint(4, 13, (16,), generator=generator)
        mask = torch.arange(12)[None, :] < lengths[:, None]
        batches.append(MaskedSequence(ids.masked_fill(~mask, 0), mask))
    return batches


class ZeroStates(nn.Module):
    def forward(self, x: MaskedSequence) -> MaskedSequence:
        return x.with_values(torch.zeros(*x.values.shape, 8))


def test_token_probe_recovers_embedded_tokens_and_not_blind_ones(single_thread) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    embeddings = TokenEmbeddings(vocab_size=50, max_length=12, dim=32, dropout=0.0)
    auxiliary, private = token_batches(20, 1), token_batches(5, 2)
    report = probe_tokens(embeddings, auxiliary, private, vocab_size=50, epochs=60, lr=1e-2)
    ids = torch.cat([b.values[b.mask] for b in private])
    most_frequent = int(torch.bincount(torch.cat([b.values[b.mask] for b in auxiliary])).argmax())
    assert report.baseline_token_accuracy == pytest.approx(float((ids == most_frequent).float().mean()))
    assert report.private_tokens == len(ids)
    assert report.token_accuracy > 0.95 > 0.5 > report.baseline_token_accuracy
    blind = probe_tokens(ZeroStates(), auxiliary, private, vocab_size=50, epochs=60, lr=1e-2)
    assert blind.token_accuracy == pytest.approx(blind.baseline_token_accuracy)
    assert blind.dcor == 0.0
