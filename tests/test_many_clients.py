"""Many clients in one process: the module against hand-written references of SplitFed and sequential SL.

The references are written from the issue's definitions, not from ``lightning_dsl.core``: each client
has its own copy of the client half and auxiliary head and its own optimizer; the one server takes one
step per client batch, in client order; after the epoch the halves and heads (BatchNorm statistics
included) are averaged weighted by shard size and copied back. Sequential: one half and head, client 0
trains on its whole shard, then client 1, each client with its own optimizer state.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import CommunicationMonitor
from lightning_dsl.core.fedavg import client_state, fedavg
from tests.test_module import (
    BATCH,
    CLIENT_SGD,
    IN_SHAPE,
    NUM_CLASSES,
    SERVER_SGD,
    SPLIT,
    make_head,
    make_module,
    make_network,
    make_trainer,
    snapshot,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*no `val_dataloader`:UserWarning",
    "ignore:.*LeafSpec.*",
)

SHARDS = (12, 8)  # samples of client 0 and client 1: 3 and 2 batches of 4, so the last step has client 0 alone


def make_shards(sizes: tuple[int, ...] = SHARDS, seed: int = 3) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shards = []
    for client, size in enumerate(sizes):
        x = torch.randn(size, *IN_SHAPE, generator=generator, dtype=torch.float64)
        y = (torch.arange(size) + client) % NUM_CLASSES  # clients see different label mixes
        shards.append((x, y))
    return shards


def loaders(shards: list[tuple[Tensor, Tensor]]) -> list[DataLoader]:
    return [DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False) for x, y in shards]


def parallel_loader(shards: list[tuple[Tensor, Tensor]]) -> CombinedLoader:
    return CombinedLoader(loaders(shards), mode="max_size")


class Batches:
    """A re-iterable list of ready batches (Lightning takes a plain list for a list of loaders)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def sequential_batches(shards: list[tuple[Tensor, Tensor]]) -> Batches:
    """All of client 0's batches, then client 1's, each as a list with the other entries None."""
    steps = []
    for client, loader in enumerate(loaders(shards)):
        for batch in loader:
            entry: list[Any] = [None] * len(shards)
            entry[client] = batch
            steps.append(entry)
    return Batches(steps)


