"""partition_indices and Partition: disjoint, complete, seeded, and skewed the way each scheme defines."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_dsl.data import PARTITION_SCHEMES, Partition, partition_indices
from lightning_dsl.data.partition import check_partition_args

# 10 classes of 100 samples, interleaved (not label-sorted), so that no scheme gets sorted input for free.
SYNTHETIC = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
# scikit-learn's digits: 1,797 labels with unequal classes (174 to 183 per class), 1,700 for the shards.
DIGITS = torch.as_tensor(load_digits().target, dtype=torch.long)
SCHEMES = (("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {"shards_per_client": 2}))


def histogram(targets: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.bincount(targets[p], minlength=int(targets.max()) + 1) for p in parts])


def largest_class_share(targets: torch.Tensor, parts: list[torch.Tensor]) -> float:
    counts = histogram(targets, parts).float()
    return float((counts.max(1).values / counts.sum(1)).mean())


@pytest.mark.parametrize(("scheme", "kwargs"), SCHEMES)
@pytest.mark.parametrize(("targets", "num_clients"), [(SYNTHETIC, 10), (DIGITS[:1700], 10), (DIGITS[:1700], 17)])
def test_disjoint_complete_sorted(scheme: str, kwargs: dict, targets: torch.Tensor, num_clients: int) -> None:
    parts = partition_indices(targets, num_clients, scheme, seed=3, **kwargs)
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == torch.int64 and len(part) > 0
        assert torch.equal(part, part.sort().values)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(len(targets)))  # each index exactly once


@pytest.mark.parametrize(("scheme", "kwargs"), SCHEMES)
def test_reproducible_by_seed(scheme: str, kwargs: dict) -> None:
    def run(seed: int) -> list[list[int]]:
        return [p.tolist() for p in partition_indices(SYNTHETIC, 10, scheme, seed=seed, **kwargs)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_accepts_lists_and_numpy_arrays() -> None:
    expected = partition_indices(SYNTHETIC, 4, "dirichlet", alpha=1.0, seed=2)
    for targets in (SYNTHETIC.tolist(), SYNTHETIC.numpy().astype(np.int32)):
        parts = partition_indices(targets, 4, "dirichlet", alpha=1.0, seed=2)
        assert all(torch.equal(a, b) for a, b in zip(parts, expected, strict=True))


@pytest.mark.parametrize(("targets", "num_clients"), [(SYNTHETIC, 7), (DIGITS, 10), (DIGITS, 13), (DIGITS[:25], 4)])
def test_iid_is_balanced_in_size_and_per_class(targets: torch.Tensor, num_clients: int) -> None:
    for seed in range(3):
        parts = partition_indices(targets, num_clients, "iid", seed=seed)
        sizes = torch.tensor([len(p) for p in parts])
        assert int(sizes.max() - sizes.min()) <= 1
        counts = histogram(targets, parts)
        assert torch.all(counts.max(0).values - counts.min(0).values <= 1), counts


def test_iid_remainders_go_to_random_clients() -> None:
    # 1,797 samples over 10 clients: 7 clients get 180, 3 get 179; which ones changes with the seed.
    larger = set()
    for seed in range(5):
        sizes = [len(p) for p in partition_indices(DIGITS, 10, "iid", seed=seed)]
        assert sorted(sizes) == [179] * 3 + [180] * 7
        larger.add(tuple(i for i, n in enumerate(sizes) if n == 180))
    assert len(larger) > 1


def test_iid_shuffles_within_classes() -> None:
    parts = partition_indices(torch.zeros(100, dtype=torch.long), 2, "iid", seed=0)
    assert [len(p) for p in parts] == [50, 50]
    assert parts[0].tolist() != list(range(0, 100, 2)) and parts[0].tolist() != list(range(1, 100, 2))


def test_dirichlet_small_alpha_is_far_more_skewed() -> None:
    skewed = [
        largest_class_share(SYNTHETIC, partition_indices(SYNTHETIC, 10, "dirichlet", 0.1, seed=s)) for s in range(5)
    ]
    even = [
        largest_class_share(SYNTHETIC, partition_indices(SYNTHETIC, 10, "dirichlet", 100.0, seed=s)) for s in range(5)
    ]
    # One class in ten is a share of 0.1: alpha=100 stays close to it, alpha=0.1 gives most of a client to one class.
    assert max(even) < 0.15 < 0.5 < min(skewed)


@pytest.mark.parametrize(
    ("targets", "num_clients", "alpha"), [(SYNTHETIC, 10, 1.0), (DIGITS, 5, 0.3), (DIGITS, 3, 5.0)]
)
def test_dirichlet_matches_the_flwr_definition(targets: torch.Tensor, num_clients: int, alpha: float) -> None:
    # flwr-datasets' DirichletPartitioner (self_balancing=False): per class in increasing order, proportions
    # p ~ Dir(alpha), the class's indices split at (cumsum(p) * n_c).astype(int)[:-1]. Here the indices of a class
    # are shuffled right after its proportions are drawn, all from one numpy Generator seeded with `seed`.
    labels, seed = targets.numpy(), 7
    rng = np.random.default_rng(seed)
    expected: list[list[int]] = [[] for _ in range(num_clients)]
    for c in range(10):
        proportions = rng.dirichlet([alpha] * num_clients)
        idx = rng.permutation(np.nonzero(labels == c)[0])
        for client, split in enumerate(np.split(idx, (np.cumsum(proportions) * len(idx)).astype(int)[:-1])):
            expected[client] += split.tolist()
    assert min(len(e) for e in expected) > 0  # the first draw is kept: no redraw
    parts = partition_indices(targets, num_clients, "dirichlet", alpha=alpha, seed=seed)
    assert [p.tolist() for p in parts] == [sorted(e) for e in expected]


@pytest.mark.parametrize(("num_samples", "num_clients"), [(12, 10), (10, 10), (30, 20), (100, 50)])
def test_dirichlet_never_leaves_a_client_empty(num_samples: int, num_clients: int) -> None:
    targets = torch.arange(num_samples) % 3
    for seed in range(10):
        parts = partition_indices(targets, num_clients, "dirichlet", alpha=0.01, seed=seed)
        assert min(len(p) for p in parts) >= 1
        assert torch.equal(torch.cat(parts).sort().values, torch.arange(num_samples))
    if num_samples == num_clients:
        assert [len(p) for p in parts] == [1] * num_clients


def shard_label_counts(targets: torch.Tensor, num_shards: int) -> list[tuple[int, ...]]:
    """The class counts of each shard of the label-sorted samples (the ties' order does not change them)."""
    shards = targets.sort().values.reshape(num_shards, -1)
    return [tuple(torch.bincount(s, minlength=10).tolist()) for s in shards]


@pytest.mark.parametrize(("targets", "num_clients", "shards_per_client"), [(SYNTHETIC, 10, 2), (DIGITS[:1700], 10, 2)])
def test_shards_are_runs_of_the_label_sorted_samples(
    targets: torch.Tensor, num_clients: int, shards_per_client: int
) -> None:
    shards = shard_label_counts(targets, num_clients * shards_per_client)
    parts = partition_indices(targets, num_clients, "shards", shards_per_client=shards_per_client, seed=1)
    used: list[int] = []
    for counts in histogram(targets, parts).tolist():
        # Each client's class counts are those of `shards_per_client` distinct shards, each shard used once.
        matches = [
            pair
            for pair in itertools.combinations(range(len(shards)), shards_per_client)
            if [sum(col) for col in zip(*(shards[s] for s in pair), strict=True)] == counts
            and not set(pair) & set(used)
        ]
        assert matches, counts
        used += matches[0]
    assert sorted(used) == list(range(len(shards)))


def test_shards_of_synthetic_data_give_at_most_two_classes_per_client() -> None:
    # 10 classes x 100 samples, 20 shards of 50: a shard is half a class, so a client holds 1 or 2 classes.
    parts = partition_indices(SYNTHETIC, 10, "shards", shards_per_client=2, seed=0)
    counts = histogram(SYNTHETIC, parts)
    assert [len(p) for p in parts] == [100] * 10
    assert torch.all((counts > 0).sum(1) <= 2) and torch.all(counts % 50 == 0)
    assert largest_class_share(SYNTHETIC, parts) >= 0.5


def test_shards_shuffle_ties_by_seed() -> None:
    targets = torch.zeros(40, dtype=torch.long)  # one class: only the seeded shuffle decides the shards
    first = partition_indices(targets, 2, "shards", shards_per_client=2, seed=0)
    second = partition_indices(targets, 2, "shards", shards_per_client=2, seed=1)
    assert first[0].tolist() not in (list(range(20)), list(range(20, 40)))
    assert first[0].tolist() != second[0].tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 0}, r"`num_clients` to be a positive integer, but got 0"),
        ({"num_clients": 2.5}, r"`num_clients` to be a positive integer, but got 2.5"),
        ({"num_clients": 1001}, r"`num_clients` to be at most the number of samples, 1000.*got 1001"),
        ({"scheme": "noniid"}, r"`scheme` to be one of \['iid', 'dirichlet', 'shards'\], but got 'noniid'"),
        ({"scheme": "dirichlet"}, r"`alpha` to be a positive number with scheme='dirichlet'.*got None"),
        ({"scheme": "dirichlet", "alpha": 0.0}, r"`alpha` to be a positive finite number, but got 0.0"),
        ({"scheme": "dirichlet", "alpha": -1.0}, r"`alpha` to be a positive finite number, but got -1.0"),
        ({"scheme": "dirichlet", "alpha": math.inf}, r"`alpha` to be a positive finite number, but got inf"),
        ({"alpha": 0.5}, r"`alpha` to be None with scheme='iid'.*only used with scheme='dirichlet'.*got 0.5"),
        ({"scheme": "shards"}, r"`shards_per_client` to be a positive integer with scheme='shards'.*got None"),
        ({"scheme": "shards", "shards_per_client": 0}, r"`shards_per_client` to be a positive integer, but got 0"),
        ({"shards_per_client": 2}, r"`shards_per_client` to be None with scheme='iid'.*got 2"),
        (
            {"scheme": "dirichlet", "alpha": 1.0, "shards_per_client": 2},
            r"`shards_per_client` to be None with scheme='dirichlet'",
        ),
        (
            {"num_clients": 10, "scheme": "shards", "shards_per_client": 3},
            r"num_clients=10 \* shards_per_client=3 = 30 does not divide 1000 \(try shards_per_client=2\)",
        ),
        (
            {"num_clients": 3, "scheme": "shards", "shards_per_client": 2},
            r"= 6 does not divide 1000 \(try num_clients=2\)",
        ),
        ({"targets": SYNTHETIC.reshape(10, 100)}, r"`targets` to be a 1-D sequence of integer class labels.*2-D"),
        ({"targets": SYNTHETIC.float()}, r"`targets` to be a 1-D sequence of integer class labels.*float32"),
        ({"targets": SYNTHETIC - 1}, r"`targets` to hold class labels 0 or more, but found -1"),
        ({"targets": []}, r"`num_clients` to be at most the number of samples, 0"),
    ],
)
def test_bad_input(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"targets": SYNTHETIC, "num_clients": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        partition_indices(**arguments)


def test_argument_checks_need_no_data() -> None:
    for scheme, kwargs in SCHEMES:
        check_partition_args(4, scheme, **kwargs)
    with pytest.raises(ValueError, match="`alpha`"):
        check_partition_args(4, "dirichlet")
    assert PARTITION_SCHEMES == ("iid", "dirichlet", "shards")


@pytest.fixture(scope="module")
def partition() -> Partition:
    return Partition.from_targets(DIGITS, 6, "dirichlet", alpha=0.5, seed=4, num_classes=10)


def test_partition_describes_its_clients(partition: Partition) -> None:
    parts = partition_indices(DIGITS, 6, "dirichlet", alpha=0.5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(partition.indices, parts, strict=True))
    assert partition.num_clients == 6 and partition.sizes == [len(p) for p in parts] and sum(partition.sizes) == 1797
    assert torch.equal(partition.histogram(), histogram(DIGITS, parts))
    assert partition.histogram().dtype == torch.int64 and partition.histogram().shape == (6, 10)
    assert torch.equal(partition.histogram().sum(0), torch.bincount(DIGITS))
    written = json.loads(json.dumps(partition.to_dict()))
    assert written == {
        "scheme": "dirichlet",
        "alpha": 0.5,
        "shards_per_client": None,
        "seed": 4,
        "num_clients": 6,
        "num_classes": 10,
        "sizes": partition.sizes,
        "histogram": partition.histogram().tolist(),
    }


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize(("num_clients", "num_classes"), [(6, 10), (100, 100)])
def test_plot_writes_a_png(tmp_path: Path, num_clients: int, num_classes: int) -> None:
    targets = torch.arange(num_classes).repeat_interleave(20)
    partition = Partition.from_targets(targets, num_clients, "dirichlet", alpha=0.5, seed=0)
    names = [f"class {c}" for c in range(num_classes)]
    assert partition.plot(tmp_path / "p.png", class_names=names) == tmp_path / "p.png"
    width, height = png_size(tmp_path / "p.png")
    assert height == 450 and 600 <= width <= 2200


def test_plot_checks_the_class_names(partition: Partition, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`class_names` to have 10 names.*got 3"):
        partition.plot(tmp_path / "p.png", class_names=["a", "b", "c"])
    assert not (tmp_path / "p.png").exists()
