"""Tiny networks, data and trainers for the callback tests (CPU, a second or less per fit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule

BATCH = 8
TRAIN_BATCHES = 4
VAL_BATCHES = 2
INPUT_SHAPE = (1, 5, 5)


def conv_network(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Client: conv + ReLU, whose output z is (N, 4, 5, 5); server: flatten + linear to 3 classes."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).to(dtype)


def loader(batches: int, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = INPUT_SHAPE) -> DataLoader:
    generator = torch.Generator().manual_seed(batches)
    inputs = torch.randn(batches * BATCH, *shape, generator=generator).to(dtype)
    labels = torch.randint(0, 3, (batches * BATCH,), generator=generator)
    return DataLoader(TensorDataset(inputs, labels), batch_size=BATCH)


@pytest.fixture
def make_module() -> Callable[..., DecoupledSplitModule]:
    """``make_module(mode="dsl", dtype=torch.float32, network=None, **module_kwargs)``."""

    def make(
        mode: str = "dsl", dtype: torch.dtype = torch.float32, network: nn.Module | None = None, **kwargs: Any
    ) -> DecoupledSplitModule:
        torch.manual_seed(0)
        kwargs.setdefault("split_index", 2)
        kwargs.setdefault("input_shape", INPUT_SHAPE)
        return DecoupledSplitModule(network or conv_network(dtype), mode=mode, num_classes=3, **kwargs)

    return make


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., Trainer]:
    """``make_trainer(callbacks, **trainer_kwargs)``: a quiet CPU trainer writing under ``tmp_path``."""

    def make(callbacks: list[Any], **kwargs: Any) -> Trainer:
        options: dict[str, Any] = {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "default_root_dir": tmp_path,
        }
        options.update(kwargs)
        return Trainer(callbacks=callbacks, **options)

    return make


@pytest.fixture
def loaders() -> Callable[..., tuple[DataLoader, DataLoader]]:
    """``loaders(dtype=torch.float32)``: 4 training and 2 validation batches of 8 samples."""

    def make(dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = INPUT_SHAPE) -> tuple[DataLoader, DataLoader]:
        return loader(TRAIN_BATCHES, dtype, shape), loader(VAL_BATCHES, dtype, shape)

    return make
