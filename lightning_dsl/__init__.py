"""Decoupled split learning for PyTorch Lightning."""

from lightning_dsl.core.cut import Cut, Traffic
from lightning_dsl.module import DecoupledSplitModule

__version__ = "0.1.0"

__all__ = ["Cut", "DecoupledSplitModule", "Traffic", "__version__"]
