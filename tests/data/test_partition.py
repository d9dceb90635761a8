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
    # p ~ Dir(alpha) from one numpy Generator seeded with `seed`, the class's indices in data set order split at
    # (cumsum(p) * n_c).astype(int)[:-1]. Nothing else is drawn before the assignment.
    labels, seed = targets.numpy(), 7
    rng = np.random.default_rng(seed)
    expected: list[list[int]] = [[] for _ in range(num_clients)]
    for c in range(10):
        proportions = rng.dirichlet([alpha] * num_clients)
        idx = np.nonzero(labels == c)[0]
        for client, split in enumerate(np.split(idx, (np.cumsum(proportions) * len(idx)).astype(int)[:-1])):
            expected[client] += split.tolist()
    assert min(len(e) for e in expected) > 0  # the first draw is kept: no redraw
    parts = partition_indices(targets, num_clients, "dirichlet", alpha=alpha, seed=seed)
    assert [p.tolist() for p in parts] == [sorted(e) for e in expected]


def dirichlet_draws(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[list[list[int]]]:
    """Successive draws of the flwr definition from one generator, as flwr redraws for `min_partition_size`."""
    rng, draws = np.random.default_rng(seed), []
    for _ in range(11):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = np.nonzero(labels == c)[0]
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
            for client, split in enumerate(np.split(idx, cuts)):
                parts[client] += split.tolist()
        draws.append([sorted(p) for p in parts])
    return draws


def test_dirichlet_draws_again_while_a_client_is_empty() -> None:
    # 100 samples of 3 classes over 8 clients at alpha=0.2: seed 5 leaves a client empty in its first two draws.
    labels = (torch.arange(100) % 3).numpy()
    draws = dirichlet_draws(labels, 8, 0.2, seed=5)
    first_full = next(i for i, d in enumerate(draws) if min(map(len, d)) > 0)
    assert first_full == 2
    parts = partition_indices(labels.tolist(), 8, "dirichlet", alpha=0.2, seed=5)
    assert [p.tolist() for p in parts] == draws[first_full]


@pytest.mark.parametrize(("num_samples", "num_clients"), [(12, 10), (10, 10), (100, 50)])
def test_dirichlet_refuses_an_alpha_that_keeps_a_client_empty(num_samples: int, num_clients: int) -> None:
    targets = torch.arange(num_samples) % 3  # 3 classes, alpha=0.01: each class goes to about one client
    with pytest.raises(ValueError, match=rf"alpha=0.01 left a client of num_clients={num_clients} empty in all 11"):
        partition_indices(targets, num_clients, "dirichlet", alpha=0.01, seed=0)


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


def test_shards_keep_the_data_order_within_a_class_and_deal_them_by_seed() -> None:
    targets = torch.zeros(40, dtype=torch.long)  # one class: shards are runs of 10 in data set order
    runs = [list(range(s, s + 10)) for s in range(0, 40, 10)]
    dealt = set()
    for seed in range(4):
        parts = [p.tolist() for p in partition_indices(targets, 2, "shards", shards_per_client=2, seed=seed)]
        for part in parts:
            assert sorted(part) == sorted(runs[part[0] // 10] + runs[part[-1] // 10])
        dealt.add(tuple(parts[0]))
    assert len(dealt) > 1


@pytest.mark.parametrize(("num_clients", "shards_per_client"), [(10, 2), (3, 2), (7, 5), (100, 2), (1257, 1)])
def test_shards_use_every_sample_in_near_equal_clients(num_clients: int, shards_per_client: int) -> None:
    # 1,257 samples (the digits' training split) divide by neither 10 x 2 nor 3 x 2 nor 7 x 5 nor 100 x 2.
    targets = DIGITS[:1257]
    parts = partition_indices(targets, num_clients, "shards", shards_per_client=shards_per_client, seed=0)
    sizes = [len(p) for p in parts]
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(1257))
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1257
    # Each client's samples are `shards_per_client` runs of the label-sorted order, the runs within one of each other.
    rank = torch.empty(1257, dtype=torch.long)
    rank[torch.from_numpy(np.argsort(targets.numpy(), kind="stable"))] = torch.arange(1257)
    shard_sizes = []
    for part in parts:
        ranks = rank[part].sort().values
        breaks = (torch.nonzero(ranks.diff() != 1).flatten() + 1).tolist()
        runs = [len(r) for r in torch.tensor_split(ranks, breaks)]
        assert len(runs) <= shards_per_client
        if len(runs) == shards_per_client:
            shard_sizes += runs
    assert not shard_sizes or max(shard_sizes) - min(shard_sizes) <= 1  # adjacent shards of a client merge


def test_shards_give_the_extra_samples_to_random_clients() -> None:
    kwargs: dict[str, Any] = {"scheme": "shards", "shards_per_client": 2}
    larger = {tuple(len(p) for p in partition_indices(DIGITS[:1257], 10, seed=s, **kwargs)) for s in range(5)}
    assert all(sorted(sizes) == [125] * 3 + [126] * 7 for sizes in larger) and len(larger) > 1


@pytest.mark.parametrize(("num_clients", "shards_per_client"), [(10, 2), (3, 2), (7, 5)])
def test_shards_drop_remainder_gives_equal_shards(num_clients: int, shards_per_client: int) -> None:
    targets = DIGITS[:1257]
    part = Partition.from_targets(targets, num_clients, "shards", None, shards_per_client, 0, 10, drop_remainder=True)
    size = 1257 // (num_clients * shards_per_client)
    assert part.sizes == [size * shards_per_client] * num_clients
    assert part.num_dropped == 1257 - num_clients * shards_per_client * size
    assert len(torch.cat(part.indices).unique()) == sum(part.sizes)


def test_shards_that_divide_the_data_are_the_same_either_way() -> None:
    kwargs: dict[str, Any] = {"scheme": "shards", "shards_per_client": 2, "seed": 5}
    dropped = partition_indices(SYNTHETIC, 10, drop_remainder=True, **kwargs)
    kept = partition_indices(SYNTHETIC, 10, **kwargs)
    assert [p.tolist() for p in dropped] == [p.tolist() for p in kept]


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
            {"num_clients": 10, "scheme": "shards", "shards_per_client": 101},
            r"`num_clients \* shards_per_client` to be at most the number of samples, 1000, so that every shard has"
            r" one, but num_clients=10 \* shards_per_client=101 = 1010 \(try shards_per_client=100\)",
        ),
        ({"drop_remainder": True}, r"`drop_remainder` to be False with scheme='iid'.*only used with scheme='shards'"),
        (
            {"scheme": "shards", "shards_per_client": 2, "drop_remainder": "yes"},
            r"`drop_remainder` to be True or False, but got 'yes'",
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
        "drop_remainder": False,
        "num_dropped": 0,
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
