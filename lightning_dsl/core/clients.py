"""Many clients against one server: the batch format, FedAvg of the client halves, and the hand-over.

Two schedules (``client_schedule``):

* ``"parallel"`` (SplitFed, Thapa et al. 2022): every client has its own client half, auxiliary
  head and optimizer state. A training batch holds one batch per client; each client takes its
  step on its own batch, and the one server takes one step per client batch, in client order.
  Every few epochs the clients' halves and heads go up and are averaged (:func:`average`, FedAvg
  weighted by shard size), and the average goes back down to every client (:func:`broadcast`).
* ``"sequential"`` (vanilla split learning, Gupta & Raskar 2018): one client half and head,
  handed from client to client (:func:`hand_over`); client ``i`` trains on its whole shard before
  client ``i + 1`` gets the model.

Every model transfer crosses the cut (:meth:`~lightning_dsl.core.cut.Cut.send_state_up` and
:meth:`~lightning_dsl.core.cut.Cut.send_state_down`), so it is counted like the activations, as
sync traffic, and a transport between processes carries it like everything else.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lightning_dsl.core.cut import Cut
from lightning_dsl.core.fedavg import client_state, fedavg, load_client_state
from lightning_dsl.core.sequence import Activation, is_inputs

CLIENT_SCHEDULES = ("parallel", "sequential")
"""``"parallel"``: every client has its own client half and head, averaged (FedAvg) every few epochs
(SplitFed); ``"sequential"``: one client network handed from client to client (vanilla split learning)."""

ClientPair = tuple[nn.Module, nn.Module]
"""A client's half and its auxiliary head."""


def check_client_args(num_clients: Any, client_schedule: Any, aggregate_every: Any) -> None:
    """Refuse bad values of the many-clients arguments of :class:`~lightning_dsl.DecoupledSplitModule`.

    Raises:
        ValueError: naming the argument, the value and what is allowed.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"Expected argument `num_clients` to be an int >= 1, but got {num_clients!r}.")
    if client_schedule not in CLIENT_SCHEDULES:
        raise ValueError(
            f"Expected argument `client_schedule` to be one of {list(CLIENT_SCHEDULES)}, but got {client_schedule!r}."
        )
    if isinstance(aggregate_every, bool) or not isinstance(aggregate_every, int) or aggregate_every < 0:
        raise ValueError(
            "Expected argument `aggregate_every` to be an int >= 0 (FedAvg every that many epochs; 0: only at the"
            f" end of fit), but got {aggregate_every!r}."
        )


def client_batches(batch: Any, num_clients: int, schedule: str) -> list[tuple[int, Activation, Tensor]]:
    """Return the ``(client, inputs, labels)`` of a training batch, in client order.

    With one client a batch is ``(inputs, labels, ...)`` as usual. With ``num_clients = N > 1`` it is a
    sequence of N entries, one per client in client order, each ``(inputs, labels, ...)`` or ``None`` for a
    client without a batch in this step (what Lightning's ``CombinedLoader`` yields for a list of N
    loaders; see :func:`lightning_dsl.data.client_loaders`). The sequential schedule takes one client's
    batch per step.

    Raises:
        ValueError: for a batch whose client count differs from ``num_clients``, an entry that is not an
            ``(inputs, labels)`` pair, or several clients' batches in one step of the sequential schedule.
    """
    if num_clients == 1 and _is_pair(batch):
        return [(0, batch[0], batch[1])]
    if _is_pair(batch) or not isinstance(batch, (list, tuple)) or len(batch) != num_clients:
        if _is_pair(batch):
            found = "a single (inputs, labels) batch"
        else:
            found = f"a sequence of {len(batch)} entries" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise ValueError(
            f"Expected a training batch of `num_clients`={num_clients} client batches (a sequence of one"
            f" (inputs, labels) pair or None per client, as CombinedLoader yields for {num_clients} loaders), but got"
            f" {found}. Serve the clients' data with lightning_dsl.data.client_loaders(loaders) or a data module"
            " with `num_clients`."
        )
    found_batches = []
    for index, entry in enumerate(batch):
        if entry is None:
            continue
        if not _is_pair(entry):
            raise ValueError(
                f"Expected client {index}'s entry of the training batch to be an (inputs, labels) pair or None, but"
                f" got {type(entry).__name__}."
            )
        found_batches.append((index, entry[0], entry[1]))
    if schedule == "sequential" and len(found_batches) > 1:
        raise ValueError(
            f"client_schedule='sequential' trains one client at a time, but a training batch holds batches of"
            f" clients {[i for i, _, _ in found_batches]}: serve the data with"
            " lightning_dsl.data.client_loaders(loaders, 'sequential') (the data modules do so when the module's"
            " client_schedule is 'sequential')."
        )
    return found_batches


def client_entries(batch: Any) -> list[Any] | None:
    """The present entries of a batch of many clients (``None`` entries dropped), or ``None`` for any other batch.

    A batch of many clients is a sequence whose first element is not a tensor and whose entries are
    ``None`` or sequences ``(inputs, labels, ...)``: what :func:`client_batches` takes.

    Example::

        >>> import torch
        >>> x = torch.zeros(2, 3)
        >>> len(client_entries([None, (x, x), (x, x)])), client_entries((x, x))
        (2, None)
    """
    if not isinstance(batch, (list, tuple)) or not batch or is_inputs(batch[0]):
        return None
    entries = [entry for entry in batch if entry is not None]
    if entries and all(isinstance(entry, (list, tuple)) for entry in entries):
        return entries
    return None


def _is_pair(entry: Any) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) >= 2 and is_inputs(entry[0])


def average(clients: Sequence[ClientPair], weights: Sequence[float], cut: Cut, into: ClientPair) -> None:
    """FedAvg's first half: the clients' states go up and their weighted average is loaded into ``into``."""
    states = [cut.send_state_up(client_state(*pair), client=i) for i, pair in enumerate(clients)]
    load_client_state(*into, fedavg(states, weights))


def broadcast(source: ClientPair, num_clients: int, cut: Cut, clients: Sequence[ClientPair]) -> None:
    """FedAvg's second half: ``source`` (the average) goes down to every client."""
    state = client_state(*source)
    for i in range(num_clients):
        load_client_state(*clients[i], cut.send_state_down(state, client=i))


