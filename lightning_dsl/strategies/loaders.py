"""What each process of a split run iterates: a client its data (announced to the server), the server what arrives.

Lightning's loops run unchanged on every process. A client's loader is its own data; when the
client's loop sets a loader up it tells the server how many batches a pass over it has
(``EPOCH_BEGIN`` for training, ``EVAL_BEGIN`` for evaluation). The server has no data: its loader's
length is the clients' announced count (so Lightning's limits, the sanity check and
``is_last_batch`` work as on a client), and its batches are the clients' batches as they arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_dsl.core.cut import Arrival, Arrivals, Cut
from lightning_dsl.distributed import SERVER, Kind, Message, Transport
from lightning_dsl.distributed.cut import WireCut

DATA_HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


class SplitSide(Protocol):
    """What the loaders read from the strategy of their process (a :class:`~lightning_dsl.strategies.SplitStrategy`)."""

    @property
    def lightning_module(self) -> Any: ...  # noqa: D102

    @property
    def cut(self) -> Cut: ...  # noqa: D102

    @property
    def num_clients(self) -> int: ...  # noqa: D102

    transport: Transport | None
    server_order: str


def announce(loader: Any, strategy: SplitSide) -> None:
    """A client tells the server how many batches each pass over ``loader`` has (when it sends them at all)."""
    trainer = strategy.lightning_module.trainer  # type: ignore[union-attr]
    if trainer.training or strategy.cut.sends_evaluation:
        kind = Kind.EPOCH_BEGIN if trainer.training else Kind.EVAL_BEGIN
        plan = {"batches": len(loader), "stage": str(getattr(trainer.state.stage, "value", ""))}
        strategy.transport.send(Message.from_json(kind, plan), SERVER)  # type: ignore[union-attr]


class ServerLoader:
    """The server's loader: its batches are the clients' batches arriving at the cut.

    Its length is what the clients announced when their loops set up the same loader (training: the
    longest client's batch count; evaluation: the evaluating client's), so Lightning's limits, the
    sanity check and ``is_last_batch`` mean the same on both sides, and each pass ends where the
    clients' passes end. Training yields one step per *round*, the k-th batch of every client that has
    one (what ``CombinedLoader`` in ``max_size`` mode yields in one process), as :class:`Arrivals`,
    received in client order or, with ``server_order="arrival"``, as they come within the round.
    Evaluation yields one :class:`Arrival` of the evaluating client per step.
    """

    def __init__(self, strategy: SplitSide) -> None:
        self._strategy = strategy
        self._plan: tuple[bool, dict[int, int]] | None = None

    def _announced(self) -> tuple[bool, dict[int, int]]:
        if self._plan is None:
            training = bool(self._strategy.lightning_module.trainer.training)  # type: ignore[union-attr]
            kind = Kind.EPOCH_BEGIN if training else Kind.EVAL_BEGIN
            clients = range(self._strategy.num_clients) if training else (0,)
            transport = self._strategy.transport
            assert transport is not None
            counts = {i: int(transport.recv(i + 1, expect=kind).json()["batches"]) for i in clients}
            self._plan = (training, counts)
        return self._plan

    def __len__(self) -> int:
        training, counts = self._announced()
        return max(counts.values(), default=0) if training else counts[0]

    def __iter__(self) -> Iterator[Arrivals | Arrival]:
        # A generator: nothing is received until Lightning asks for a batch (it also calls iter() to check).
        training, counts = self._announced()
        if training:
            for k in range(max(counts.values(), default=0)):
                yield Arrivals(self._round([i for i, n in counts.items() if n > k]))
        else:
            while True:  # as many as the loop asks: its limits are the client's
                yield self._arrive(0)

    def _round(self, clients: list[int]) -> Iterator[Arrival]:
        if self._strategy.server_order == "client":
            for i in clients:
                yield self._arrive(i)
            return
        transport = self._strategy.transport
        assert transport is not None
        waiting = {i + 1 for i in clients}
        while waiting:
            peer, message = transport.recv_any(expect=Kind.BATCH, peers=tuple(sorted(waiting)))
            waiting.discard(peer)
            yield self._delivered(peer - 1, message)

    def _arrive(self, client: int) -> Arrival:
        transport = self._strategy.transport
        assert transport is not None
        return self._delivered(client, transport.recv(client + 1, expect=Kind.BATCH))

    def _delivered(self, client: int, message: Message) -> Arrival:
        cut = self._strategy.cut
        assert isinstance(cut, WireCut)
        cut.deliver(client, message)
        labels = message.payloads[-1].shape if len(message.payloads) > 1 else (0,)  # the labels come last
        return Arrival(client, reply=bool(message.step), samples=int(labels[0]) if len(labels) else 0)


def without_data(trainer: Trainer, strategy: SplitSide) -> None:
    """The server loads no dataset: its data module's data hooks are replaced, on this instance only.

    ``prepare_data``, ``setup`` and ``teardown`` do nothing; each ``*_dataloader`` hook returns a
    :class:`ServerLoader`.
    """
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        return
    for hook in ("prepare_data", "setup", "teardown"):
        if is_overridden(hook, datamodule):
            setattr(datamodule, hook, lambda *args, **kwargs: None)
    for hook in DATA_HOOKS:
        if is_overridden(hook, datamodule):
            setattr(datamodule, hook, lambda: ServerLoader(strategy))