def assert_same_state(actual: nn.Module, expected: nn.Module, exact: bool = False) -> None:
    """Parameters and buffers agree, in order (a cut half numbers its layers from 0, a slice does not)."""
    got, want = list(actual.state_dict().items()), list(expected.state_dict().items())
    assert len(got) == len(want)
    for (name, tensor), (_, reference) in zip(got, want, strict=True):
        if exact:
            assert torch.equal(tensor, reference), name
        else:
            torch.testing.assert_close(tensor, reference, rtol=1e-7, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------------------------- references
class SplitFedReference:
    """Each client: its own copy of the client half and head, its own optimizer. One server."""

    def __init__(self, network: nn.Sequential, head: nn.Module, num_clients: int) -> None:
        self.client, self.head, self.server = network[:SPLIT], head, network[SPLIT:]
        self.clients = [(copy.deepcopy(self.client), copy.deepcopy(head)) for _ in range(num_clients)]
        self.client_opts = [torch.optim.SGD([*c.parameters(), *h.parameters()], **CLIENT_SGD) for c, h in self.clients]
        self.server_opt = torch.optim.SGD(self.server.parameters(), **SERVER_SGD)

    def step(self, client: int, x: Tensor, y: Tensor, mode: str) -> None:
        half, head = self.clients[client]
        opt = self.client_opts[client]
        if mode == "dsl":
            opt.zero_grad()
            z = half(x)
            cross_entropy(head(z), y).backward()
            opt.step()
            self.server_opt.zero_grad()
            cross_entropy(self.server(z.detach()), y).backward()
            self.server_opt.step()
        else:  # sl: end-to-end backprop through this client's half and the server; the head is a probe
            opt.zero_grad()
            self.server_opt.zero_grad()
            z = half(x)
            cross_entropy(self.server(z), y).backward()
            cross_entropy(head(z.detach()), y).backward()
            opt.step()
            self.server_opt.step()

    @torch.no_grad()
    def fedavg(self, weights: list[int]) -> None:
        total = sum(weights)
        for module_index in range(2):  # the half, then the head
            modules = [pair[module_index] for pair in self.clients]
            target = (self.client, self.head)[module_index]
            states = [m.state_dict() for m in modules]
            for name, tensor in target.state_dict().items():
                stacked = torch.stack([s[name].double() * (w / total) for s, w in zip(states, weights, strict=True)])
                average = stacked.sum(0)
                tensor.copy_(average.round() if not tensor.is_floating_point() else average)
            for module in modules:
                module.load_state_dict(target.state_dict())


def run_splitfed_reference(
    network: nn.Sequential, head: nn.Module, shards: list[tuple[Tensor, Tensor]], mode: str, epochs: int
) -> SplitFedReference:
    reference = SplitFedReference(network, head, len(shards))
    for _ in range(epochs):
        for step in parallel_steps(shards):
            for client, (x, y) in enumerate(step):
                if x is not None:
                    reference.step(client, x, y, mode)
        reference.fedavg([len(y) for _, y in shards])
    return reference


def parallel_steps(shards: list[tuple[Tensor, Tensor]]) -> list[list[tuple[Any, Any]]]:
    """Step t holds batch t of every client that still has one."""
    batches = [list(zip(x.split(BATCH), y.split(BATCH), strict=True)) for x, y in shards]
    longest = max(len(b) for b in batches)
    return [[b[t] if t < len(b) else (None, None) for b in batches] for t in range(longest)]


# ---------------------------------------------------------------------------------------------- parallel
@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_parallel_two_clients_match_splitfed_reference(mode: str) -> None:
    network, head = make_network(), make_head()
    ref_network, ref_head = copy.deepcopy(network), copy.deepcopy(head)
    shards = make_shards()
    model = make_module(network, head, mode=mode, num_clients=2)
    make_trainer(max_epochs=2).fit(model, parallel_loader(shards))
    reference = run_splitfed_reference(ref_network, ref_head, shards, mode, epochs=2)

    assert_same_state(model.server, reference.server)
    assert_same_state(model.client, reference.client)  # the aggregate, BatchNorm statistics included
    assert_same_state(model.aux_head, reference.head)
    for index in range(2):
        half, aux_head = model.client_pair(index)
        assert_same_state(half, reference.clients[index][0])
        assert_same_state(aux_head, reference.clients[index][1])
    # Two epochs of 3 + 2 client batches; every BatchNorm statistic counted (then averaged 12:8).
    assert model.batches_trained == 6
    assert int(model.server[1].num_batches_tracked) == 10


def test_parallel_clients_keep_their_own_optimizer_state() -> None:
    model = make_module(make_network(), make_head(), num_clients=3)
    optimizers, _ = model.configure_optimizers()
    assert len(optimizers) == 4  # one per client, then the server's
    client_params = [{id(p) for group in opt.param_groups for p in group["params"]} for opt in optimizers[:3]]
    assert not client_params[0] & client_params[1] and not client_params[1] & client_params[2]
    assert {id(p) for p in model.server.parameters()} == {id(p) for p in optimizers[3].param_groups[0]["params"]}
    aggregate_ids = {id(p) for p in [*model.client.parameters(), *model.aux_head.parameters()]}
    assert not aggregate_ids & set().union(*client_params)  # the aggregate is never trained directly


def test_aggregating_identical_clients_changes_nothing() -> None:
    model = make_module(make_network(), make_head(), num_clients=3)
    before = [snapshot(m) for m in (model.client, model.aux_head)]
    model.clients.samples_since_sync = [5, 1, 7]  # unequal weights: identical states still average to themselves
    model.aggregate_clients()
    for module, state in zip((model.client, model.aux_head), before, strict=True):
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, state[name]), name
    for index in range(3):
        half, aux_head = model.client_pair(index)
        assert_same_state(half, model.client, exact=True)
        assert_same_state(aux_head, model.aux_head, exact=True)


