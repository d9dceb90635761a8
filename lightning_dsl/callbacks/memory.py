"""Peak memory of each side of the cut: saved activations on any device, allocations on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_dsl.callbacks.throughput import PhaseCallback, batch_tokens
from lightning_dsl.core.memory import SavedTensorTracker, state_tensors

PREFIX = "memory/"
INTERVALS = ("epoch", "step")
_STATE = (
    "saved_activation_peak_bytes",
    "saved_peak_positions",
    "saved_client_peak_bytes",
    "saved_server_peak_bytes",
    "cuda_client_peak_bytes",
    "cuda_server_peak_bytes",
    "cuda_step_peak_bytes",
)


class PeakMemoryMonitor(PhaseCallback):
    """Log the peak memory each side holds during training steps.

    * **Saved activations, any device** (CPU included): the peak bytes of the tensors autograd
      keeps for backward, through a :class:`~lightning_dsl.core.memory.SavedTensorTracker` wrapped
      around the client and server phases of each training step; storages counted once, the
      model's parameters and buffers left out. Logged as ``memory/saved_client_peak_bytes``,
      ``memory/saved_server_peak_bytes`` and ``memory/saved_peak_bytes`` (the two sides together:
      in ``sl`` the client's graph is alive during the server's work, in ``dsl`` it is not).
    * **CUDA**: ``torch.cuda.max_memory_allocated`` with the peak reset at the start of each phase,
      logged as ``memory/cuda_client_peak_bytes``, ``memory/cuda_server_peak_bytes`` and
      ``memory/cuda_step_peak_bytes`` (the whole step; it includes the model, gradients and
      optimizer state, not only activations).

    For batches of sequences (:class:`~lightning_dsl.core.sequence.MaskedSequence`, padded per batch), the
    padded positions of the batch that set the run's peak, :attr:`saved_peak_positions`, and the summary's
    ``memory/saved_peak_positions`` and ``memory/saved_peak_bytes_per_position`` (the peak per position of that
    batch: what a batch of another length would roughly hold).

    The attributes :attr:`saved_activation_peak_bytes`, :attr:`saved_client_peak_bytes` and
    :attr:`saved_server_peak_bytes` (and :attr:`cuda_step_peak_bytes` etc.) hold the peaks over the
    run so far; they survive a resume from a checkpoint. Validation and test are not measured.

    Cost: the tracker runs a small Python function for each tensor saved for backward and each
    storage freed. ``benchmarks/overhead.py`` measures the step with and without the three
    measurement callbacks, side by side; the figure is in ``docs/measurements.md``.

    Args:
        logging_interval: ``"epoch"`` (default): the peaks of each epoch, logged at its end;
            ``"step"``: the peaks of each training step, logged per step.
        prog_bar: show ``memory/saved_peak_bytes`` in the progress bar.
        saved_tensors: track the saved activations (on by default); ``False`` keeps only the CUDA
            peaks, which cost nothing measurable, for long runs where the tracker's cost matters.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = PeakMemoryMonitor(logging_interval="step")
        >>> trainer = Trainer(callbacks=[monitor])  # doctest: +SKIP
        >>> monitor.saved_activation_peak_bytes
        0
    """

    def __init__(self, logging_interval: str = "epoch", prog_bar: bool = False, saved_tensors: bool = True) -> None:
        if logging_interval not in INTERVALS:
            raise ValueError(
                f"Expected argument `logging_interval` to be one of {list(INTERVALS)}, but got {logging_interval!r}."
            )
        self.logging_interval = logging_interval
        self.prog_bar = prog_bar
        self.saved_tensors = saved_tensors
        self.tracker = SavedTensorTracker()
        # Peaks over the run so far (attributes and summary), the current interval's CUDA peaks.
        self.saved_activation_peak_bytes = 0
        self.saved_client_peak_bytes = 0
        self.saved_server_peak_bytes = 0
        self.saved_peak_positions: int | None = None  # padded positions of the batch of sequences that set the peak
        self.cuda_client_peak_bytes: int | None = None
        self.cuda_server_peak_bytes: int | None = None
        self.cuda_step_peak_bytes: int | None = None
        self._cuda: torch.device | None = None
        self._interval_cuda: dict[str, int] = {}
        self._step_cuda = 0

    # ------------------------------------------------------------------ measuring
    @contextlib.contextmanager
    def _phase(self, side: str) -> Iterator[None]:
        tracking = self.tracker.side(side) if self.saved_tensors else contextlib.nullcontext()
        if self._cuda is None:
            with tracking:
                yield
            return
        # The phase needs its own peak; keep the step's peak so far before resetting.
        self._step_cuda = max(self._step_cuda, torch.cuda.max_memory_allocated(self._cuda))
        torch.cuda.reset_peak_memory_stats(self._cuda)
        try:
            with tracking:
                yield
        finally:
            peak = torch.cuda.max_memory_allocated(self._cuda)
            self._step_cuda = max(self._step_cuda, peak)
            self._interval_cuda[side] = max(self._interval_cuda.get(side, 0), peak)

    def _start_interval(self) -> None:
        self.tracker.reset_peaks()
        self._interval_cuda = {}

    def _interval_figures(self) -> dict[str, int]:
        peaks = self.tracker.peak_bytes_by_side
        figures = {}
        if self.saved_tensors:
            figures = {
                "saved_client_peak_bytes": peaks.get("client", 0),
                "saved_server_peak_bytes": peaks.get("server", 0),
                "saved_peak_bytes": self.tracker.peak_bytes,
            }
        if self._cuda is not None:
            figures.update({f"cuda_{side}_peak_bytes": value for side, value in self._interval_cuda.items()})
        return figures

    def _log(self, pl_module: LightningModule, on_step: bool) -> None:
        for name, value in self._interval_figures().items():
            pl_module.log(
                PREFIX + name,
                torch.tensor(value, dtype=torch.float64),  # exact bytes, no host-device copy
                on_step=on_step,
                on_epoch=not on_step,
                reduce_fx="max",
                prog_bar=self.prog_bar and name == "saved_peak_bytes",
                batch_size=1,
            )

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        device = trainer.strategy.root_device
        self._cuda = device if device.type == "cuda" else None
        self.tracker.set_excluded(state_tensors(pl_module))
        super().on_fit_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self.tracker.set_excluded(state_tensors(pl_module))  # parameters may have been replaced or moved
        self._start_interval()

    def on_train_batch_start(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.logging_interval == "step":
            self._start_interval()
        if self._cuda is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda)
            self._step_cuda = 0

    def on_train_batch_end(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._cuda is not None:
            step = max(self._step_cuda, torch.cuda.max_memory_allocated(self._cuda))
            self._interval_cuda["step"] = max(self._interval_cuda.get("step", 0), step)
        if self.saved_tensors and self.tracker.peak_bytes > self.saved_activation_peak_bytes:
            tokens = batch_tokens(batch)  # this batch raised the run's peak: its positions, when it holds sequences
            self.saved_peak_positions = tokens[1] if tokens is not None else self.saved_peak_positions
        self._update_run_peaks()
        if self.logging_interval == "step":
            self._log(pl_module, on_step=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if self.logging_interval == "epoch":
            self._log(pl_module, on_step=False)

    def _update_run_peaks(self) -> None:
        figures = self._interval_figures()
        if self.saved_tensors:
            self.saved_activation_peak_bytes = max(self.saved_activation_peak_bytes, figures["saved_peak_bytes"])
            self.saved_client_peak_bytes = max(self.saved_client_peak_bytes, figures["saved_client_peak_bytes"])
            self.saved_server_peak_bytes = max(self.saved_server_peak_bytes, figures["saved_server_peak_bytes"])
        for side in ("client", "server", "step"):
            if f"cuda_{side}_peak_bytes" in figures:
                name = f"cuda_{side}_peak_bytes"
                setattr(self, name, max(getattr(self, name) or 0, figures[name]))

    # ------------------------------------------------------------------ state and results
    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {name: getattr(self, name) for name in _STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        for name in _STATE:
            if name in state_dict:
                setattr(self, name, state_dict[name])

    def summary(self) -> dict[str, float | int]:
        """Peaks over the run so far (the CUDA ones only when a CUDA device was used)."""
        saved = self.saved_tensors
        figures: dict[str, float | int | None] = {
            "saved_peak_bytes": self.saved_activation_peak_bytes if saved else None,
            "saved_client_peak_bytes": self.saved_client_peak_bytes if saved else None,
            "saved_server_peak_bytes": self.saved_server_peak_bytes if saved else None,
            "cuda_client_peak_bytes": self.cuda_client_peak_bytes,
            "cuda_server_peak_bytes": self.cuda_server_peak_bytes,
            "cuda_step_peak_bytes": self.cuda_step_peak_bytes,
        }
        if saved and self.saved_peak_positions:
            figures["saved_peak_positions"] = self.saved_peak_positions
            figures["saved_peak_bytes_per_position"] = self.saved_activation_peak_bytes / self.saved_peak_positions
        return {PREFIX + k: v for k, v in figures.items() if v is not None}
