"""The CIFAR ResNets of He et al. (2016), Section 4.2, for every depth ``6n + 2``.

A 3x3 stem with 16 channels, three stages of ``n`` basic blocks at 16, 32 and 64 channels
(stride 2 at the first block of stages 2 and 3), parameter-free "option A" shortcuts that
subsample and zero-pad channels, global average pooling and a linear head.

Parameter and buffer names follow the reference implementation
(akamaster/pytorch_resnet_cifar10: ``conv1``, ``bn1``, ``layer1``-``layer3``, ``linear``), so
its published checkpoints load with :func:`cifar_resnet`'s ``weights`` argument.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dsl.models.registry import register_model

_MAX_LISTED_KEYS = 8


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels, with no parameters.

    The new channels are split evenly before and after the existing ones, as in the
    reference implementation (this placement is what the published weights expect).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output, at least ``in_channels``.
        stride: spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"Expected argument `out_channels` to be at least `in_channels`={in_channels} (the shortcut only"
                f" pads), but got {out_channels}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Subsample ``x`` spatially and pad it with zero channels."""
        pad = self.out_channels - self.in_channels
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, pad // 2, pad - pad // 2))

    def extra_repr(self) -> str:
        """Show the channels and stride in the module's repr."""
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, ReLU after the sum.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CIFARResNetStem(nn.Module):
    """First cut unit of a :class:`CIFARResNet`: its ``conv1``, ``bn1`` (shared, not copied) and a ReLU."""

    def __init__(self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = conv1
        self.bn1 = bn1
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(bn1(conv1(x)))``."""
        return self.relu(self.bn1(self.conv1(x)))


class CIFARResNetHead(nn.Module):
    """Last cut unit of a :class:`CIFARResNet`: global average pool, flatten and its ``linear`` (shared)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for the feature map ``x``."""
        return self.linear(self.flatten(self.avgpool(x)))


class CIFARResNet(nn.Module):
    """ResNet for 32x32 images with ``depth = 6n + 2`` layers (He et al. 2016, Section 4.2).

    The network can be cut (see :mod:`lightning_dsl.core.split`): :meth:`cut_units` returns the
    stem, the ``3n`` basic blocks and the head, ``3n + 2`` units in all, and :meth:`named_cuts`
    names three cut depths.

    Args:
        depth: number of weighted layers, ``6n + 2`` with ``n >= 1`` (20, 32, 44, 56, 110, 1202, ...).
        num_classes: size of the output.

    Example::

        >>> import torch
        >>> net = CIFARResNet(110).eval()
        >>> len(net.cut_units()), net.named_cuts()
        (56, {'shallow': 19, 'middle': 28, 'deep': 37})
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.equal(nn.Sequential(*net.cut_units())(x), net(x))
        True
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        _check_depth(depth)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive integer, but got {num_classes!r}.")
        self.depth = depth
        self.num_blocks = (depth - 2) // 6
        self.num_classes = num_classes

        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 16, stride=1)
        self.layer2 = self._make_layer(16, 32, stride=2)
        self.layer3 = self._make_layer(32, 64, stride=2)
        self.linear = nn.Linear(64, num_classes)

        # As in the reference implementation: Kaiming-normal weights, PyTorch's default linear bias.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def _make_layer(self, in_planes: int, planes: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(self.num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch of images ``x`` of shape ``(N, 3, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    def cut_units(self) -> list[nn.Module]:
        """Return ``[stem, *layer1, *layer2, *layer3, head]``: ``3n + 2`` units sharing this network's parameters.

        The stem and head wrappers are built on each call and are not children of this
        network, so :meth:`state_dict` keeps the canonical names.
        """
        return [
            CIFARResNetStem(self.conv1, self.bn1),
            *self.layer1,
            *self.layer2,
            *self.layer3,
            CIFARResNetHead(self.linear),
        ]

    def named_cuts(self) -> dict[str, int]:
        """Return the three cut depths of the paper as split indices (number of units on the client).

        * ``"shallow"``: after stage 1, ``1 + n``;
        * ``"middle"``: half-way through stage 2, after its first ``n // 2`` blocks, ``1 + n + n // 2``;
        * ``"deep"``: after stage 2, ``1 + 2n``.

        For ResNet-110 (``n = 18``) these are 19, 28 and 37; for ResNet-20 (``n = 3``) 4, 5 and 7.
        With ``n = 1`` (ResNet-8) ``"middle"`` coincides with ``"shallow"``.
        """
        n = self.num_blocks
        return {"shallow": 1 + n, "middle": 1 + n + n // 2, "deep": 1 + 2 * n}


def _check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            "Expected argument `depth` to be 6n + 2 for an integer n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...),"
            f" but got {depth!r}."
        )