def hand_over(pair: ClientPair, cut: Cut, source: int, target: int) -> None:
    """Hand a client half and head from client ``source`` to client ``target``, through the server.

    Clients talk only to the server, so the model goes up from ``source`` and down to ``target``.
    """
    state = cut.send_state_up(client_state(*pair), client=source)
    load_client_state(*pair, cut.send_state_down(state, client=target))


def clone_pair(pair: ClientPair) -> ClientPair:
    """An independent copy of a client half and head (parameters, buffers and all)."""
    return copy.deepcopy(pair[0]), copy.deepcopy(pair[1])


def shard_sizes(loaders: Any, num_clients: int) -> list[int] | None:
    """The clients' dataset sizes, read from their training loaders, or ``None`` when they do not tell.

    ``loaders`` is what ``trainer.train_dataloader`` holds: a sequence of one loader per client (or an
    object with such a ``loaders`` attribute, as :class:`~lightning_dsl.data.SequentialClients`), each with
    a sized ``dataset``; with one client, its loader.
    """
    loaders = getattr(loaders, "loaders", loaders)
    if num_clients == 1 and hasattr(loaders, "dataset"):  # one client's own loader
        loaders = [loaders]
    if not isinstance(loaders, (list, tuple)) or len(loaders) != num_clients:
        return None
    try:
        return [len(loader.dataset) for loader in loaders]
    except (AttributeError, TypeError):
        return None


