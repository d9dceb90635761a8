"""The Dirichlet and shard partitions are flwr-datasets' own, checked against its output.

``flwr_partitions.json`` holds flwr-datasets 0.6.1's partitions of a few label arrays (made by
``make_flwr_fixture.py``, which says how to run it). Where flwr-datasets is installed, the last test also runs it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_dsl.data import partition_indices

FIXTURE = json.loads(Path(__file__).with_name("flwr_partitions.json").read_text())
LABELS: dict[str, list[int]] = FIXTURE["labels"]


def case_id(case: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items() if k not in ("partitions", "error"))


def ours(case: dict[str, Any], **kwargs: Any) -> list[list[int]]:
    parts = partition_indices(LABELS[case["labels"]], case["num_partitions"], seed=case["seed"], **kwargs)
    return [p.tolist() for p in parts]


def test_the_fixture_was_made_with_the_numpy_in_use() -> None:
    # numpy keeps Generator streams stable across releases, but a different major version would be worth a look.
    assert FIXTURE["flwr_datasets"] == "0.6.1"
    assert FIXTURE["numpy"].split(".")[0] == np.__version__.split(".")[0]


DIRICHLET = FIXTURE["dirichlet"]
FULL = [c for c in DIRICHLET if "partitions" in c and min(map(len, c["partitions"])) > 0]


@pytest.mark.parametrize("case", FULL, ids=case_id)
def test_dirichlet_is_flwr_partition(case: dict[str, Any]) -> None:
    assert ours(case, scheme="dirichlet", alpha=case["alpha"]) == case["partitions"]


def test_dirichlet_where_flwr_leaves_a_client_empty_is_flwr_with_min_partition_size_1() -> None:
    empty = [c for c in DIRICHLET if "partitions" in c and min(map(len, c["partitions"])) == 0]
    assert empty, "the fixture has a case where flwr's first draw leaves a client empty"
    for case in empty:
        (retry,) = [
            c
            for c in DIRICHLET
            if c["min_partition_size"] == 1 and all(c[k] == case[k] for k in ("labels", "seed", "alpha"))
        ]
        assert ours(case, scheme="dirichlet", alpha=case["alpha"]) == retry["partitions"]


def test_dirichlet_refused_where_flwr_refuses_with_min_partition_size_1() -> None:
    (case,) = [c for c in DIRICHLET if "error" in c]
    with pytest.raises(ValueError, match=r"left a client of num_clients=30 empty in all 11 draws"):
        ours(case, scheme="dirichlet", alpha=case["alpha"])


@pytest.mark.parametrize("case", FIXTURE["shards"], ids=case_id)
def test_shards_with_drop_remainder_are_flwr_shard_partition(case: dict[str, Any]) -> None:
    k = case["num_shards_per_partition"]
    assert ours(case, scheme="shards", shards_per_client=k, drop_remainder=True) == case["partitions"]
    kept = ours(case, scheme="shards", shards_per_client=k)
    n = len(LABELS[case["labels"]])
    if n % (case["num_partitions"] * k) == 0:  # nothing to drop: the same partition
        assert kept == case["partitions"]
    else:
        assert sorted(i for p in kept for i in p) == list(range(n))


def test_against_flwr_datasets_itself() -> None:
    pytest.importorskip("flwr_datasets")
    datasets = pytest.importorskip("datasets")
    from flwr_datasets.partitioner import DirichletPartitioner, ShardPartitioner

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=400).tolist()

    def flwr(partitioner: Any, num: int) -> list[list[int]]:
        partitioner.dataset = datasets.Dataset.from_dict({"label": labels, "idx": list(range(len(labels)))})
        return [sorted(partitioner.load_partition(i)["idx"]) for i in range(num)]

    for seed, alpha, num in ((0, 0.3, 6), (1, 2.0, 9), (5, 0.7, 4)):
        partitioner = DirichletPartitioner(num, "label", alpha, min_partition_size=1, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = flwr(partitioner, num)
        parts = partition_indices(labels, num, "dirichlet", alpha=alpha, seed=seed)
        assert [p.tolist() for p in parts] == expected
    for seed, k, num in ((0, 2, 6), (3, 3, 7)):
        expected = flwr(ShardPartitioner(num, "label", num_shards_per_partition=k, seed=seed), num)
        parts = partition_indices(labels, num, "shards", shards_per_client=k, seed=seed, drop_remainder=True)
        assert [p.tolist() for p in parts] == expected
