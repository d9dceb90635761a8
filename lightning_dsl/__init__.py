"""Decoupled split learning for PyTorch Lightning.

The torch-only core (``lightning_dsl.core``, ``lightning_dsl.models``) imports no Lightning; the
Lightning layer (``DecoupledSplitModule``, callbacks, data modules, CLI) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_dsl.core.cut import Cut, Traffic

if TYPE_CHECKING:
    from lightning_dsl.module import DecoupledSplitModule

__version__ = "0.1.0"

__all__ = ["Cut", "DecoupledSplitModule", "Traffic", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "DecoupledSplitModule":
        from lightning_dsl.module import DecoupledSplitModule

        return DecoupledSplitModule
    raise AttributeError(f"module 'lightning_dsl' has no attribute {name!r}")
