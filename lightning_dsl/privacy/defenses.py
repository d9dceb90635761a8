"""Defenses at the cut: the Gaussian mechanism on the activations, NoPeek, randomized labels.

:class:`CutPrivacy` holds the checked options (the module's ``privacy`` argument). It builds

* a :class:`CutMechanism`, the client's :class:`~lightning_dsl.core.cut.ClientTransform`: every batch the
  client sends up has each sample's activation clipped to L2 norm ``clip_norm`` (all its values together)
  and ``N(0, (noise_multiplier · clip_norm)²)`` added to each element, and its labels passed through
  k-ary randomized response at ``label_epsilon``, before the codec encodes it. The client's own loss
  never sees any of it: in ``dsl`` its training is exactly as without the mechanism;
* :class:`NoPeek`, the client's regularizer ``nopeek_weight · dCor(x, z)`` (Vepakomma et al., 2020), added
  to the auxiliary loss in ``dsl`` and to the client's objective in ``sl`` and ``hybrid``.

What the budgets cover is in :mod:`lightning_dsl.privacy.accounting`. The noise and the randomized labels
come from generators of their own (never torch's global one), so a defended run draws the same data
order, dropout and initialisation as an undefended one with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from lightning_dsl.core.cut import ClientTransform
from lightning_dsl.core.sequence import Activation, replace_values, values_of
from lightning_dsl.privacy.accounting import activation_epsilon, label_epsilon
from lightning_dsl.privacy.distance import distance_correlation

_CLIENT_STRIDE = 1_000_003  # the seeds of two clients' generators differ by this (a prime)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CutPrivacy:
    """What the client does to protect what it sends up: noise with a budget, NoPeek, randomized labels.

    Every field is off by default; each can be used alone or with the others.

    Args:
        clip_norm: ``C``: each sample's cut activation is clipped to L2 norm ``≤ C`` (all its values
            together) before it is sent. Required with noise. ``None``: no clipping.
        noise_multiplier: ``σ``: ``N(0, σ²C²)`` is added to each element of what is sent. ``0``: no noise.
        delta: the ``δ`` of the activations' budget ``privacy/epsilon`` (default ``1e-5``).
        nopeek_weight: ``α``: the client adds ``α · dCor(x, z)`` of each batch to its objective. ``0``: off.
        label_epsilon: ``ε`` of k-ary randomized response on the labels sent up (kept with probability
            ``e^ε / (e^ε + k - 1)``, else one of the other ``k - 1`` classes uniformly), drawn afresh each
            time a label is sent; the run's label budget is ``ε · epochs``. ``None``: labels sent as they are.
        seed: seed of the noise and label generators; ``None``: ``torch.initial_seed()`` (the run's seed).

    Raises:
        ValueError: naming the field, its value and what is allowed, at construction.

    Example::

        >>> privacy = CutPrivacy(clip_norm=1.0, noise_multiplier=1.0)
        >>> round(privacy.epsilon(epochs=10), 4)
        19.0536
        >>> CutPrivacy(noise_multiplier=1.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected field `clip_norm` to be a number > 0 when `noise_multiplier` > 0 (the noise is σ·C), ...
    """

    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    nopeek_weight: float = 0.0
    label_epsilon: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        sigma, clip = self.noise_multiplier, self.clip_norm
        if not _is_number(sigma) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"Expected field `noise_multiplier` to be a finite number >= 0, but got {sigma!r}.")
        if clip is not None and (not _is_number(clip) or not math.isfinite(clip) or clip <= 0):
            raise ValueError(f"Expected field `clip_norm` to be a finite number > 0 or None, but got {clip!r}.")
        if sigma > 0 and clip is None:
            raise ValueError(
                f"Expected field `clip_norm` to be a number > 0 when `noise_multiplier` > 0 (the noise is σ·C), but"
                f" got clip_norm=None with noise_multiplier={sigma!r}: set clip_norm (for instance the median"
                " per-sample L2 norm of the cut activations), or noise_multiplier=0."
            )
        if not _is_number(self.delta) or not 0 < self.delta < 1:
            raise ValueError(f"Expected field `delta` to be a number in (0, 1), but got {self.delta!r}.")
        alpha = self.nopeek_weight
        if not _is_number(alpha) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"Expected field `nopeek_weight` to be a finite number >= 0, but got {alpha!r}.")
        eps = self.label_epsilon
        if eps is not None and (not _is_number(eps) or not math.isfinite(eps) or eps <= 0):
            raise ValueError(f"Expected field `label_epsilon` to be a finite number > 0 or None, but got {eps!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"Expected field `seed` to be an int >= 0 or None, but got {self.seed!r}.")

    @classmethod
    def coerce(cls, value: Any, name: str = "privacy") -> CutPrivacy | None:
        """``value`` as a :class:`CutPrivacy`: one itself, a mapping of its fields (a checkpoint's), or ``None``."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                allowed = [f.name for f in fields(cls)]
                raise ValueError(f"Unknown keys {unknown} in argument `{name}`: allowed are {allowed}.")
            return cls(**value)
        raise ValueError(
            f"Expected argument `{name}` to be a lightning_dsl.privacy.CutPrivacy, a dict of its fields or None,"
            f" but got {type(value).__name__}."
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (what a checkpoint's hyperparameters keep)."""
        return asdict(self)

    @property
    def transforms_cut(self) -> bool:
        """Whether anything sent up is changed (a clip, noise or randomized labels)."""
        return self.clip_norm is not None or self.label_epsilon is not None

    def mechanism(self, num_classes: int) -> CutMechanism | None:
        """The client transform for ``num_classes`` classes, or ``None`` when nothing sent up changes."""
        return CutMechanism(self, num_classes) if self.transforms_cut else None

    def regularizer(self) -> NoPeek | None:
        """NoPeek's ``α · dCor(x, z)``, or ``None`` when ``nopeek_weight`` is 0."""
        return NoPeek(self.nopeek_weight) if self.nopeek_weight > 0 else None

    def epsilon(self, epochs: int) -> float | None:
        """The activations' ε at :attr:`delta` after ``epochs`` epochs; ``None`` without noise."""
        return activation_epsilon(self.noise_multiplier, epochs, self.delta) if self.noise_multiplier > 0 else None

    def label_budget(self, epochs: int) -> float | None:
        """The labels' ε after ``epochs`` epochs (``label_epsilon · epochs``); ``None`` without label privacy."""
        return None if self.label_epsilon is None else label_epsilon(self.label_epsilon, epochs)

    def budgets(self, epochs: int) -> dict[str, float]:
        """What a run logs after ``epochs`` epochs: ``privacy/epsilon`` and ``privacy/label_epsilon`` when defined."""
        found = {"privacy/epsilon": self.epsilon(epochs), "privacy/label_epsilon": self.label_budget(epochs)}
        return {key: value for key, value in found.items() if value is not None}


def clip_per_sample(values: Tensor, clip_norm: float) -> Tensor:
    """Each sample (row of the first dimension) scaled down to L2 norm ``≤ clip_norm``; differentiable.

    Example::

        >>> clip_per_sample(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """
    # In float32 at least: a half-precision sum of squares overflows above a norm of 256. The factor's gradient
    # flows through the norm, as a clip's does.
    wide = values if values.dtype in (torch.float32, torch.float64) else values.float()
    norms = wide.flatten(1).norm(dim=1) if values.dim() > 1 else wide.abs()
    factor = torch.where(norms > clip_norm, clip_norm / norms.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
    return values * factor.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))


def randomized_response(labels: Tensor, num_classes: int, epsilon: float, generator: torch.Generator) -> Tensor:
    """k-ary randomized response: each label kept with probability ``e^ε / (e^ε + k - 1)``, else another, uniformly.

    ``ε``-differentially private for one label (the ratio of any two outputs' probabilities is at most ``e^ε``).
    """
    k = num_classes
    keep = 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))
    draw = torch.rand(labels.shape, generator=generator, device=labels.device)
    other = torch.randint(0, k - 1, labels.shape, generator=generator, device=labels.device, dtype=labels.dtype)
    other = other + (other >= labels).to(labels.dtype)  # one of the k - 1 classes that are not the label
    return torch.where(draw < keep, labels, other)


class CutMechanism(ClientTransform):
    """The client transform of a :class:`CutPrivacy`: clip (``bound``), then noise and randomized labels (``release``).

    Args:
        privacy: the options.
        num_classes: ``k`` of the randomized response.
    """

    def __init__(self, privacy: CutPrivacy, num_classes: int) -> None:
        self.privacy = privacy
        self.num_classes = num_classes
        self._generators: dict[tuple[str, int], torch.Generator] = {}

    def _generator(self, device: torch.device, client: int) -> torch.Generator:
        key = (str(device), client)
        if key not in self._generators:
            base = torch.initial_seed() if self.privacy.seed is None else self.privacy.seed
            generator = torch.Generator(device=device)
            generator.manual_seed((base + _CLIENT_STRIDE * client) % 2**63)
            self._generators[key] = generator
        return self._generators[key]

    def bound(self, activations: Activation) -> Activation:
        """Each sample's values clipped to L2 norm ``≤ clip_norm`` (no clip when ``clip_norm`` is ``None``)."""
        clip = self.privacy.clip_norm
        if clip is None:
            return activations
        return replace_values(activations, clip_per_sample(values_of(activations), clip))

    def release(self, activations: Activation, labels: Tensor, client: int = 0) -> tuple[Activation, Tensor]:
        """Gaussian noise ``N(0, σ²C²)`` on each value sent, randomized response on the labels."""
        privacy = self.privacy
        if privacy.noise_multiplier > 0:
            assert privacy.clip_norm is not None
            values = values_of(activations)
            noise = torch.randn(
                values.shape, generator=self._generator(values.device, client), device=values.device, dtype=values.dtype
            )
            activations = replace_values(activations, values + (privacy.noise_multiplier * privacy.clip_norm) * noise)
        if privacy.label_epsilon is not None and labels.numel():
            self.check_labels(labels)
            labels = randomized_response(
                labels, self.num_classes, privacy.label_epsilon, self._generator(labels.device, client)
            )
        return activations, labels

    def check_labels(self, labels: Tensor) -> None:
        """Refuse labels that randomized response cannot take: anything but class indices in ``[0, k)``."""
        if self.privacy.label_epsilon is None:
            return
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(
                f"Field `label_epsilon`={self.privacy.label_epsilon} randomizes class labels, but the batch's labels"
                f" have dtype {labels.dtype}: label privacy needs integer class indices in [0, {self.num_classes - 1}]"
                " (leave label_epsilon=None for other labels)."
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise ValueError(
                f"Field `label_epsilon`={self.privacy.label_epsilon} randomizes class labels, but a batch has label"
                f" {bad}: label privacy needs class indices in [0, {self.num_classes - 1}] (`num_classes`)."
            )


class NoPeek:
    """NoPeek's client regularizer: ``weight · dCor(x, z)`` of a batch (0 for a batch of one sample).

    Args:
        weight: ``α`` (``nopeek_weight``).
    """

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, inputs: Activation, z: Activation) -> Tensor:  # noqa: D102
        if len(values_of(z)) < 2:  # a distance correlation needs two samples
            return values_of(z).sum() * 0.0
        return self.weight * distance_correlation(inputs, z)
