"""Inversion by a curious server: a decoder trained on auxiliary pairs (x, z) reconstructs private inputs.

He et al. (2019, "Model inversion attacks against collaborative inference"), the black-box inverse network:
the attacker holds the client half (its weights: the SplitFed server after a FedAvg round, or anyone with a
leaked checkpoint) and an auxiliary data set disjoint from the clients' training data. It computes
``z = client(x)`` on the auxiliary inputs, trains a decoder ``z -> x`` on those pairs, and applies it to the
activations of the clients' private inputs. The figures are read against a baseline: the same decoder
trained on zeros in place of ``z`` — it sees nothing of the input and learns the mean auxiliary image.

Images are compared in pixel space, ``[0, 1]``: the caller passes ``to_pixels``, which undoes the data's
normalization. For text models, :func:`~lightning_dsl.privacy.tokens.probe_tokens` is the analogue.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.privacy.distance import bias_corrected_distance_correlation, distance_correlation

PixelMap = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class InversionReport:
    """The attack's figures on the private inputs (pixel space ``[0, 1]``) and the zeros-in baseline's.

    ``originals`` and ``reconstructions`` are a few private images, evenly spaced over the private set, and the
    attack's reconstructions of them (for a grid); they are left out of :meth:`figures`. ``dcor`` is the
    V-statistic, biased up in high dimension; ``dcor_corrected`` the bias-corrected ``dCor²``
    (:func:`~lightning_dsl.privacy.bias_corrected_distance_correlation`), near 0 for what carries nothing.
    """

    mse: float
    psnr: float
    ssim: float
    dcor: float
    dcor_corrected: float
    baseline_mse: float
    baseline_psnr: float
    baseline_ssim: float
    auxiliary_samples: int
    private_samples: int
    time_s: float
    originals: Tensor = field(repr=False)
    reconstructions: Tensor = field(repr=False)

    def figures(self) -> dict[str, float | int]:
        """The numbers, as a JSON-ready dict."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, Tensor)}


class InversionDecoder(nn.Module):
    """A small decoder from a cut activation of shape ``z_shape`` to an image of shape ``x_shape``.

    Image-like ``z`` (``[C, h, w]``): a 3x3 convolution to ``width`` channels, one stride-2 transposed
    convolution per doubling of the side up to the image's, a resize when the sides still differ, and
    a 3x3 convolution to the image's channels. Any other ``z``: flattened, two linear layers, reshaped.
    A learned per-pixel bias (initialised to the mean auxiliary image by :func:`invert_images`) is added
    last, so a decoder that sees nothing ends at the mean image.

    Args:
        z_shape: one sample's cut activation shape.
        x_shape: one image's shape ``(C, H, W)``.
        width: channels (conv decoder) or hidden units (linear decoder).

    Example::

        >>> decoder = InversionDecoder((16, 8, 8), (3, 32, 32))
        >>> tuple(decoder(torch.zeros(2, 16, 8, 8)).shape)
        (2, 3, 32, 32)
    """

    def __init__(self, z_shape: Sequence[int], x_shape: Sequence[int], width: int = 64) -> None:
        super().__init__()
        z_shape, x_shape = tuple(z_shape), tuple(x_shape)
        if len(x_shape) != 3:
            raise ValueError(f"Expected argument `x_shape` to be an image's (C, H, W), but got {x_shape}.")
        if width < 1:
            raise ValueError(f"Expected argument `width` to be a positive integer, but got {width}.")
        self.x_shape, self.z_shape = x_shape, z_shape
        layers: list[nn.Module]
        if len(z_shape) == 3:
            height, width_z = z_shape[1], z_shape[2]
            layers = [nn.Conv2d(z_shape[0], width, 3, padding=1), nn.ReLU()]
            while height * 2 <= x_shape[1] and width_z * 2 <= x_shape[2]:
                layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU()]
                height, width_z = height * 2, width_z * 2
            if (height, width_z) != x_shape[1:]:
                layers.append(nn.Upsample(size=x_shape[1:], mode="bilinear", align_corners=False))
            layers.append(nn.Conv2d(width, x_shape[0], 3, padding=1))
        else:
            layers = [
                nn.Flatten(),
                nn.Linear(math.prod(z_shape), width),
                nn.ReLU(),
                nn.Linear(width, math.prod(x_shape)),
                nn.Unflatten(1, x_shape),
            ]
        self.body = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(x_shape))

    def forward(self, z: Tensor) -> Tensor:  # noqa: D102
        return self.body(z) + self.bias


