"""A small CNN for the offline quickstart on scikit-learn's 8x8 digits.

The network is an ``nn.Sequential`` of four units, so it can be cut by child index
(``split_index`` 1, 2 or 3; see :mod:`lightning_dsl.core.split`).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lightning_dsl.models.registry import register_model


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


@register_model
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """Build a four-unit CNN for small images such as the 1x8x8 digits.

    Units: ``block1`` (``width`` channels, full resolution), ``block2`` (``2 * width``, stride 2),
    ``block3`` (``2 * width``), ``head`` (global average pool, flatten, linear). Each is an
    ``nn.Sequential``, so ``split_index = k`` puts the first ``k`` units on the client.

    Args:
        in_channels: channels of the input images.
        num_classes: size of the output.
        width: channels of the first block; the later blocks have twice as many.

    Raises:
        ValueError: if an argument is not a positive integer.

    Example::

        >>> import torch
        >>> net = small_cnn()
        >>> net(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 10])
        >>> [name for name, _ in net.named_children()]
        ['block1', 'block2', 'block3', 'head']
    """
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value!r}.")
    return nn.Sequential(
        OrderedDict(
            block1=_conv_bn_relu(in_channels, width),
            block2=_conv_bn_relu(width, 2 * width, stride=2),
            block3=_conv_bn_relu(2 * width, 2 * width),
            head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)),
        )
    )