class ClientPool(nn.Module):
    """The clients of one server: their halves and heads, who holds the model, and the FedAvg rounds.

    The aggregate (or, with one client or the sequential schedule, the one shared) client half and
    head belong to the caller, who passes them in as ``shared``; the pool holds what exists only
    with many parallel clients: each client's own copy (:attr:`replicas`, registered as submodules
    so they move with the model and are saved with it) and the bookkeeping of a round.

    Args:
        num_clients: number of clients.
        schedule: ``"parallel"`` or ``"sequential"`` (see the module docstring).
        aggregate_every: parallel: a FedAvg round closes every this many epochs; 0: only at the end.

    Example::

        >>> pool = ClientPool(3, "parallel", aggregate_every=1)
        >>> shared = (nn.Linear(4, 4), nn.Linear(4, 2))
        >>> pool.build(shared)
        >>> len(pool.replicas), pool.pair(2, shared)[0] is shared[0]
        (3, False)
    """

    def __init__(self, num_clients: int, schedule: str, aggregate_every: int) -> None:
        super().__init__()
        check_client_args(num_clients, schedule, aggregate_every)
        self.num_clients = num_clients
        self.schedule = schedule
        self.aggregate_every = aggregate_every
        self.replicas = nn.ModuleList()
        self.active = 0  # sequential: the client that holds the model now
        self.samples_since_sync = [0] * num_clients  # parallel: what each client trained on since the last round
        self.pending_broadcast = False  # parallel: the average is made, not yet sent down

    @property
    def has_replicas(self) -> bool:
        """Whether each client has its own half and head (parallel, more than one client)."""
        return self.schedule == "parallel" and self.num_clients > 1

    def build(self, shared: ClientPair) -> None:
        """Give every client its own copy of ``shared`` (parallel, N > 1), all starting from the same weights."""
        if self.has_replicas and not len(self.replicas):
            for _ in range(self.num_clients):
                client, head = clone_pair(shared)
                self.replicas.append(nn.ModuleDict({"client": client, "aux_head": head}))

    def pair(self, index: int, shared: ClientPair) -> ClientPair:
        """Client ``index``'s half and head: its own copy, or ``shared``."""
        if not self.has_replicas:
            return shared
        replica = self.replicas[index]
        assert isinstance(replica, nn.ModuleDict)
        return replica["client"], replica["aux_head"]

    def enter(self, index: int, shared: ClientPair, cut: Cut) -> ClientPair:
        """The pair client ``index`` trains with now; in the sequential schedule the model is handed to it first."""
        if self.schedule == "sequential" and index != self.active:
            hand_over(shared, cut, self.active, index)
            self.active = index
        return self.pair(index, shared)

    def trained(self, index: int, samples: int) -> None:
        """Record that client ``index`` trained on ``samples`` samples."""
        self.samples_since_sync[index] += samples

    @property
    def differ(self) -> bool:
        """Whether the clients' own halves and heads may differ from the aggregate (between two rounds)."""
        return self.has_replicas and (self.pending_broadcast or any(self.samples_since_sync))

    def end_of_epoch(self, epoch: int, shared: ClientPair, cut: Cut, sizes: Sequence[int] | None) -> None:
        """After epoch ``epoch``'s (0-based) last batch: the upload and the average when the epoch closes a round.

        The average goes down at :meth:`start_of_epoch` (or :meth:`finish`), so an evaluation in between
        sees both the aggregate and each client's own model; no client trains in between.
        """
        if self.has_replicas and self.aggregate_every and (epoch + 1) % self.aggregate_every == 0:
            self.average(shared, cut, sizes)

    def start_of_epoch(self, shared: ClientPair, cut: Cut) -> None:
        """Send a pending average down to the clients."""
        if self.pending_broadcast:
            self.broadcast(shared, cut)

    def finish(self, shared: ClientPair, cut: Cut, sizes: Sequence[int] | None) -> None:
        """The end of training closes the last round, however it stopped."""
        if self.has_replicas and any(self.samples_since_sync):
            self.average(shared, cut, sizes)
        self.start_of_epoch(shared, cut)

    def average(self, shared: ClientPair, cut: Cut, sizes: Sequence[int] | None) -> None:
        """The clients' halves and heads go up and their FedAvg becomes ``shared``.

        Weighted by ``sizes`` (the shard sizes) when given, else by the samples each client trained on
        since the last round (equal weights when none did).
        """
        weights = list(sizes) if sizes is not None else list(self.samples_since_sync)
        if not sum(weights):
            weights = [1] * self.num_clients
        average([self.pair(i, shared) for i in range(self.num_clients)], weights, cut, into=shared)
        self.samples_since_sync = [0] * self.num_clients
        self.pending_broadcast = True

    def broadcast(self, shared: ClientPair, cut: Cut) -> None:
        """``shared`` (the average) goes down to every client."""
        broadcast(shared, self.num_clients, cut, [self.pair(i, shared) for i in range(self.num_clients)])
        self.pending_broadcast = False

    def state(self) -> dict[str, Any]:
        """The bookkeeping to save in a checkpoint (the replicas are in the module's state dict)."""
        return {
            "active_client": self.active,
            "samples_since_sync": list(self.samples_since_sync),
            "pending_broadcast": self.pending_broadcast,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` saved (absent keys keep their start values)."""
        self.active = int(state.get("active_client", 0))
        self.samples_since_sync = [int(n) for n in state.get("samples_since_sync", [0] * self.num_clients)]
        self.pending_broadcast = bool(state.get("pending_broadcast", False))