def invert_images(
    client: nn.Module,
    auxiliary: Tensor,
    private: Tensor,
    to_pixels: PixelMap,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    width: int = 32,
    seed: int = 0,
    grid_samples: int = 8,
    received: Callable[[Tensor], Tensor] | None = None,
) -> InversionReport:
    """Train the inversion decoder on ``(client(auxiliary), auxiliary)`` and reconstruct ``private``.

    The client runs in eval mode without gradients (the attacker only queries it). The decoder and its
    zeros-in twin are trained alike (Adam, MSE in pixel space, the same seed and batch order) for
    ``epochs`` passes over the auxiliary set. MSE, PSNR (torchmetrics, ``data_range=1``, over all
    pixels) and SSIM (torchmetrics, ``data_range=1``, mean over images; Gaussian window 11, or the largest
    odd size that fits a smaller image) compare the reconstructions, clamped to ``[0, 1]``, with
    ``to_pixels(private)``. ``dcor`` is :func:`~lightning_dsl.privacy.distance_correlation` of the private
    inputs and their activations, per batch of ``batch_size``, averaged weighted by batch size; so is
    ``dcor_corrected``, the bias-corrected ``dCor²`` (batches of at least 4).

    With ``received`` (a defense on the client's side of the cut: clipping, noise), the server sees
    ``received(client(x))``, not ``client(x)``: the private activations pass through it, and so do the
    auxiliary ones (the attacker knows the mechanism and its parameters, as it knows the client's weights, and
    trains its decoder on what it would receive); ``dcor`` is then of the inputs and what was received.

    Args:
        client: the client half, as the attacker holds it.
        auxiliary: the attacker's own inputs ``[N, C, H, W]``, normalized like the training data.
        private: the clients' inputs to reconstruct, ``[M, C, H, W]``, normalized likewise.
        to_pixels: maps normalized inputs to pixels in ``[0, 1]`` (undoes the normalization).
        epochs: passes over the auxiliary set.
        batch_size: batch size of the decoder's training, of the metrics and of the dCor.
        lr: Adam's learning rate.
        width: the decoder's width (:class:`InversionDecoder`).
        seed: seeds the decoders' initialisation and the batch order.
        grid_samples: how many private images (and reconstructions) the report keeps for a grid, evenly spaced.
        received: what the server receives of a batch of activations (``None``: the activations themselves);
            applied batch by batch, under ``torch.no_grad``.

    Raises:
        ValueError: if the inputs are token sequences or not image batches ``[N, C, H, W]`` (for text, the
            figure is ``token_accuracy``: :func:`~lightning_dsl.privacy.tokens.probe_tokens`), if the two
            sets' image shapes differ, or a count argument is not positive.
    """
    for name, value in (("auxiliary", auxiliary), ("private", private)):
        if isinstance(value, MaskedSequence) or not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(
                f"Image metrics (mse, psnr, ssim) need image inputs, but argument `{name}` holds"
                f" {type(value).__name__ if not isinstance(value, Tensor) else value.dtype} (token ids?): for text,"
                " measure `token_accuracy` with lightning_dsl.privacy.probe_tokens."
            )
        if value.ndim != 4 or len(value) < 2:
            raise ValueError(
                f"Expected argument `{name}` to be a batch of at least 2 images [N, C, H, W], but got shape"
                f" {tuple(value.shape)}."
            )
    if auxiliary.shape[1:] != private.shape[1:]:
        raise ValueError(
            f"Expected `auxiliary` and `private` images of one shape, but got {tuple(auxiliary.shape[1:])} and"
            f" {tuple(private.shape[1:])}."
        )
    for name, number in (("epochs", epochs), ("batch_size", batch_size), ("width", width)):
        if number < 1:
            raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {number}.")
    start = time.perf_counter()
    device = _device_of(client, auxiliary)
    client = client.eval()
    z_aux = _activations(client, auxiliary, batch_size, device, received)
    x_aux = to_pixels(auxiliary).clamp(0.0, 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = InversionDecoder(z_aux.shape[1:], auxiliary.shape[1:], width)
        torch.manual_seed(seed)
        blind = InversionDecoder(z_aux.shape[1:], auxiliary.shape[1:], width)
    order = torch.Generator().manual_seed(seed)
    permutations = [torch.randperm(len(auxiliary), generator=order) for _ in range(epochs)]
    mean_image = x_aux.mean(dim=0)
    _train(decoder, z_aux, x_aux, mean_image, permutations, batch_size, lr, device)
    _train(blind, None, x_aux, mean_image, permutations, batch_size, lr, device)

    x_private = to_pixels(private).clamp(0.0, 1.0)
    z_private = _activations(client, private, batch_size, device, received)
    reconstructed = _decode(decoder, z_private, batch_size, device)
    with torch.no_grad():
        guessed = blind(torch.zeros_like(z_private[:1]).to(device)).clamp(0.0, 1.0).expand_as(reconstructed)
    attack, baseline = _image_metrics(reconstructed, x_private), _image_metrics(guessed, x_private)
    dcor, corrected, samples, corrected_samples = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(private), batch_size):
            x, z = private[begin : begin + batch_size], z_private[begin : begin + batch_size]
            if len(x) >= 2:
                dcor += float(distance_correlation(x, z, dtype=torch.float64)) * len(x)
                samples += len(x)
            if len(x) >= 4:
                corrected += float(bias_corrected_distance_correlation(x, z, dtype=torch.float64)) * len(x)
                corrected_samples += len(x)
    # Spread over the private set (a split stored by class would show one class in its first rows).
    shown = torch.linspace(0, len(private) - 1, min(grid_samples, len(private))).round().long().to(x_private.device)
    return InversionReport(
        mse=attack[0],
        psnr=attack[1],
        ssim=attack[2],
        dcor=dcor / samples,
        dcor_corrected=corrected / corrected_samples if corrected_samples else float("nan"),
        baseline_mse=baseline[0],
        baseline_psnr=baseline[1],
        baseline_ssim=baseline[2],
        auxiliary_samples=len(auxiliary),
        private_samples=len(private),
        time_s=time.perf_counter() - start,
        originals=x_private[shown].cpu(),
        reconstructions=reconstructed[shown].cpu(),
    )


