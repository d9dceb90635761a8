"""Samples per second of each side of the cut and of the whole training step."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_dsl.core.clients import client_entries
from lightning_dsl.core.cut import Arrival, Arrivals
from lightning_dsl.core.sequence import MaskedSequence, is_inputs

PREFIX = "throughput/"


def default_batch_size(batch: Any) -> int:
    """The number of samples in ``batch``: the length of its first tensor (inputs, labels, ...).

    A batch of many clients (one ``(inputs, labels)`` pair or ``None`` per client) counts every client's samples;
    on a server whose clients are other processes, the samples that arrived for the step.
    """
    if is_inputs(batch):  # a tensor, or token ids with their mask
        return int(batch.shape[0])
    if isinstance(batch, (Arrival, Arrivals)):  # a server in its own process: what arrived at the cut
        return batch.samples
    if isinstance(batch, dict):
        batch = list(batch.values())
    entries = client_entries(batch)
    if entries is not None:
        return sum(default_batch_size(entry) for entry in entries)
    if isinstance(batch, (list, tuple)) and batch:
        return default_batch_size(batch[0])
    raise ValueError(
        f"Cannot tell the batch size of a batch of type {type(batch).__name__}: pass `batch_size_fn` to the callback."
    )


def batch_tokens(batch: Any) -> tuple[Tensor, int] | None:
    """``(real tokens, padded positions)`` of a batch of sequences (every client's), ``None`` for other batches.

    The real tokens are a count on the batch's device, so that counting them each step makes no host-device copy.

    Example::

        >>> ids = torch.tensor([[2, 7, 8], [2, 9, 0]])
        >>> tokens, positions = batch_tokens((MaskedSequence(ids, ids != 0), torch.tensor([1, 0])))
        >>> int(tokens), positions
        (5, 6)
    """
    if isinstance(batch, MaskedSequence):
        return batch.mask.sum(), batch.mask.numel()
    entries = client_entries(batch)
    if entries is not None:
        counts = [c for c in map(batch_tokens, entries) if c is not None]
        return (torch.stack([c[0] for c in counts]).sum(), sum(c[1] for c in counts)) if counts else None
    if isinstance(batch, (list, tuple)) and batch and is_inputs(batch[0]):
        return batch_tokens(batch[0])
    return None


def add_phase_hook(pl_module: LightningModule, hook: Callable[[str], Any], owner: Callback) -> None:
    """Register ``hook`` around each side's work, or explain which module the callback needs."""
    register = getattr(pl_module, "add_phase_hook", None)
    if not callable(register):
        raise TypeError(
            f"{type(owner).__name__} measures the client and server phases of a training step, so it needs a"
            f" `DecoupledSplitModule` (a module with `add_phase_hook`), but got `{type(pl_module).__name__}`."
        )
    register(hook)


def remove_phase_hook(pl_module: LightningModule, hook: Callable[[str], Any]) -> None:
    """Unregister a hook added with :func:`add_phase_hook` (nothing happens when it is not registered)."""
    remove = getattr(pl_module, "remove_phase_hook", None)
    if callable(remove):
        remove(hook)


class PhaseCallback(Callback):
    """A callback that wraps each side's work of a training step in its context manager :meth:`_phase`.

    The hook is registered at the start of ``fit`` and removed at its end or on an exception.
    """

    def _phase(self, side: str) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        add_phase_hook(pl_module, self._phase, self)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        remove_phase_hook(pl_module, self._phase)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:  # noqa: D102
        remove_phase_hook(pl_module, self._phase)


class SplitThroughputMonitor(PhaseCallback):
    """Log the samples per second of the client phase, the server phase and the whole training step.

    Each phase is timed with :func:`time.perf_counter` through the module's phase hooks (in the
    feedback modes the client works twice per step, before and after the server: both count).
    The step is timed from ``on_train_batch_start`` to ``on_train_batch_end``. On CUDA the device
    is synchronized at every boundary, so the times are those of the work, not of its launch.
    Rates are samples over seconds summed over the epoch, logged at its end as
    ``throughput/client_samples_per_sec``, ``throughput/server_samples_per_sec`` and
    ``throughput/samples_per_sec``.

    Args:
        batch_size_fn: returns the number of samples in a batch (default: the length of its first tensor).
        synchronize: synchronize the CUDA device at each boundary (no effect on other devices).
        skip_first: training batches at the start of each ``fit`` left out of the rates (warm-up).
        prog_bar: show ``throughput/samples_per_sec`` in the progress bar.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = SplitThroughputMonitor()
        >>> trainer = Trainer(callbacks=[monitor])  # doctest: +SKIP
        >>> monitor.summary()
        {}
    """

    clock: Callable[[], float] = time.perf_counter  # seconds; tests replace it with a fake clock

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int] | None = None,
        synchronize: bool = True,
        skip_first: int = 0,
        prog_bar: bool = False,
    ) -> None:
        if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
            raise ValueError(f"Expected argument `skip_first` to be an int >= 0, but got {skip_first!r}.")
        self.batch_size_fn = batch_size_fn or default_batch_size
        self.synchronize = synchronize
        self.skip_first = skip_first
        self.prog_bar = prog_bar
        self._cuda: torch.device | None = None
        self._batches_seen = 0
        self._step_start = 0.0
        self._phase_seconds: dict[str, float] = {}
        # [samples, client seconds, server seconds, step seconds], for the epoch and for the run
        self._epoch = [0, 0.0, 0.0, 0.0]
        self._run = [0, 0.0, 0.0, 0.0]

    # ------------------------------------------------------------------ timing
    def _now(self) -> float:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        return self.clock()

    @contextlib.contextmanager
    def _phase(self, side: str) -> Iterator[None]:
        start = self._now()
        try:
            yield
        finally:
            self._phase_seconds[side] = self._phase_seconds.get(side, 0.0) + self._now() - start

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        device = trainer.strategy.root_device
        self._cuda = device if device.type == "cuda" and self.synchronize else None
        self._batches_seen = 0
        super().on_fit_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._epoch = [0, 0.0, 0.0, 0.0]

    def on_train_batch_start(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._phase_seconds = {}
        self._step_start = self._now()

    def on_train_batch_end(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._now() - self._step_start
        self._batches_seen += 1
        if self._batches_seen <= self.skip_first:
            return
        figures = (
            self.batch_size_fn(batch),
            self._phase_seconds.get("client", 0.0),
            self._phase_seconds.get("server", 0.0),
            step,
        )
        for totals in (self._epoch, self._run):
            for i, value in enumerate(figures):
                totals[i] += value

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        for name, value in _rates(self._epoch).items():
            show = self.prog_bar and name == "samples_per_sec"
            pl_module.log(PREFIX + name, value, on_step=False, on_epoch=True, prog_bar=show, batch_size=1)

    # ------------------------------------------------------------------ results
    def summary(self) -> dict[str, float | int]:
        """Samples per second over the whole run so far (empty before the first measured batch)."""
        return {PREFIX + name: value for name, value in _rates(self._run).items()}


def _rates(totals: list[Any]) -> dict[str, float]:
    samples, client, server, step = totals
    seconds = {"client_samples_per_sec": client, "server_samples_per_sec": server, "samples_per_sec": step}
    return {name: samples / value for name, value in seconds.items() if value > 0}
