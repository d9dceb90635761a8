"""FedAvg rounds between a server and clients in separate processes.

:class:`RemoteClientPool` takes the place of :class:`~lightning_dsl.core.clients.ClientPool` in each
process of a split run. A process holds one side: a client its own half and head, the server the
aggregate. The rounds are the in-process parallel schedule's (an upload after the last batch of every
``aggregate_every``-th epoch and at the end of fit, the shard-weighted average, the download), with
one difference that changes no parameter: the average comes down at once, before validation, because
between two processes there is no "aggregate and own model side by side" to evaluate (in one process
it comes down at the next epoch's start; no client trains in between, so training is the same).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_dsl.core.clients import ClientPair, ClientPool
from lightning_dsl.core.cut import Cut
from lightning_dsl.core.fedavg import client_state, fedavg, load_client_state


class RemoteClientPool(ClientPool):
    """One process's view of the federation: one client (or the server) and the rounds over the cut.

    Args:
        federation: number of clients in the run (``WORLD_SIZE - 1``).
        aggregate_every: a FedAvg round closes every this many epochs; 0: only at the end of fit.
        is_server: whether this process is the server (rank 0).

    Attributes:
        num_clients: always 1 here: a process trains one client's batches (or, on the server, one
            client's batch per step); :attr:`federation` is the run's count.
    """

    def __init__(self, federation: int, aggregate_every: int, is_server: bool) -> None:
        super().__init__(1, "parallel", aggregate_every)
        self.federation = federation
        self.is_server = is_server

    def trained(self, index: int, samples: int) -> None:
        """Record samples trained since the last round (on the server: by any client)."""
        self.samples_since_sync[0] += samples

    def end_of_epoch(self, epoch: int, shared: ClientPair, cut: Cut, sizes: Sequence[int] | None) -> None:
        """After the epoch's last batch: a round when the epoch closes one."""
        if self.federation > 1 and self.aggregate_every and (epoch + 1) % self.aggregate_every == 0:
            self.average(shared, cut, sizes)

    def start_of_epoch(self, shared: ClientPair, cut: Cut) -> None:
        """Nothing: the average came down with the round."""

    def finish(self, shared: ClientPair, cut: Cut, sizes: Sequence[int] | None) -> None:
        """The end of training closes the last round, if anything was trained since."""
        if self.federation > 1 and any(self.samples_since_sync):
            self.average(shared, cut, sizes)

    def average(self, shared: ClientPair, cut: Cut, sizes: Sequence[int] | None) -> None:
        """One round. Client: upload (with its shard size as weight), wait for the average. Server: the FedAvg.

        ``sizes``: on a client, its shard size (one entry) when its loader tells it, else the samples it
        trained on since the last round.
        """
        if self.is_server:
            received = [cut.receive_state_up(i) for i in range(self.federation)]
            weights = [weight for _, weight in received]
            if not sum(weights):
                weights = [1] * self.federation
            load_client_state(*shared, fedavg([state for state, _ in received], weights))
            state = client_state(*shared)
            for i in range(self.federation):
                cut.send_state_down(state, client=i)
        else:
            weight = sizes[0] if sizes else self.samples_since_sync[0]
            cut.send_state_up(client_state(*shared), weight=weight)
            load_client_state(*shared, cut.receive_state_down())
        self.samples_since_sync = [0]
        self.pending_broadcast = False

    def broadcast(self, shared: ClientPair, cut: Cut) -> None:
        """Nothing to do apart from :meth:`average`, which sends the average down."""
