"""Tokenized text as a dataset, and its batches: padded to the longest sequence, with the attention mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_dsl.core.sequence import MaskedSequence


class TokenizedDataset(Dataset):
    """Token ids (already truncated) and labels, one ``(ids, label)`` pair per item."""

    def __init__(self, ids: list[list[int]], labels: list[int]) -> None:
        self.ids = ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.ids[index], self.labels[index]


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int = 0) -> tuple[MaskedSequence, Tensor]:
    """Pad a batch to its longest sequence.

    Args:
        batch: ``(ids, label)`` pairs.
        pad_id: the id written after the end of the shorter sequences.

    Returns:
        ``(inputs, labels)``: the inputs a :class:`~lightning_dsl.core.sequence.MaskedSequence` of the token ids
        (``values``, ``LongTensor [B, T]``) and the attention mask (``mask``, ``BoolTensor [B, T]``, True on real
        tokens), ``T`` the length of the longest sequence in the batch; the labels a ``LongTensor [B]``.

    Example::

        >>> inputs, y = collate([([2, 7, 8], 1), ([2, 9], 0)])
        >>> inputs.values.tolist(), inputs.mask.tolist(), y.tolist()
        ([[2, 7, 8], [2, 9, 0]], [[True, True, True], [True, True, False]], [1, 0])
    """
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.bool)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = True
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return MaskedSequence(input_ids, mask), labels


__all__ = ["TokenizedDataset", "collate"]
