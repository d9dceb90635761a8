"""One training loader per simulated client, served in parallel or one client after another.

In both schedules a training step receives a list of ``num_clients`` entries in client order: an ``(inputs,
labels)`` batch of that client, or ``None`` for a client with no batch at this step. :class:`ClientsDataMixin`
gives a data module the arguments that partition its training set over the clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any

from lightning.pytorch.utilities import CombinedLoader, rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_dsl.core.clients import CLIENT_SCHEDULES
from lightning_dsl.data.partition import Partition, check_partition_args


class SequentialClients(Iterable[list[Any]]):
    """All of client 0's batches, then all of client 1's, and so on, in the batch format of the parallel schedule.

    Each item is a list of ``len(loaders)`` entries in which only the current client's entry is not ``None``.
    Lightning's fit loop refuses ``CombinedLoader(mode="sequential")`` at the top level, hence this wrapper.
    Lightning does not look inside it, so in a multi-process run its loaders get no distributed sampler.

    Args:
        loaders: one sized iterable of batches per client.

    Example::

        >>> batches = list(SequentialClients([[1, 2], [3]]))
        >>> batches
        [[1, None], [2, None], [None, 3]]
    """

    def __init__(self, loaders: Sequence[Iterable]) -> None:
        self.loaders = list(loaders)

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders if isinstance(loader, Sized))

    def __iter__(self) -> Iterator[list[Any]]:
        for i, loader in enumerate(self.loaders):
            for batch in loader:
                entries: list[Any] = [None] * len(self.loaders)
                entries[i] = batch
                yield entries


def client_loaders(loaders: Sequence[Iterable], schedule: str = "parallel") -> CombinedLoader | SequentialClients:
    """Serve one loader per client in the given schedule.

    Args:
        loaders: one iterable of batches per client, in client order.
        schedule: ``"parallel"``: each step holds the next batch of every client, ``None`` for a client whose
            loader is used up this epoch (the epoch lasts as long as the longest loader; no sample is seen twice);
            ``"sequential"``: one client's batches after another's (:class:`SequentialClients`).

    Returns:
        ``CombinedLoader(list(loaders), mode="max_size")`` or ``SequentialClients(loaders)``.

    Raises:
        ValueError: if ``schedule`` is not one of ``CLIENT_SCHEDULES`` or ``loaders`` is empty.
    """
    if schedule not in CLIENT_SCHEDULES:
        raise ValueError(f"Expected argument `schedule` to be one of {list(CLIENT_SCHEDULES)}, but got {schedule!r}.")
    if not loaders:
        raise ValueError("Expected argument `loaders` to hold one loader per client, but got none.")
    if schedule == "parallel":
        return CombinedLoader(list(loaders), mode="max_size")
    return SequentialClients(loaders)


class ClientsDataMixin:
    """Partitions a data module's training set over ``num_clients`` clients and serves a loader per client.

    A data module calls :meth:`_init_clients` in its constructor, :meth:`_setup_partition` in ``setup`` once its
    training set exists, and returns :meth:`_client_dataloaders` from ``train_dataloader``. With one client the
    training loader is the data module's usual one; with more, each client gets a loader over its share
    (``torch.utils.data.Subset``), shuffled with its own generator seeded ``seed + 1 + i``, with the data module's
    batch size and worker settings. The LightningModule decides the schedule: its ``client_schedule`` attribute
    (``"parallel"`` or ``"sequential"``, see :func:`client_loaders`), ``"parallel"`` when it has none or no trainer
    is attached. Validation and test loaders are not partitioned.

    Each client's loader starts its own ``num_workers`` worker processes (all at once in the parallel schedule):
    with many clients, ``num_workers=0`` is usually best (the data sets are held in memory).
    """

    seed: int
    num_clients: int
    partition_scheme: str
    alpha: float | None
    shards_per_client: int | None
    drop_remainder: bool
    partition: Partition | None

    def _init_clients(
        self,
        num_clients: int,
        partition: str,
        alpha: float | None,
        shards_per_client: int | None,
        drop_remainder: bool = False,
    ) -> None:
        check_partition_args(num_clients, partition, alpha, shards_per_client, drop_remainder)
        self.num_clients = num_clients
        self.partition_scheme = partition
        self.alpha = alpha
        self.shards_per_client = shards_per_client
        self.drop_remainder = drop_remainder
        self.partition = None

    def _split_client(self) -> tuple[int, int] | None:
        """``(client index, number of clients)`` when this process is one client of a split run, else ``None``.

        The split strategy (``strategy="split"``) says so with its ``client_index`` and ``num_clients``: the
        partition then has one shard per client process and this process serves its own.
        """
        strategy = getattr(getattr(self, "trainer", None), "strategy", None)
        index = getattr(strategy, "client_index", None)
        return None if index is None else (int(index), int(strategy.num_clients))  # type: ignore[union-attr]

    def _setup_partition(self, targets: Tensor, num_classes: int) -> None:
        """Partition the training set of labels ``targets`` (seeded by ``seed``) unless there is one client."""
        split = self._split_client()
        num_clients = split[1] if split is not None else self.num_clients
        if num_clients == 1 or self.partition is not None:
            return
        self.partition = Partition.from_targets(
            targets,
            num_clients,
            self.partition_scheme,
            self.alpha,
            self.shards_per_client,
            seed=self.seed,
            num_classes=num_classes,
            drop_remainder=self.drop_remainder,
        )
        sizes, dropped = self.partition.sizes, self.partition.num_dropped
        rank_zero_info(
            f"{type(self).__name__}: {len(targets)} training samples over {num_clients} clients"
            f" ({self.partition_scheme}), {min(sizes)} to {max(sizes)} each"
            + (f", {dropped} dropped (drop_remainder=True)." if dropped else ".")
        )

    def _client_dataloaders(
        self, train_set: Dataset, make_loader: Callable[[Dataset, int], DataLoader]
    ) -> DataLoader | CombinedLoader | SequentialClients:
        """``make_loader(train_set, seed)`` with one client, else one shuffled loader per client's ``Subset``."""
        if self.partition is None:
            return make_loader(train_set, self.seed)
        split = self._split_client()
        if split is not None:  # one client process of a split run: its own shard, seeded as in one process
            index = split[0]
            return make_loader(Subset(train_set, self.partition.indices[index].tolist()), self.seed + 1 + index)
        loaders = [
            make_loader(Subset(train_set, idx.tolist()), self.seed + 1 + i)
            for i, idx in enumerate(self.partition.indices)
        ]
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return client_loaders(loaders, getattr(module, "client_schedule", "parallel"))
