"""The communication and memory monitors on batches of padded sequences: bytes and memory per token."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import CommunicationMonitor, PeakMemoryMonitor
from lightning_dsl.data.text import TokenizedDataset, collate
from lightning_dsl.models import TextTransformer

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:.*LeafSpec.*")

DIM = 8


@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_tokens_and_bytes_per_token(mode: str) -> None:
    torch.manual_seed(0)
    lengths = [3, 9, 2, 5, 7, 4]  # two batches of 3, padded to 9 and to 7
    ids = [[2] + [5] * (n - 1) for n in lengths]
    batches = list(DataLoader(TokenizedDataset(ids, [0, 1] * 3), batch_size=3, collate_fn=collate))
    network = TextTransformer(vocab_size=10, max_length=12, dim=DIM, depth=2, heads=2)
    model = DecoupledSplitModule(network, split_index=2, mode=mode, num_classes=2, input_shape=(12,))
    comm, memory = CommunicationMonitor(), PeakMemoryMonitor()
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[comm, memory],
    )  # fmt: skip
    trainer.fit(model, DataLoader(batches, batch_size=None))

    positions = 3 * 9 + 3 * 7
    assert (comm.tokens_up, comm.positions_up) == (sum(lengths), positions)
    # float32 hidden states of every position + the mask (a byte per position) + int64 labels, per real token
    assert comm.total_bytes_up == positions * DIM * 4 + positions + 6 * 8
    figures = comm.summary()
    assert figures["comm/bytes_per_token_up"] == comm.total_bytes_up / sum(lengths)
    assert figures["comm/tokens_up"] == sum(lengths)
    # The longer batch holds more: the run's peak is its own, per padded position.
    assert memory.saved_peak_positions == 3 * 9
    peak = memory.summary()
    assert peak["memory/saved_peak_bytes_per_position"] == memory.saved_activation_peak_bytes / (3 * 9)


def test_image_batches_have_no_token_figures() -> None:
    comm = CommunicationMonitor()
    assert "comm/tokens_up" not in comm.summary()
    assert "memory/saved_peak_positions" not in PeakMemoryMonitor().summary()
