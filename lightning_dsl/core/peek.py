"""Read the inputs of one sample of a data loader without disturbing the loader.

The module builds its auxiliary head from the shape of one input when nothing else gives it
(``input_shape``, a data module's ``input_shape``). Taking that sample must change nothing that
training will see: no batch of the epoch is consumed, no worker process starts, the loader's
sampler and generator are not advanced, and the global random states (torch, ``random``,
NumPy; random transforms draw from them) are restored afterwards. For a ``DataLoader`` the
sample therefore comes from a separate single-process loader over the same dataset, in dataset
order, collated by the loader's own ``collate_fn``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_dsl.core.clients import client_entries
from lightning_dsl.core.sequence import Activation, is_inputs

try:  # NumPy is optional for torch; random transforms may draw from it
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]


def batch_inputs(batch: Any) -> Activation | None:
    """The inputs of a batch that is inputs alone or a sequence ``(inputs, labels, ...)``.

    Inputs are a tensor or a :class:`~lightning_dsl.core.sequence.MaskedSequence` (token ids and their mask).

    A batch of many clients (one ``(inputs, labels)`` pair or ``None`` per client) gives its first client's inputs.
    """
    if is_inputs(batch):
        return batch
    if isinstance(batch, (list, tuple)) and batch and is_inputs(batch[0]):
        return batch[0]
    entries = client_entries(batch)
    return batch_inputs(entries[0]) if entries else None


def peek_inputs(loader: Iterable[Any]) -> Activation | None:
    """The inputs of the first sample of ``loader`` (a batch of one for a ``DataLoader``), or ``None``.

    ``None`` when the loader is a one-shot iterator (peeking would consume it), is empty, or its
    batches are neither a tensor nor a sequence starting with one.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(10, 3, 8, 8), torch.zeros(10)), batch_size=4, shuffle=True)
        >>> tuple(peek_inputs(loader).shape)
        (1, 3, 8, 8)
    """
    # One loader per client (Lightning's CombinedLoader, lightning_dsl.data.SequentialClients): peek the first.
    clients = getattr(loader, "flattened", None) or getattr(loader, "loaders", None)
    if isinstance(clients, list) and clients:
        return peek_inputs(clients[0])
    if isinstance(loader, DataLoader):
        # One sample in the main process (no workers), in dataset order (no sampler drawn from).
        auto_collation = loader.batch_sampler is not None
        loader = DataLoader(loader.dataset, batch_size=1 if auto_collation else None, collate_fn=loader.collate_fn)
    elif isinstance(loader, Iterator):
        return None
    with _restored_random_states():
        batch = next(iter(loader), None)
    return batch_inputs(batch)


@contextlib.contextmanager
def _restored_random_states() -> Iterator[None]:
    """Restore torch's CPU, Python's and NumPy's global random states on exit."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    numpy_state = np.random.get_state() if np is not None else None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        if np is not None:
            np.random.set_state(numpy_state)
