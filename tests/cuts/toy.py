"""A network nobody in the package wrote: a plain ``nn.Sequential`` subclass built from a config."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyMLP(nn.Sequential):
    """Flatten, then ``depth`` hidden layers of ``width``, then a classifier: ``depth + 2`` cut units."""

    def __init__(self, in_features: int = 64, width: int = 32, depth: int = 3, num_classes: int = 10) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers.append(nn.Sequential(nn.Linear(in_features if i == 0 else width, width), nn.ReLU()))
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class TinyUNet(nn.Module):
    """A network with a skip connection and no ``cut_units()``: cut by name, the skip crosses with the cut."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.down2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.dec = nn.Conv2d(8 + 4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        skip = self.down1(x)
        y = self.down2(self.pool(skip))
        return self.head(torch.relu(self.dec(torch.cat([self.up(y), skip], dim=1))))