def test_fedavg_weights_by_shard_size_and_rounds_counters() -> None:
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([8.0, 0.0]), "n": torch.tensor(7)}
    average = fedavg([a, b], [3, 1])
    assert torch.equal(average["w"], torch.tensor([2.0, 3.0]))
    assert average["n"].dtype == torch.int64 and int(average["n"]) == 3  # 0.75 * 2 + 0.25 * 7 = 3.25


def state_bytes(*modules: nn.Module) -> int:
    """Parameters and buffers of the modules, at their dtypes: what one transfer of a client costs."""
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("epochs", [1, 2])
def test_parallel_sync_bytes_are_one_upload_and_one_download_per_client_and_round(epochs: int) -> None:
    network, head = make_network(), make_head()
    model = make_module(network, head, num_clients=2)
    monitor = CommunicationMonitor()
    make_trainer(max_epochs=epochs, callbacks=[monitor]).fit(model, parallel_loader(make_shards()))
    per_transfer = state_bytes(model.client, model.aux_head)
    assert per_transfer == state_bytes(network[:SPLIT], head)
    assert model.cut.traffic.sync_bytes_up == model.cut.traffic.sync_bytes_down == epochs * 2 * per_transfer
    assert monitor.sync_bytes_up == monitor.sync_bytes_down == epochs * 2 * per_transfer
    for client in (0, 1):
        assert model.cut.client_traffic[client].sync_bytes_up == epochs * per_transfer
    # Activations and labels per client: float64 z of (4, 6, 4, 4) + int64 labels per batch.
    per_batch = BATCH * 6 * 4 * 4 * 8 + BATCH * 8
    assert model.cut.client_traffic[0].bytes_up == epochs * 3 * per_batch
    assert model.cut.client_traffic[1].bytes_up == epochs * 2 * per_batch
    figures = monitor.summary()
    assert figures["comm/client1/total_bytes_up"] == epochs * 2 * per_batch
    assert figures["comm/sync_bytes_down"] == epochs * 2 * per_transfer


def test_aggregate_every_zero_averages_once_at_the_end_of_fit() -> None:
    model = make_module(make_network(), make_head(), num_clients=2, aggregate_every=0)
    make_trainer(max_epochs=2).fit(model, parallel_loader(make_shards()))
    per_transfer = state_bytes(model.client, model.aux_head)
    assert model.cut.traffic.sync_bytes_up == 2 * per_transfer
    assert_same_state(model.client_pair(0)[0], model.client, exact=True)


def test_aggregate_every_two_leaves_clients_apart_after_odd_epochs() -> None:
    model = make_module(make_network(), make_head(), num_clients=2, aggregate_every=2)
    before = snapshot(model.client)
    make_trainer(max_epochs=1).fit(model, parallel_loader(make_shards()))
    # Fit ended: the end of fit aggregates anyway.
    assert not torch.equal(model.client[0].weight, before["0.weight"])
    assert_same_state(model.client_pair(0)[0], model.client_pair(1)[0], exact=True)


def test_evaluation_uses_the_aggregate_and_reports_each_client_between_rounds() -> None:
    shards = make_shards()
    model = make_module(make_network(), make_head(), num_clients=2, aggregate_every=0)
    val = DataLoader(TensorDataset(*shards[0]), batch_size=BATCH)
    trainer = make_trainer(max_epochs=1, limit_val_batches=None)
    trainer.fit(model, parallel_loader(shards), val)
    assert {"val/acc", "val/aux_acc", "val/aux_acc/client0", "val/aux_acc/client1"} <= set(trainer.callback_metrics)
    # After fit the clients are averaged: no per-client figures, the aggregate is evaluated.
    metrics = trainer.validate(model, val, verbose=False)[0]
    assert "val/aux_acc/client0" not in metrics
    x, y = shards[0]
    with torch.no_grad():
        model.eval()
        expected = multiclass_accuracy(model.server(model.client(x)), y, num_classes=NUM_CLASSES)
    assert metrics["val/acc"] == pytest.approx(float(expected))


