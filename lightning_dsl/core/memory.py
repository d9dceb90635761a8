"""Counting the memory that autograd holds for backward: the activations each side keeps.

:class:`SavedTensorTracker` installs :func:`torch.autograd.graph.saved_tensors_hooks` around
the code it measures and sees every tensor an operation saves for its backward. It counts
each *storage* once (a ReLU output saved by the ReLU and by the next layer, or a view of it,
costs its bytes once), leaves out the storages of the tensors it is told to exclude (the
parameters and buffers: a linear layer saves its weight as a transposed view of the
parameter's storage), and counts a storage down as soon as no graph holds it any more: after
the backward that used it, or when the graph is dropped without a backward. Only integers are
kept per storage; the tensors themselves are held exactly as long as autograd would hold them.

Plain torch, any device. The figure is the memory of saved tensors, not of everything
allocated: gradients, optimizer state and temporaries inside one operation are not in it.
Tensors saved under ``torch.utils.checkpoint`` (which installs its own hooks) are not seen.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

StorageKey = tuple[Any, ...]


def state_tensors(*modules: nn.Module) -> Iterator[Tensor]:
    """Yield the parameters and buffers of ``modules``: what a tracker should leave out."""
    for module in modules:
        yield from module.parameters()
        yield from module.buffers()


def storage_key(tensor: Tensor) -> StorageKey | None:
    """Identify the storage behind ``tensor`` (``None`` for a tensor without one, or with zero bytes)."""
    try:
        storage = tensor.untyped_storage()
    except (NotImplementedError, RuntimeError):  # sparse, nested and other storage-less layouts
        return None
    pointer = storage.data_ptr()
    return (pointer, tensor.device) if pointer else None


class _Packed:
    """What autograd stores in place of a saved tensor while the tracker runs.

    Its death (the graph let go of the saved tensor) counts the storage down.
    """

    __slots__ = ("tensor", "key", "tracker")

    def __init__(self, tensor: Tensor, key: StorageKey, tracker: SavedTensorTracker) -> None:
        self.tensor = tensor
        self.key = key
        self.tracker = tracker

    def __del__(self) -> None:
        self.tracker._release(self.key)


class SavedTensorTracker:
    """Live and peak bytes of the tensors saved for backward, per side and combined.

    A storage is counted from the first time an operation saves it until the last graph that
    saved it lets it go; it is charged to the side that was current when it was first saved.

    Args:
        exclude: tensors whose storages are never counted, normally the parameters and buffers
            of the model (see :func:`state_tensors`). Replace them with :meth:`set_excluded` when
            the model moves to another device.
        default_side: the side charged by ``with tracker:`` outside :meth:`side`.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> tracker = SavedTensorTracker(exclude=state_tensors(net))
        >>> with tracker.side("client"):
        ...     loss = net(torch.ones(3, 4)).sum()
        >>> tracker.live_bytes  # the input (3 x 4 float32) and the ReLU output (3 x 8 float32)
        144
        >>> loss.backward()
        >>> tracker.live_bytes, tracker.peak_bytes, tracker.peak_bytes_by_side
        (0, 144, {'client': 144})
    """

    def __init__(self, exclude: Iterable[Tensor] = (), default_side: str = "default") -> None:
        if not isinstance(default_side, str) or not default_side:
            raise ValueError(f"Expected argument `default_side` to be a non-empty string, got {default_side!r}.")
        self.current_side = default_side
        self._excluded: set[StorageKey] = set()
        self.set_excluded(exclude)
        self._lock = threading.RLock()  # a backward on an accelerator releases from autograd's own threads
        # key -> [number of saved references alive, bytes, side]
        self._storages: dict[StorageKey, list[Any]] = {}
        self._live: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._live_total = 0
        self._peak_total = 0
        self._entered: list[Any] = []

    # ------------------------------------------------------------------ configuration
    def set_excluded(self, tensors: Iterable[Tensor]) -> None:
        """Replace the set of storages never counted by those of ``tensors``."""
        self._excluded = {key for key in map(storage_key, tensors) if key is not None}

    # ------------------------------------------------------------------ tracking
    @contextlib.contextmanager
    def side(self, name: str) -> Iterator[SavedTensorTracker]:
        """Track what is saved inside the block, charging new storages to side ``name``."""
        previous, self.current_side = self.current_side, name
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
                yield self
        finally:
            self.current_side = previous

    def __enter__(self) -> SavedTensorTracker:
        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        hooks.__enter__()
        self._entered.append(hooks)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._entered.pop().__exit__(*exc_info)

    def _pack(self, tensor: Tensor) -> Any:
        # Detached alias: the tensor handed to the hook may be the output of the very node that
        # saves it, and keeping that (with its grad_fn) would make a cycle no collector can free.
        alias = tensor.detach()
        try:
            storage = tensor.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse, nested and other storage-less layouts
            return alias
        pointer = storage.data_ptr()
        key = (pointer, tensor.device)
        if not pointer or key in self._excluded:
            return alias
        with self._lock:
            entry = self._storages.get(key)
            if entry is not None:
                entry[0] += 1
            else:
                nbytes, side = storage.nbytes(), self.current_side
                self._storages[key] = [1, nbytes, side]
                live = self._live.get(side, 0) + nbytes
                self._live[side] = live
                if live > self._peak.get(side, 0):
                    self._peak[side] = live
                self._live_total += nbytes
                if self._live_total > self._peak_total:
                    self._peak_total = self._live_total
        return _Packed(alias, key, self)

    def _release(self, key: StorageKey) -> None:
        with self._lock:
            entry = self._storages[key]
            entry[0] -= 1
            if entry[0] == 0:
                del self._storages[key]
                self._live[entry[2]] -= entry[1]
                self._live_total -= entry[1]

    # ------------------------------------------------------------------ figures
    @property
    def live_bytes(self) -> int:
        """Bytes of saved storages alive now, all sides together."""
        return self._live_total

    @property
    def peak_bytes(self) -> int:
        """The largest :attr:`live_bytes` since creation or the last :meth:`reset_peaks`."""
        return self._peak_total

    @property
    def live_bytes_by_side(self) -> dict[str, int]:
        """Bytes alive now, per side."""
        return dict(self._live)

    @property
    def peak_bytes_by_side(self) -> dict[str, int]:
        """The largest live bytes of each side since creation or the last :meth:`reset_peaks`."""
        return dict(self._peak)

    @property
    def num_storages(self) -> int:
        """Number of distinct storages alive now."""
        return len(self._storages)

    def reset_peaks(self) -> None:
        """Start the peaks again from the bytes alive now."""
        with self._lock:
            self._peak = dict(self._live)
            self._peak_total = self._live_total


def _unpack(packed: Any) -> Tensor:
    return packed.tensor if isinstance(packed, _Packed) else packed
