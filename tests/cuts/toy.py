"""A network nobody in the package wrote: a plain ``nn.Sequential`` subclass built from a config."""

from __future__ import annotations

from torch import nn


class TinyMLP(nn.Sequential):
    """Flatten, then ``depth`` hidden layers of ``width``, then a classifier: ``depth + 2`` cut units."""

    def __init__(self, in_features: int = 64, width: int = 32, depth: int = 3, num_classes: int = 10) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers.append(nn.Sequential(nn.Linear(in_features if i == 0 else width, width), nn.ReLU()))
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
