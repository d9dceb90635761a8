"""Bytes that cross the cut: per step, per epoch, in total, and the static picture of a deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_dsl.callbacks.throughput import batch_tokens, default_batch_size
from lightning_dsl.core.cut import Traffic

PREFIX = "comm/"


class CommunicationMonitor(Callback):
    """Log the bytes sent up (client to server) and down (server to client) through the module's cut.

    The cut counts every tensor it carries at its real dtype and size (a float16 or int8 payload
    costs what it costs; see :class:`~lightning_dsl.core.cut.Cut`); this callback reads its
    cumulative :class:`~lightning_dsl.core.cut.Traffic` at the start and the end of each batch and
    logs the difference:

    * training: ``comm/bytes_up`` and ``comm/bytes_down`` per step and summed per epoch (Lightning
      names them ``..._step`` and ``..._epoch``), and the running totals ``comm/total_bytes_up`` and
      ``comm/total_bytes_down``, which are also the attributes :attr:`total_bytes_up` and
      :attr:`total_bytes_down` and survive a resume from a checkpoint;
    * validation and test (their activations cross the cut too): ``comm/val_bytes_up``,
      ``comm/val_bytes_down``, ``comm/test_bytes_up``, ``comm/test_bytes_down``, summed per epoch;
    * model transfers (FedAvg's uploads and downloads, the sequential schedule's hand-over), counted
      apart from the activations: the running totals ``comm/sync_bytes_up`` and ``comm/sync_bytes_down``
      (also :attr:`sync_bytes_up`, :attr:`sync_bytes_down`);
    * with several clients, each client's link: the summary's ``comm/client{i}/total_bytes_up``,
      ``.../total_bytes_down``, ``.../sync_bytes_up`` and ``.../sync_bytes_down`` (training and sync);
    * sequences (batches of :class:`~lightning_dsl.core.sequence.MaskedSequence`): the real tokens and the
      padded positions sent up in training, :attr:`tokens_up` and :attr:`positions_up`, and in the summary
      ``comm/tokens_up``, ``comm/positions_up`` and ``comm/bytes_per_token_up`` (training bytes up per real
      token: the padding, the mask and the labels included);
    * the static picture, at the first training batch: :attr:`bytes_per_sample_up` and
      :attr:`bytes_per_sample_down` (down: of the first batch that sends anything down) and the
      one-time cost of handing the client over, :attr:`client_parameter_bytes` (client and
      auxiliary-head parameters) and :attr:`client_state_bytes` (with the buffers, the whole
      ``state_dict``).

    Logged values are float64 on the CPU, exact up to 2**53 bytes. Each process counts its own
    traffic.

    Args:
        batch_size_fn: returns the number of samples in a batch (default: the length of its first tensor).
        prog_bar: show the running total of bytes up in the progress bar.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = CommunicationMonitor()
        >>> trainer = Trainer(callbacks=[monitor])  # doctest: +SKIP
        >>> monitor.total_bytes_up, monitor.total_bytes_down
        (0, 0)
    """

    def __init__(self, batch_size_fn: Callable[[Any], int] | None = None, prog_bar: bool = False) -> None:
        self.batch_size_fn = batch_size_fn or default_batch_size
        self.prog_bar = prog_bar
        self.total_bytes_up = 0
        self.total_bytes_down = 0
        self.bytes_per_sample_up: float | None = None
        self.bytes_per_sample_down: float | None = None
        self.sync_bytes_up = 0
        self.sync_bytes_down = 0
        self.client_totals: dict[int, Traffic] = {}  # training and sync traffic of each client's link
        self._tokens_up: torch.Tensor | int = 0  # real tokens sent up in training, kept on the device (0: no sequences)
        self.positions_up = 0  # their padded positions
        self.client_parameter_bytes: int | None = None
        self.client_state_bytes: int | None = None
        self.val_bytes_up = 0  # of the last complete validation run
        self.val_bytes_down = 0
        self.test_bytes_up = 0
        self.test_bytes_down = 0
        self._snapshot = Traffic()
        self._client_snapshot: dict[int, Traffic] = {}
        self._sync_mark = Traffic()  # the cut's traffic when the model transfers were last counted
        self._client_sync_mark: dict[int, Traffic] = {}
        self._eval_traffic = Traffic()
        self._cut: Any = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _traffic(pl_module: LightningModule) -> Traffic:
        cut = getattr(pl_module, "cut", None)
        traffic = getattr(cut, "traffic", None)
        if not isinstance(traffic, Traffic):
            raise TypeError(
                "CommunicationMonitor reads the traffic of the module's cut, so it needs a `DecoupledSplitModule`"
                f" (a module with `cut.traffic`), but got `{type(pl_module).__name__}`."
            )
        return traffic

    @staticmethod
    def _links(pl_module: LightningModule) -> dict[int, Traffic]:
        """The traffic of each client's link (one entry per client that has used the cut)."""
        return getattr(getattr(pl_module, "cut", None), "client_traffic", {})

    def _log(self, pl_module: LightningModule, name: str, value: int, batch_size: int, **kwargs: Any) -> None:
        # float64 on the CPU: exact byte counts, and no host-device copy per step.
        pl_module.log(PREFIX + name, torch.tensor(value, dtype=torch.float64), batch_size=batch_size, **kwargs)

    # ------------------------------------------------------------------ training
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._sync_mark = self._traffic(pl_module).copy()
        self._cut = pl_module.cut
        self._client_sync_mark = {i: t.copy() for i, t in self._links(pl_module).items()}
        modules = [getattr(pl_module, name, None) for name in ("client", "aux_head")]
        client = [m for m in modules if isinstance(m, torch.nn.Module)]
        parameters = {id(p): p for m in client for p in m.parameters()}.values()
        buffers = {id(b): b for m in client for b in m.buffers()}.values()
        self.client_parameter_bytes = sum(p.numel() * p.element_size() for p in parameters)
        self.client_state_bytes = self.client_parameter_bytes + sum(b.numel() * b.element_size() for b in buffers)

    def on_train_batch_start(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._snapshot = self._traffic(pl_module).copy()
        self._client_snapshot = {i: t.copy() for i, t in self._links(pl_module).items()}

    def on_train_batch_end(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        sent = self._traffic(pl_module) - self._snapshot
        batch_size = self.batch_size_fn(batch)
        self.total_bytes_up += sent.bytes_up
        self.total_bytes_down += sent.bytes_down
        for client, traffic in self._links(pl_module).items():
            delta = traffic - self._client_snapshot.get(client, Traffic())
            delta.sync_bytes_up = delta.sync_bytes_down = 0  # counted by _count_sync, wherever they happened
            self.client_totals[client] = self.client_totals.get(client, Traffic()) + delta
        self._count_sync()
        tokens = batch_tokens(batch) if sent.bytes_up else None  # a server in its own process has no inputs
        if tokens is not None:
            self._tokens_up = tokens[0] + self._tokens_up  # read (one copy to the host) only when asked for
            self.positions_up += tokens[1]
        if self.bytes_per_sample_up is None:
            self.bytes_per_sample_up = sent.bytes_up / batch_size
        if not self.bytes_per_sample_down and sent.bytes_down:  # hybrid: the first batch that sends down
            self.bytes_per_sample_down = sent.bytes_down / batch_size
        elif self.bytes_per_sample_down is None:
            self.bytes_per_sample_down = 0.0
        step: dict[str, Any] = {"on_step": True, "on_epoch": True, "reduce_fx": "sum"}
        self._log(pl_module, "bytes_up", sent.bytes_up, batch_size, **step)
        self._log(pl_module, "bytes_down", sent.bytes_down, batch_size, **step)
        self._log(pl_module, "total_bytes_up", self.total_bytes_up, batch_size, on_step=True, prog_bar=self.prog_bar)
        self._log(pl_module, "total_bytes_down", self.total_bytes_down, batch_size, on_step=True)
        self._log(pl_module, "sync_bytes_up", self.sync_bytes_up, batch_size, on_step=True)
        self._log(pl_module, "sync_bytes_down", self.sync_bytes_down, batch_size, on_step=True)

    @property
    def tokens_up(self) -> int:
        """Real tokens of the sequences sent up in training (0 for other inputs)."""
        return int(self._tokens_up)

    def _count_sync(self) -> None:
        """Add the model transfers made since the last count.

        They happen inside a batch (the upload after the epoch's last batch), between epochs (the average
        sent down) and after the last batch (the end of fit).
        """
        if self._cut is None:
            return
        sent = self._cut.traffic - self._sync_mark
        self.sync_bytes_up += sent.sync_bytes_up
        self.sync_bytes_down += sent.sync_bytes_down
        for client, traffic in self._cut.client_traffic.items():
            link = traffic - self._client_sync_mark.get(client, Traffic())
            total = self.client_totals.setdefault(client, Traffic())
            total.sync_bytes_up += link.sync_bytes_up
            total.sync_bytes_down += link.sync_bytes_down
        self._sync_mark = self._cut.traffic.copy()
        self._client_sync_mark = {i: t.copy() for i, t in self._cut.client_traffic.items()}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._count_sync()  # the module's end-of-fit FedAvg runs after the callbacks' on_train_end

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_traffic = Traffic()

    def _eval_batch_start(self, pl_module: LightningModule) -> None:
        self._snapshot = self._traffic(pl_module).copy()

    def _eval_batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any, stage: str) -> None:
        sent = self._traffic(pl_module) - self._snapshot
        self._eval_traffic.bytes_up += sent.bytes_up
        self._eval_traffic.bytes_down += sent.bytes_down
        if not trainer.sanity_checking:
            kwargs: dict[str, Any] = {"on_step": False, "on_epoch": True, "reduce_fx": "sum"}
            batch_size = self.batch_size_fn(batch)
            self._log(pl_module, f"{stage}_bytes_up", sent.bytes_up, batch_size, **kwargs)
            self._log(pl_module, f"{stage}_bytes_down", sent.bytes_down, batch_size, **kwargs)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._eval_start(trainer, pl_module)

    def on_validation_batch_start(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(pl_module)

    def on_validation_batch_end(  # noqa: D102
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, pl_module, batch, "val")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if not trainer.sanity_checking:
            self.val_bytes_up, self.val_bytes_down = self._eval_traffic.bytes_up, self._eval_traffic.bytes_down

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._eval_start(trainer, pl_module)

    def on_test_batch_start(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(pl_module)

    def on_test_batch_end(  # noqa: D102
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, pl_module, batch, "test")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self.test_bytes_up, self.test_bytes_down = self._eval_traffic.bytes_up, self._eval_traffic.bytes_down

    # ------------------------------------------------------------------ state and results
    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {
            "total_bytes_up": self.total_bytes_up,
            "total_bytes_down": self.total_bytes_down,
            "bytes_per_sample_up": self.bytes_per_sample_up,
            "bytes_per_sample_down": self.bytes_per_sample_down,
            "sync_bytes_up": self.sync_bytes_up,
            "sync_bytes_down": self.sync_bytes_down,
            "client_totals": {i: vars(t).copy() for i, t in self.client_totals.items()},
            "tokens_up": self.tokens_up,
            "positions_up": self.positions_up,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.total_bytes_up = int(state_dict.get("total_bytes_up", 0))
        self.total_bytes_down = int(state_dict.get("total_bytes_down", 0))
        self.bytes_per_sample_up = state_dict.get("bytes_per_sample_up")
        self.bytes_per_sample_down = state_dict.get("bytes_per_sample_down")
        self.sync_bytes_up = int(state_dict.get("sync_bytes_up", 0))
        self.sync_bytes_down = int(state_dict.get("sync_bytes_down", 0))
        self.client_totals = {int(i): Traffic(**t) for i, t in state_dict.get("client_totals", {}).items()}
        self._tokens_up = int(state_dict.get("tokens_up", 0))
        self.positions_up = int(state_dict.get("positions_up", 0))

    def summary(self) -> dict[str, float | int]:
        """The figures for the end-of-run summary (keys as logged, plus the static picture)."""
        self._count_sync()  # the transfers that close fit come after the last batch
        figures: dict[str, float | int | None] = {
            "total_bytes_up": self.total_bytes_up,
            "total_bytes_down": self.total_bytes_down,
            "bytes_per_sample_up": self.bytes_per_sample_up,
            "bytes_per_sample_down": self.bytes_per_sample_down,
            "client_parameter_bytes": self.client_parameter_bytes,
            "client_state_bytes": self.client_state_bytes,
            "val_bytes_up": self.val_bytes_up,
            "val_bytes_down": self.val_bytes_down,
            "test_bytes_up": self.test_bytes_up,
            "test_bytes_down": self.test_bytes_down,
            "sync_bytes_up": self.sync_bytes_up,
            "sync_bytes_down": self.sync_bytes_down,
        }
        tokens = self.tokens_up
        if tokens:
            figures["tokens_up"] = tokens
            figures["positions_up"] = self.positions_up
            figures["bytes_per_token_up"] = self.total_bytes_up / tokens
        if len(self.client_totals) > 1:
            for client, traffic in sorted(self.client_totals.items()):
                figures[f"client{client}/total_bytes_up"] = traffic.bytes_up
                figures[f"client{client}/total_bytes_down"] = traffic.bytes_down
                figures[f"client{client}/sync_bytes_up"] = traffic.sync_bytes_up
                figures[f"client{client}/sync_bytes_down"] = traffic.sync_bytes_down
        return {PREFIX + k: v for k, v in figures.items() if v is not None}
