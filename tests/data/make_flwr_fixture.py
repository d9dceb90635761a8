"""Write ``flwr_partitions.json``: flwr-datasets' own Dirichlet and shard partitions of a few label arrays.

``test_flwr_partitions.py`` checks ``partition_indices`` against this file, so the tests need no flwr-datasets.
Regenerate it (needs internet once, for the install; flwr-datasets pulls in Hugging Face ``datasets``, so a
throwaway virtual environment keeps it out of the project's)::

    python3 -m venv /tmp/flwr && /tmp/flwr/bin/pip install flwr-datasets==0.6.1
    /tmp/flwr/bin/python tests/data/make_flwr_fixture.py

The labels are stored in the file, so the partitions do not depend on this script's random draws staying the same.
"""

from __future__ import annotations

import json
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, ShardPartitioner

OUT = Path(__file__).with_name("flwr_partitions.json")


def label_arrays() -> dict[str, list[int]]:
    rng = np.random.default_rng(2024)
    return {
        # 10 classes of 30, shuffled; 5 unequal classes, shuffled; 3 classes with gaps in the labels, sorted.
        "interleaved": rng.permutation(np.repeat(np.arange(10), 30)).tolist(),
        "unequal": rng.permutation(np.repeat(np.arange(5), [7, 40, 13, 25, 60])).tolist(),
        "gaps_sorted": np.repeat([0, 2, 5], [20, 45, 25]).tolist(),
    }


def dataset(labels: list[int]) -> Dataset:
    # `idx` carries the original positions: the shard partitioner sorts the data set before it selects.
    return Dataset.from_dict({"label": labels, "idx": list(range(len(labels)))})


def partitions(partitioner: Any, labels: list[int], num_partitions: int) -> list[list[int]]:
    partitioner.dataset = dataset(labels)
    return [sorted(partitioner.load_partition(i)["idx"]) for i in range(num_partitions)]


def dirichlet_case(labels: dict[str, list[int]], name: str, **kwargs: Any) -> dict[str, Any]:
    case: dict[str, Any] = {"labels": name, **kwargs}
    partitioner = DirichletPartitioner(partition_by="label", self_balancing=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flwr warns on every redraw for `min_partition_size`
        try:
            case["partitions"] = partitions(partitioner, labels[name], kwargs["num_partitions"])
        except ValueError as err:  # 11 draws did not meet `min_partition_size`
            case["error"] = str(err)
    return case


def shard_case(labels: dict[str, list[int]], name: str, **kwargs: Any) -> dict[str, Any]:
    partitioner = ShardPartitioner(partition_by="label", **kwargs)
    return {"labels": name, **kwargs, "partitions": partitions(partitioner, labels[name], kwargs["num_partitions"])}


def main() -> None:
    labels = label_arrays()
    dirichlet = [
        dirichlet_case(labels, "interleaved", num_partitions=5, alpha=0.5, seed=0, min_partition_size=0),
        dirichlet_case(labels, "interleaved", num_partitions=10, alpha=1.0, seed=7, min_partition_size=0),
        dirichlet_case(labels, "interleaved", num_partitions=6, alpha=100.0, seed=3, min_partition_size=0),
        dirichlet_case(labels, "unequal", num_partitions=4, alpha=0.3, seed=42, min_partition_size=0),
        dirichlet_case(labels, "unequal", num_partitions=3, alpha=5, seed=11, min_partition_size=0),
        dirichlet_case(labels, "gaps_sorted", num_partitions=5, alpha=0.5, seed=1, min_partition_size=0),
    ]
    # Small alpha, many clients: flwr's first draw leaves a client empty (kept with min_partition_size=0, drawn
    # again with 1), and with a tiny alpha every one of its 11 draws does (refused with min_partition_size=1).
    for seed in range(50):
        case = dirichlet_case(labels, "unequal", num_partitions=10, alpha=0.1, seed=seed, min_partition_size=0)
        if min(len(p) for p in case["partitions"]) == 0:
            retry = dirichlet_case(labels, "unequal", num_partitions=10, alpha=0.1, seed=seed, min_partition_size=1)
            if "partitions" in retry:
                dirichlet += [case, retry]
                break
    dirichlet.append(dirichlet_case(labels, "gaps_sorted", num_partitions=30, alpha=0.01, seed=0, min_partition_size=1))
    shards = [
        # 300 = 5 x 2 x 30: the shards divide the samples.
        shard_case(labels, "interleaved", num_partitions=5, num_shards_per_partition=2, seed=0),
        # 300 // 21 = 14 per shard, 6 samples left over.
        shard_case(labels, "interleaved", num_partitions=7, num_shards_per_partition=3, seed=5),
        # 145 // 8 = 18 per shard, 1 left over.
        shard_case(labels, "unequal", num_partitions=4, num_shards_per_partition=2, seed=42),
        # 90 // 20 = 4 per shard: 22 whole shards, of which 20 are dealt.
        shard_case(labels, "gaps_sorted", num_partitions=4, num_shards_per_partition=5, seed=9),
    ]
    fixture = {
        "flwr_datasets": version("flwr-datasets"),
        "numpy": np.__version__,
        "made_by": "tests/data/make_flwr_fixture.py",
        "labels": labels,
        "dirichlet": dirichlet,
        "shards": shards,
    }
    OUT.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(dirichlet)} Dirichlet and {len(shards)} shard cases)")


if __name__ == "__main__":
    main()