# ---------------------------------------------------------------------------------------------- sequential
@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_sequential_matches_hand_over_reference(mode: str) -> None:
    network, head = make_network(), make_head()
    ref_network, ref_head = copy.deepcopy(network), copy.deepcopy(head)
    shards = make_shards()
    model = make_module(network, head, mode=mode, num_clients=2, client_schedule="sequential")
    make_trainer(max_epochs=2).fit(model, sequential_batches(shards))

    # One half and head; each client its own optimizer over them (its momentum survives its turn).
    reference = SplitFedReference(ref_network, ref_head, 1)
    half, aux_head = reference.clients[0]
    opts = [torch.optim.SGD([*half.parameters(), *aux_head.parameters()], **CLIENT_SGD) for _ in range(2)]
    for _ in range(2):
        for client, (x, y) in enumerate(shards):
            reference.client_opts[0] = opts[client]
            for xb, yb in zip(x.split(BATCH), y.split(BATCH), strict=True):
                reference.step(0, xb, yb, mode)
    assert_same_state(model.client, half)
    assert_same_state(model.aux_head, aux_head)
    assert_same_state(model.server, reference.server)
    assert len(model.clients.replicas) == 0


def test_sequential_hand_over_bytes() -> None:
    network, head = make_network(), make_head()
    model = make_module(network, head, num_clients=2, client_schedule="sequential")
    make_trainer(max_epochs=2).fit(model, sequential_batches(make_shards()))
    # 0 -> 1 in epoch 1; 1 -> 0 and 0 -> 1 in epoch 2: each goes up to the server and down to the next client.
    per_transfer = state_bytes(network[:SPLIT], head)
    assert model.cut.traffic.sync_bytes_up == model.cut.traffic.sync_bytes_down == 3 * per_transfer
    assert model.cut.client_traffic[0].sync_bytes_up == 2 * per_transfer  # 0 -> 1 twice
    assert model.cut.client_traffic[1].sync_bytes_down == 2 * per_transfer


# ---------------------------------------------------------------------------------------------- one client
def test_one_client_as_a_list_equals_the_plain_batches() -> None:
    x = torch.randn(12, *IN_SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % NUM_CLASSES
    plain_net, listed_net = make_network(), make_network()
    plain = make_module(plain_net, make_head())
    listed = make_module(listed_net, make_head(), num_clients=1)
    make_trainer().fit(plain, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    make_trainer().fit(listed, Batches([[b] for b in DataLoader(TensorDataset(x, y), batch_size=BATCH)]))
    assert_same_state(listed_net, plain_net, exact=True)
    assert listed.cut.traffic.sync_bytes_up == 0 and len(listed.clients.replicas) == 0


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 0}, "`num_clients`"),
        ({"num_clients": "2"}, "`num_clients`"),
        ({"client_schedule": "round_robin"}, "`client_schedule`.*'parallel', 'sequential'"),
        ({"aggregate_every": -1}, "`aggregate_every`.*-1"),
    ],
)
def test_bad_client_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_module(make_network(), make_head(), **kwargs)


def test_a_batch_with_the_wrong_client_count_is_refused_before_any_step() -> None:
    model = make_module(make_network(), make_head(), num_clients=3)
    before = snapshot(model.client_pair(0)[0])
    with pytest.raises(ValueError, match=r"`num_clients`=3 client batches.*a sequence of 2"):
        make_trainer().fit(model, parallel_loader(make_shards()))
    for name, tensor in model.client_pair(0)[0].state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_sequential_refuses_several_clients_in_one_step() -> None:
    model = make_module(make_network(), make_head(), num_clients=2, client_schedule="sequential")
    with pytest.raises(ValueError, match="one client at a time"):
        make_trainer().fit(model, parallel_loader(make_shards()))