def cifar_resnet(depth: int, num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """Build a :class:`CIFARResNet`, optionally loading weights.

    Args:
        depth: number of weighted layers, ``6n + 2`` with ``n >= 1`` (20, 32, 44, 56, 110, 1202, ...).
        num_classes: size of the output.
        weights: a local path or an ``http(s)://`` URL of a checkpoint, either in the format published
            with the reference implementation (``{"state_dict": ..., "best_prec1": ...}``, keys prefixed
            with ``module.``) or a plain state dict, with or without that prefix. The file must come from
            a source you trust: a checkpoint that ``torch.load(weights_only=True)`` rejects is unpickled
            in full, which can run code.

    Raises:
        ValueError: for a bad ``depth`` or ``num_classes``, or weights that do not fit the network.
        FileNotFoundError: if ``weights`` is a path with no file.

    Example::

        >>> net = cifar_resnet(20)
        >>> sum(p.numel() for p in net.parameters())
        269722
    """
    model = CIFARResNet(depth, num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, weights: str | os.PathLike[str]) -> None:
    """Load the checkpoint ``weights`` (path or ``http(s)://`` URL) into ``model``, strictly.

    Accepts ``{"state_dict": ...}`` checkpoints and plain state dicts; a ``module.`` prefix
    (from ``DataParallel``) is stripped. Nothing is loaded unless every key and shape fits.

    Raises:
        FileNotFoundError: if ``weights`` is a path with no file.
        ValueError: if the checkpoint holds no state dict, or its keys or shapes do not fit ``model``.
    """
    state_dict = _extract_state_dict(_read_checkpoint(weights), weights)
    expected = model.state_dict()
    # Checkpoints from PyTorch < 0.4 have no `num_batches_tracked`; BatchNorm fills it in when loading.
    missing = [k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} ({len(items)}): {_shorten(items)}"
            for label, items in (
                ("missing from the checkpoint", missing),
                ("unexpected in the checkpoint", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"The checkpoint given as `weights`={str(weights)!r} does not fit this {_describe(model)}; "
            + "; ".join(problems)
            + f". {_describe_checkpoint(state_dict)}"
        )
    model.load_state_dict(state_dict, strict=True)


def _read_checkpoint(weights: str | os.PathLike[str]) -> Any:
    source = os.fspath(weights)
    is_url = source.startswith(("http://", "https://"))
    if not is_url and not Path(source).expanduser().is_file():
        raise FileNotFoundError(
            f"Expected argument `weights` to be a checkpoint file or an http(s) URL, but got {source!r}:"
            f" there is no file at {Path(source).expanduser().resolve()}."
        )

    def load(weights_only: bool) -> Any:
        if is_url:
            return torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=weights_only)
        return torch.load(Path(source).expanduser(), map_location="cpu", weights_only=weights_only)

    try:
        return load(weights_only=True)
    except pickle.UnpicklingError:
        # The file holds more than tensors and containers. Unpickling it in full can run code from
        # it, so the file must be trusted (the docstring of `cifar_resnet` says so).
        warnings.warn(
            f"The checkpoint {source!r} cannot be loaded with `weights_only=True`; loading it with"
            " `weights_only=False`, which trusts the file.",
            UserWarning,
            stacklevel=3,
        )
        return load(weights_only=False)


def _extract_state_dict(checkpoint: Any, weights: str | os.PathLike[str]) -> dict[str, Tensor]:
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(
            f"Expected argument `weights` to name a state dict or a dict with a 'state_dict' entry, but"
            f" {str(weights)!r} holds a {type(checkpoint).__name__} that is neither."
        )
    prefix = "module."
    if checkpoint and all(str(k).startswith(prefix) for k in checkpoint):
        return {str(k)[len(prefix) :]: v for k, v in checkpoint.items()}
    return {str(k): v for k, v in checkpoint.items()}


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    return shown + (f", ... and {len(items) - _MAX_LISTED_KEYS} more" if len(items) > _MAX_LISTED_KEYS else "")


def _describe(model: nn.Module) -> str:
    if isinstance(model, CIFARResNet):
        return f"CIFARResNet(depth={model.depth}, num_classes={model.num_classes})"
    return type(model).__name__


def _describe_checkpoint(state_dict: Mapping[str, Tensor]) -> str:
    """Guess ``depth`` and ``num_classes`` of a CIFAR-ResNet checkpoint, to point at the likely mistake."""
    blocks = {k.split(".")[1] for k in state_dict if k.startswith("layer1.")}
    head = state_dict.get("linear.weight")
    if not blocks or head is None or head.dim() != 2:
        return "It does not look like a CIFAR-ResNet checkpoint."
    return (
        f"The checkpoint looks like depth={6 * len(blocks) + 2}, num_classes={head.shape[0]}; pass the same"
        " `depth` and `num_classes`."
    )


@register_model
def resnet20(num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """ResNet-20 (n = 3, 0.27M parameters for 10 classes); see :func:`cifar_resnet`."""
    return cifar_resnet(20, num_classes=num_classes, weights=weights)


@register_model
def resnet32(num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """ResNet-32 (n = 5, 0.46M parameters for 10 classes); see :func:`cifar_resnet`."""
    return cifar_resnet(32, num_classes=num_classes, weights=weights)


@register_model
def resnet44(num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """ResNet-44 (n = 7, 0.66M parameters for 10 classes); see :func:`cifar_resnet`."""
    return cifar_resnet(44, num_classes=num_classes, weights=weights)


@register_model
def resnet56(num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """ResNet-56 (n = 9, 0.85M parameters for 10 classes); see :func:`cifar_resnet`."""
    return cifar_resnet(56, num_classes=num_classes, weights=weights)


@register_model
def resnet110(num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """ResNet-110 (n = 18, 1.7M parameters for 10 classes); see :func:`cifar_resnet`."""
    return cifar_resnet(110, num_classes=num_classes, weights=weights)


@register_model
def resnet1202(num_classes: int = 10, weights: str | os.PathLike[str] | None = None) -> CIFARResNet:
    """ResNet-1202 (n = 200, 19.4M parameters for 10 classes); see :func:`cifar_resnet`."""
    return cifar_resnet(1202, num_classes=num_classes, weights=weights)
