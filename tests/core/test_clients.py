"""The torch-only pieces of many clients: the batch format, the pool of client halves, FedAvg's bookkeeping."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from lightning_dsl.core import clients as clients_module
from lightning_dsl.core import fedavg as fedavg_module
from lightning_dsl.core.clients import ClientPool, client_batches, shard_sizes
from lightning_dsl.core.cut import Cut
from lightning_dsl.core.fedavg import client_state, state_nbytes


def shared_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), nn.Linear(3, 2)


@pytest.mark.parametrize("module", [clients_module, fedavg_module])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_batch_format() -> None:
    x, y = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)
    assert [i for i, _, _ in client_batches((x, y), 1, "parallel")] == [0]
    assert [i for i, _, _ in client_batches([None, (x, y), (x, y)], 3, "parallel")] == [1, 2]
    assert [i for i, _, _ in client_batches([None, (x, y)], 2, "sequential")] == [1]
    with pytest.raises(ValueError, match="client 1's entry"):
        client_batches([(x, y), x], 2, "parallel")
    with pytest.raises(ValueError, match="one client at a time"):
        client_batches([(x, y), (x, y)], 2, "sequential")


def test_parallel_pool_gives_each_client_its_own_copy() -> None:
    shared = shared_pair()
    pool = ClientPool(3, "parallel", aggregate_every=2)
    pool.build(shared)
    pairs = [pool.pair(i, shared) for i in range(3)]
    assert len({id(p[0]) for p in pairs}) == 3 and all(p[0] is not shared[0] for p in pairs)
    with torch.no_grad():
        pairs[1][0][0].weight.add_(1.0)
    assert not torch.equal(pairs[1][0][0].weight, shared[0][0].weight)
    assert pool.enter(1, shared, Cut())[0] is pairs[1][0]


def test_rounds_close_every_aggregate_every_epochs_and_broadcast_at_the_next_epoch() -> None:
    shared, cut = shared_pair(), Cut()
    pool = ClientPool(2, "parallel", aggregate_every=2)
    pool.build(shared)
    pool.trained(0, 3)
    pool.end_of_epoch(0, shared, cut, sizes=[3, 1])  # epoch 1 of 2: no round
    assert cut.traffic.sync_bytes_up == 0 and pool.differ
    pool.end_of_epoch(1, shared, cut, sizes=[3, 1])  # the round closes: upload and average
    per_transfer = state_nbytes(client_state(*shared))
    assert (cut.traffic.sync_bytes_up, cut.traffic.sync_bytes_down) == (2 * per_transfer, 0)
    assert pool.pending_broadcast and pool.differ
    pool.start_of_epoch(shared, cut)  # the average goes down
    assert cut.traffic.sync_bytes_down == 2 * per_transfer and not pool.differ
    pool.finish(shared, cut, sizes=[3, 1])  # nothing trained since: nothing more crosses
    assert cut.traffic.sync_bytes_up == 2 * per_transfer


def test_sequential_pool_hands_the_one_model_over_through_the_server() -> None:
    shared, cut = shared_pair(), Cut()
    pool = ClientPool(3, "sequential", aggregate_every=1)
    pool.build(shared)
    assert len(pool.replicas) == 0
    assert pool.enter(0, shared, cut) is shared and cut.traffic.sync_bytes_up == 0
    pool.enter(2, shared, cut)
    per_transfer = state_nbytes(client_state(*shared))
    assert cut.client_traffic[0].sync_bytes_up == per_transfer  # up from client 0
    assert cut.client_traffic[2].sync_bytes_down == per_transfer  # down to client 2
    assert pool.active == 2


def test_state_round_trip() -> None:
    pool = ClientPool(2, "parallel", aggregate_every=1)
    pool.trained(1, 7)
    pool.pending_broadcast = True
    other = ClientPool(2, "parallel", aggregate_every=1)
    other.load_state(pool.state())
    assert (
        other.state()
        == pool.state()
        == {
            "active_client": 0,
            "samples_since_sync": [0, 7],
            "pending_broadcast": True,
        }
    )


def test_shard_sizes_from_loaders() -> None:
    loaders = [torch.utils.data.DataLoader(list(range(n))) for n in (5, 2)]
    assert shard_sizes(loaders, 2) == [5, 2]
    assert shard_sizes(loaders, 3) is None and shard_sizes(None, 2) is None
    assert shard_sizes([iter([1]), iter([2])], 2) is None
