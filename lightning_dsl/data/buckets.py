"""Batches of sequences of similar length, so that padding each batch to its longest costs little.

SST-2's training phrases are 12 tokens long on average but up to 64: shuffled batches of 64 are
padded to 3.6 times as many positions as they hold real tokens, and a transformer spends its time
on the padding. :class:`BucketBatchSampler` shuffles, sorts each *pool* of ``pool`` batches' worth
of examples by length, cuts it into batches and shuffles the batches: every batch is still a random
draw of the data (within a pool), and the padding almost disappears.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of indices whose examples have similar lengths.

    Each epoch: a random permutation of the indices, cut into pools of ``pool * batch_size``; each pool sorted
    by length (stable, so ties keep the random order) and cut into batches; all batches shuffled. The order is
    drawn from ``generator``, so a seeded generator gives the same batches every run.

    Args:
        lengths: the length of each example.
        batch_size: examples per batch (the last batch of each pool may be smaller).
        pool: batches' worth of examples sorted together (larger: less padding, less randomness).
        generator: the random generator of the permutations.

    Example::

        >>> lengths = [5, 1, 4, 2, 3, 6]
        >>> sampler = BucketBatchSampler(lengths, batch_size=2, pool=3, generator=torch.Generator().manual_seed(0))
        >>> sorted(sorted(lengths[i] for i in batch) for batch in sampler)
        [[1, 2], [3, 4], [5, 6]]
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, pool: int, generator: torch.Generator | None = None
    ) -> None:
        for name, value in (("batch_size", batch_size), ("pool", pool)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be an int >= 1, but got {value!r}.")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.pool = pool
        self.generator = generator

    def __len__(self) -> int:
        pool_size = self.pool * self.batch_size
        full, rest = divmod(len(self.lengths), pool_size)
        return full * self.pool + -(-rest // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches: list[Tensor] = []
        for pool in order.split(self.pool * self.batch_size):
            pool = pool[torch.sort(self.lengths[pool], stable=True).indices]
            batches.extend(pool.split(self.batch_size))
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index].tolist()