def test_a_plain_batch_with_several_clients_is_refused() -> None:
    model = make_module(make_network(), make_head(), num_clients=2)
    x, y = make_shards()[0]
    with pytest.raises(ValueError, match="`num_clients`=2"):
        make_trainer().fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH))


def test_checkpoint_round_trip_keeps_replicas(tmp_path: Any) -> None:
    model = make_module(make_network(), make_head(), num_clients=2, aggregate_every=0)
    trainer = make_trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(model, parallel_loader(make_shards()))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = DecoupledSplitModule.load_from_checkpoint(path, network=make_network(), aux_head=make_head())
    for index in range(2):
        assert_same_state(restored.client_pair(index)[0], model.client_pair(index)[0], exact=True)


def test_validation_between_upload_and_download_sees_the_average_and_each_client() -> None:
    """After an epoch's last batch the clients' models go up and are averaged; they come down at the next epoch.

    Validation in between evaluates the average (the split network) and each client's own, local head.
    """
    shards = make_shards()
    model = make_module(make_network(), make_head(), num_clients=2)
    seen: list[dict[str, Any]] = []

    class Probe(Callback):
        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            local = [copy.deepcopy(pl_module.client_pair(i)) for i in range(2)]
            expected = fedavg([client_state(*pair) for pair in local], list(SHARDS))
            seen.append({"metrics": dict(trainer.callback_metrics), "expected": expected})

    val = DataLoader(TensorDataset(*shards[1]), batch_size=BATCH)
    make_trainer(max_epochs=2, limit_val_batches=None, callbacks=[Probe()]).fit(model, parallel_loader(shards), val)
    assert len(seen) == 2
    for seen_epoch in seen:
        assert {"val/aux_acc/client0", "val/aux_acc/client1"} <= set(seen_epoch["metrics"])
    # The aggregate after fit is the shard-weighted average of the clients' last local models.
    for name, tensor in client_state(model.client, model.aux_head).items():
        torch.testing.assert_close(tensor, seen[-1]["expected"][name], rtol=0, atol=0)


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_clients_with_plain_loaders_and_no_input_shape(schedule: str) -> None:
    """The head is built from one sample of the first client's loader, which does not change what trains."""
    from lightning_dsl.data import client_loaders

    shards = make_shards()
    states = []
    for input_shape in (IN_SHAPE, None):
        network = make_network()
        model = make_module(network, "linear", num_clients=2, client_schedule=schedule, input_shape=input_shape)
        shuffled = [
            DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(i))
            for i, (x, y) in enumerate(shards)
        ]
        make_trainer(max_epochs=2).fit(model, client_loaders(shuffled, schedule))
        states.append((network, model.aux_head))
    (net_a, head_a), (net_b, head_b) = states
    assert_same_state(net_b, net_a, exact=True)
    assert_same_state(head_b, head_a, exact=True)


def test_accumulation_is_refused_with_several_clients() -> None:
    with pytest.raises(ValueError, match="`accumulate_grad_batches`=2 is supported with one client only"):
        make_module(make_network(), make_head(), num_clients=2, accumulate_grad_batches=2)


def test_evaluate_clients_false_evaluates_the_aggregate_only() -> None:
    shards = make_shards()
    model = make_module(make_network(), make_head(), num_clients=2, aggregate_every=0, evaluate_clients=False)
    val = DataLoader(TensorDataset(*shards[0]), batch_size=BATCH)
    trainer = make_trainer(max_epochs=1, limit_val_batches=None)
    trainer.fit(model, parallel_loader(shards), val)
    assert "val/aux_acc" in trainer.callback_metrics
    assert not any("client" in key for key in trainer.callback_metrics if key.startswith("val/"))
    with pytest.raises(ValueError, match="`evaluate_clients`"):
        make_module(make_network(), make_head(), num_clients=2, evaluate_clients="yes")