def pixel_map(data: object) -> PixelMap:
    """Undo a data module's normalization (its ``mean`` and ``std``, scalars or per channel); identity without them."""
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if mean is None or std is None:
        return lambda x: x
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return lambda x: x * std_t.to(x.device) + mean_t.to(x.device)


def save_grid(originals: Tensor, reconstructions: Tensor, path: str | Path, min_side: int = 32) -> Path:
    """Write a PNG with the originals in the top row and their reconstructions below (pixels in ``[0, 1]``).

    Images smaller than ``min_side`` pixels are enlarged (nearest neighbour) so that they can be seen.
    """
    from torchvision.utils import save_image

    images = torch.cat([originals, reconstructions]).clamp(0.0, 1.0)
    side = min(images.shape[-2:])
    if side < min_side:
        images = nn.functional.interpolate(images, scale_factor=math.ceil(min_side / side), mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=len(originals), padding=2, pad_value=1.0)
    return path


def _device_of(client: nn.Module, fallback: Tensor) -> torch.device:
    parameter = next(client.parameters(), None)
    return parameter.device if parameter is not None else fallback.device


def _activations(
    client: nn.Module,
    inputs: Tensor,
    batch_size: int,
    device: torch.device,
    received: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    with torch.no_grad():
        parts = [client(inputs[i : i + batch_size].to(device)) for i in range(0, len(inputs), batch_size)]
        if any(not isinstance(z, Tensor) for z in parts):
            raise ValueError(
                f"Expected the client to return a tensor for image inputs, but it returned {type(parts[0]).__name__}."
            )
        if received is not None:
            parts = [received(z) for z in parts]
    return torch.cat(parts).float()


def _train(
    decoder: InversionDecoder,
    z: Tensor | None,
    x: Tensor,
    mean_image: Tensor,
    permutations: list[Tensor],
    batch_size: int,
    lr: float,
    device: torch.device,
) -> None:
    decoder.to(device).train()
    with torch.no_grad():
        decoder.bias.copy_(mean_image)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    zeros = torch.zeros(1, *decoder.z_shape, device=device)
    for permutation in permutations:
        for begin in range(0, len(permutation), batch_size):
            index = permutation[begin : begin + batch_size]
            target = x[index].to(device)
            # Zeros in (z is None): every sample's output is the same, so one sample's stands for the batch's.
            output = decoder(zeros).expand_as(target) if z is None else decoder(z[index].to(device))
            loss = nn.functional.mse_loss(output, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    decoder.eval()


def _decode(decoder: InversionDecoder, z: Tensor, batch_size: int, device: torch.device) -> Tensor:
    with torch.no_grad():
        parts = [decoder(z[i : i + batch_size].to(device)) for i in range(0, len(z), batch_size)]
    return torch.cat(parts).clamp(0.0, 1.0)


def _image_metrics(predicted: Tensor, target: Tensor) -> tuple[float, float, float]:
    """(MSE, PSNR, SSIM) of ``predicted`` against ``target``, both in ``[0, 1]``."""
    target = target.to(predicted.device)
    side = min(target.shape[-2:])
    kernel = 11 if side >= 11 else side - (1 - side % 2)
    psnr = PeakSignalNoiseRatio(data_range=1.0).to(predicted.device)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=kernel).to(predicted.device)
    mse = float(nn.functional.mse_loss(predicted, target))
    return mse, float(psnr(predicted, target)), float(ssim(predicted, target))
