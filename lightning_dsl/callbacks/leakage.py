"""How much of the input the cut activations still carry: the distance correlation dCor(x, z) per epoch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_dsl.core.peek import batch_inputs
from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.privacy.distance import distance_correlation

METRIC = "privacy/dcor"
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class LeakageMonitor(Callback):
    """Log ``privacy/dcor``, the distance correlation of the validation inputs and their cut activations.

    On each of the first ``max_batches`` validation batches of an epoch, the cut activation
    ``z = pl_module.client(x)`` that the module's evaluation computes (read by a forward hook on
    ``pl_module.client``, so nothing is computed twice; with several clients, the aggregate
    ``pl_module.client``; ``z`` before any codec) and :func:`~lightning_dsl.privacy.distance_correlation`
    compares the flattened ``x`` and ``z`` of that batch (in ``float64``). A module whose evaluation does
    not call its client gets ``z`` computed here, in eval mode, without gradients. The figure of the epoch is
    the batch dCor averaged over those batches, weighted by their sizes. dCor is not additive over batches: this is not
    the dCor of the whole validation set (which would cost ``O(N²)``), and a batch's value depends on its
    size (the V-statistic of independent data is biased up, roughly like ``1/sqrt(B)``): compare runs
    at the same validation batch size.

    ``privacy/dcor`` is logged at the end of every validation epoch to every logger, and
    :class:`~lightning_dsl.callbacks.RunSummary` keeps it in ``summary.json`` (the last epoch's value, and
    one value per epoch in the ``history``). Sanity-check batches are not measured. Batches that carry no
    inputs here (a server whose clients are other processes) are skipped; with none, nothing is logged.

    Args:
        max_batches: validation batches measured per epoch (their cost is two ``B x B`` distance matrices
            each); ``None`` measures every batch, ``0`` turns the monitor off.
        dtype: ``"float64"`` (accurate) or ``"float32"``: the dtype of the dCor computation (the activations
            are computed in the module's own dtype).

    Raises:
        ValueError: if ``max_batches`` is negative or not an int, or ``dtype`` is not one of the two.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[LeakageMonitor(max_batches=4)], logger=False)  # doctest: +SKIP
        >>> trainer.callback_metrics["privacy/dcor"]  # doctest: +SKIP
    """

    def __init__(self, max_batches: int | None = 4, dtype: str = "float64") -> None:
        if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)):
            raise ValueError(f"Expected argument `max_batches` to be an int >= 0 or None, but got {max_batches!r}.")
        if max_batches is not None and max_batches < 0:
            raise ValueError(
                f"Expected argument `max_batches` to be >= 0 (0 turns the monitor off) or None (every batch), but got"
                f" {max_batches}."
            )
        if dtype not in DTYPES:
            raise ValueError(f"Expected argument `dtype` to be one of {list(DTYPES)}, but got {dtype!r}.")
        self.max_batches = max_batches
        self.dtype = dtype
        self.value: float | None = None
        self.history: list[float] = []
        self._weighted_sum = 0.0
        self._samples = 0
        self._batches = 0
        self._hook: RemovableHandle | None = None
        self._captured: tuple[Any, Any] | None = None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._weighted_sum, self._samples, self._batches = 0.0, 0, 0

    def on_validation_batch_start(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._remove_hook()
        client = getattr(pl_module, "client", None)
        if self._measures(trainer) and isinstance(client, nn.Module):
            # The module's own evaluation computes z = client(x): read it there instead of computing it twice.
            self._captured = None
            self._hook = client.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._captured is None and args:
            self._captured = (args[0], output)

    def on_validation_batch_end(  # noqa: D102
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._remove_hook()
        if not self._measures(trainer):
            return
        captured, self._captured = self._captured, None
        if captured is None:  # a module whose evaluation does not call its client: compute z here
            client, inputs = getattr(pl_module, "client", None), batch_inputs(batch)
            if not isinstance(client, nn.Module) or inputs is None:
                return  # no client here, or no inputs (a server whose clients are other processes)
            was_training = client.training
            client.eval()
            with torch.no_grad():
                captured = (inputs, client(inputs))
            client.train(was_training)
        x, z = captured
        if not isinstance(x, (Tensor, MaskedSequence)) or not isinstance(z, (Tensor, MaskedSequence)) or x.shape[0] < 2:
            return  # a last batch of one sample has no dCor
        with torch.no_grad(), _one_thread(z):
            value = distance_correlation(x, z, dtype=DTYPES[self.dtype])
        size = int(x.shape[0])
        self._weighted_sum += float(value) * size
        self._samples += size
        self._batches += 1

    def _measures(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and (self.max_batches is None or self._batches < self.max_batches)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:  # noqa: D102
        self._remove_hook()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if trainer.sanity_checking or not self._samples:
            return
        self.value = self._weighted_sum / self._samples
        if trainer.state.fn == "fit":
            self.history.append(self.value)
        pl_module.log(METRIC, self.value, on_epoch=True, batch_size=self._samples)

    def summary(self) -> dict[str, Any]:
        """``{"privacy/dcor": the last epoch's value}`` for :class:`~lightning_dsl.callbacks.RunSummary`."""
        return {} if self.value is None else {METRIC: self.value}

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"value": self.value, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        value = state_dict.get("value")
        self.value = None if value is None else float(value)
        self.history = [float(v) for v in state_dict.get("history", [])]


@contextmanager
def _one_thread(z: Tensor | MaskedSequence) -> Iterator[None]:
    """One intra-op thread for the small ``B x B`` matrices on a CPU (restored afterwards).

    They are too small to gain from threads, and on a busy machine the threads' waiting for each other costs
    far more than the work: measured on 2 shared cores (load 14), 260 ms per batch on 2 threads, 10 ms on one.
    """
    values = z.values if isinstance(z, MaskedSequence) else z
    threads = torch.get_num_threads()
    if values.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
