from __future__ import annotations

import pickle
import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lightning_dsl.core.split import cut_units, split_network
from lightning_dsl.models import small_cnn


def test_units_and_shapes() -> None:
    net = small_cnn()
    units = cut_units(net)
    assert [name for name, _ in net.named_children()] == ["block1", "block2", "block3", "head"]
    assert len(units) == 4 and all(isinstance(u, nn.Sequential) for u in units)
    x = torch.randn(5, 1, 8, 8)
    shapes = []
    for unit in units:
        x = unit(x)
        shapes.append(tuple(x.shape))
    assert shapes == [(5, 32, 8, 8), (5, 64, 4, 4), (5, 64, 4, 4), (5, 10)]


@pytest.mark.parametrize(("in_channels", "num_classes", "width", "expected"), [(1, 10, 32, 56_554), (3, 4, 8, 3_820)])
def test_parameter_count(in_channels: int, num_classes: int, width: int, expected: int) -> None:
    net = small_cnn(in_channels, num_classes, width)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net(torch.randn(2, in_channels, 8, 8)).shape == (2, num_classes)


@pytest.mark.parametrize("split_index", [1, 2, 3])
def test_every_cut_reproduces_the_network(split_index: int) -> None:
    torch.manual_seed(0)
    net = small_cnn().eval()
    halves = split_network(net, split_index)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(halves.server(halves.client(x)), net(x))
    assert len(halves.client) == split_index


def test_is_picklable() -> None:
    net = small_cnn().eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(pickle.loads(pickle.dumps(net))(x), net(x))


@pytest.mark.parametrize(("name", "value"), [("in_channels", 0), ("num_classes", -3), ("width", 1.5)])
def test_bad_arguments(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"`{name}` to be a positive integer, but got {value!r}"):
        small_cnn(**{name: value})  # type: ignore[arg-type]


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny convolutions gain nothing from a second thread, and with two threads on two busy cores
    # OpenMP's barriers slow training down by 10x or more.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
def test_learns_digits() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.25, random_state=0)
    torch.manual_seed(0)
    net = small_cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(20):
        net.train()
        for batch in torch.randperm(len(x_train)).split(64):
            loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"small_cnn on digits: {accuracy:.4f} after 20 epochs in {time.perf_counter() - start:.1f} s")
    assert accuracy >= 0.95
