"""Cutting networks: the two halves compose to the whole network, exactly, and share its parameters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from lightning_dsl.core.split import Cuttable, cut_units, named_cuts, resolve_split_index, split_network
from lightning_dsl.models import cifar_resnet


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny convolutions gain nothing from a second thread, and with two threads on two busy cores
    # OpenMP's barriers make a ResNet-20 forward 100x slower (see tests/models/test_small_cnn.py).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 4),
    )


class Branchy(nn.Module):
    """Not an nn.Sequential: a residual forward, but it lists units that run one after another."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Residual(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(torch.relu(self.stem(x))))

    def cut_units(self) -> list[nn.Module]:
        return [nn.Sequential(self.stem, nn.ReLU()), self.block, self.head]

    def named_cuts(self) -> dict[str, int]:
        return {"after_stem": 1, "before_head": 2}


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.relu(self.conv(x))


def parameter_ids(*modules: nn.Module) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


# ---------------------------------------------------------------------------------------------- nn.Sequential
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_sequential_halves_compose_to_the_network_exactly(k: int) -> None:
    net = sequential().eval()
    halves = split_network(net, k)
    assert (halves.split_index, halves.num_units) == (k, 6)
    assert list(halves.client) == list(net)[:k] and list(halves.server) == list(net)[k:]  # the same modules, in order
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(halves.server(halves.client(x)), net(x))


def test_halves_share_the_networks_parameters_and_gradients() -> None:
    net = sequential()
    halves = split_network(net, 3)
    assert parameter_ids(halves.client, halves.server) == parameter_ids(net)
    assert parameter_ids(halves.client).isdisjoint(parameter_ids(halves.server))
    # Training mode: batch statistics, and the backward through both halves is the network's own.
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(net(x), y).backward()
    expected = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    nn.functional.cross_entropy(halves.server(halves.client(x)), y).backward()
    for name, p in net.named_parameters():
        assert torch.equal(p.grad, expected[name]), name


def test_weights_loaded_before_the_cut_are_the_weights_of_the_halves() -> None:
    net = sequential()
    with torch.no_grad():
        net[0].weight.fill_(0.25)
    halves = split_network(net, 2)
    assert halves.client[0].weight is net[0].weight and torch.all(halves.client[0].weight == 0.25)


def test_sequential_names_no_cuts() -> None:
    assert named_cuts(sequential()) == {}
    assert cut_units(sequential())[0].__class__ is nn.Conv2d and len(cut_units(sequential())) == 6


# ---------------------------------------------------------------------------------------------- Cuttable
def test_protocol_is_recognised_structurally() -> None:
    assert isinstance(Branchy(), Cuttable)
    assert not isinstance(nn.Linear(2, 2), Cuttable) and not isinstance(nn.Sequential(), Cuttable)


@pytest.mark.parametrize(("split_index", "k"), [(1, 1), (2, 2), ("after_stem", 1), ("before_head", 2), ("2", 2)])
def test_cuttable_halves_compose_to_the_network_exactly(split_index: int | str, k: int) -> None:
    net = Branchy().eval()
    halves = split_network(net, split_index)
    assert (halves.split_index, halves.num_units) == (k, 3)
    assert parameter_ids(halves.client, halves.server) == parameter_ids(net)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(halves.server(halves.client(x)), net(x))


@pytest.mark.parametrize("k", list(range(1, 11)))
def test_resnet20_halves_compose_at_every_cut(k: int) -> None:
    net = cifar_resnet(20).eval()
    halves = split_network(net, k)
    assert halves.num_units == 11 and len(halves.client) == k and len(halves.server) == 11 - k
    assert parameter_ids(halves.client, halves.server) == parameter_ids(net)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(k))
    with torch.no_grad():
        assert torch.equal(halves.server(halves.client(x)), net(x))


# ---------------------------------------------------------------------------------------------- resolve_split_index
@pytest.mark.parametrize(
    ("depth", "name", "index"),
    [
        (20, "shallow", 4),
        (20, "middle", 5),
        (20, "deep", 7),
        (110, "shallow", 19),
        (110, "middle", 28),
        (110, "deep", 37),
        (8, "middle", 2),  # ResNet-8: "middle" coincides with "shallow"
    ],
)
def test_resolve_named_cuts_of_the_cifar_resnets(depth: int, name: str, index: int) -> None:
    assert resolve_split_index(cifar_resnet(depth), name) == index


@pytest.mark.parametrize(("split_index", "index"), [(3, 3), ("3", 3), ("1", 1), ("10", 10)])
def test_resolve_integers_and_integer_strings(split_index: int | str, index: int) -> None:
    """Integer strings come from the command line (``--model.init_args.split_index=3``)."""
    assert resolve_split_index(cifar_resnet(20), split_index) == index


def test_resolve_checks_a_named_index_against_the_range() -> None:
    class BadNames(Branchy):
        def named_cuts(self) -> dict[str, int]:
            return {"too_deep": 3}

    with pytest.raises(ValueError, match=r"in \[1, 2\] or one of \['too_deep'\] .* but got 3\.$"):
        resolve_split_index(BadNames(), "too_deep")
