"""One loader per client: the parallel and sequential schedules, and the data modules' client partitions."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl.data import CIFARDataModule, DigitsDataModule, SequentialClients, client_loaders


def numbered_loader(first: int, count: int, batch_size: int = 2) -> DataLoader:
    """Samples numbered ``first, first + 1, ...`` (inputs) with label ``first`` (the client's name), in order."""
    inputs = torch.arange(first, first + count)
    return DataLoader(TensorDataset(inputs, torch.full((count,), first)), batch_size=batch_size)


def uneven_loaders() -> list[DataLoader]:
    # 5, 2 and 3 samples in batches of 2: 3, 1 and 2 batches.
    return [numbered_loader(0, 5), numbered_loader(100, 2), numbered_loader(200, 3)]


def inputs(entries: list[Any]) -> list[list[int] | None]:
    return [None if e is None else e[0].tolist() for e in entries]


def test_parallel_yields_every_client_until_the_longest_is_done() -> None:
    combined = client_loaders(uneven_loaders(), "parallel")
    assert isinstance(combined, CombinedLoader)
    steps = [batch for batch, _, _ in iter(combined)]
    assert len(combined) == 3  # the longest loader
    assert [inputs(s) for s in steps] == [
        [[0, 1], [100, 101], [200, 201]],
        [[2, 3], None, [202]],
        [[4], None, None],
    ]
    assert [s[2][1].tolist() for s in steps if s[2] is not None] == [[200, 200], [200]]  # (inputs, labels) batches


def test_sequential_yields_one_client_after_another() -> None:
    loaders = uneven_loaders()
    sequential = client_loaders(loaders, "sequential")
    assert isinstance(sequential, SequentialClients) and sequential.loaders == loaders
    assert len(sequential) == 6
    steps = [inputs(s) for s in sequential]
    assert steps == [
        [[0, 1], None, None],
        [[2, 3], None, None],
        [[4], None, None],
        [None, [100, 101], None],
        [None, None, [200, 201]],
        [None, None, [202]],
    ]
    assert [inputs(s) for s in sequential] == steps  # a new epoch starts again from client 0


def test_bad_schedule() -> None:
    with pytest.raises(ValueError, match=r"`schedule` to be one of \['parallel', 'sequential'\], but got 'random'"):
        client_loaders(uneven_loaders(), "random")
    with pytest.raises(ValueError, match=r"`loaders`"):
        client_loaders([], "parallel")


# ---------------------------------------------------------------------- the digits data module
def epoch(loader: Any) -> list[list[Any]]:
    """The training steps of one epoch, each a list of per-client entries (the CombinedLoader's triplets unpacked)."""
    return [step[0] if isinstance(loader, CombinedLoader) else step for step in loader]


def rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(r) for r in x.flatten(1).tolist())


@pytest.fixture(scope="module")
def clients3() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32, num_clients=3, partition="dirichlet", alpha=0.5)
    dm.setup()
    return dm


def test_digits_partition_covers_the_training_set(clients3: DigitsDataModule) -> None:
    partition = clients3.partition
    assert partition is not None and clients3.num_clients == partition.num_clients == 3
    assert (partition.scheme, partition.alpha, partition.seed) == ("dirichlet", 0.5, 0)
    assert torch.equal(torch.cat(partition.indices).sort().values, torch.arange(len(clients3.train_set)))
    assert torch.equal(partition.targets, clients3.train_set.tensors[1])
    assert partition.histogram().sum().item() == 1257


def test_digits_one_epoch_serves_each_client_its_share_once(clients3: DigitsDataModule) -> None:
    partition, train_x = clients3.partition, clients3.train_set.tensors[0]
    loader = clients3.train_dataloader()  # no trainer: the parallel schedule
    assert isinstance(loader, CombinedLoader)
    steps = epoch(loader)
    assert len(steps) == max(-(-n // 32) for n in partition.sizes) and all(len(s) == 3 for s in steps)
    for i, indices in enumerate(partition.indices):
        batches = [s[i] for s in steps if s[i] is not None]
        assert all(s[i] is None for s in steps[len(batches) :])  # None once the client's share is used up
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert rows(x) == rows(train_x[indices])  # exactly the client's samples, each once
        assert torch.equal(torch.bincount(y, minlength=10), partition.histogram()[i])
    everything = torch.cat([e[0] for s in steps for e in s if e is not None])
    assert rows(everything) == rows(train_x)


def test_digits_client_loaders_are_seeded_and_shuffled(clients3: DigitsDataModule) -> None:
    again = DigitsDataModule(batch_size=32, num_clients=3, partition="dirichlet", alpha=0.5)
    again.setup()
    first, second = epoch(clients3.train_dataloader()), epoch(again.train_dataloader())
    assert all(inputs_equal(a, b) for a, b in zip(first, second, strict=True))
    client0 = torch.cat([s[0][1] for s in first if s[0] is not None])
    assert not torch.equal(client0, clients3.train_set.tensors[1][clients3.partition.indices[0]])  # not in index order


def inputs_equal(a: list[Any], b: list[Any]) -> bool:
    return all((x is None and y is None) or torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))


def test_the_module_decides_the_schedule(clients3: DigitsDataModule) -> None:
    try:
        clients3.trainer = SimpleNamespace(lightning_module=SimpleNamespace(client_schedule="sequential"))
        loader = clients3.train_dataloader()
        assert isinstance(loader, SequentialClients) and len(loader) == sum(
            -(-n // 32) for n in clients3.partition.sizes
        )
        owners = [next(i for i, e in enumerate(s) if e is not None) for s in loader]
        assert owners == sorted(owners) and set(owners) == {0, 1, 2}
        clients3.trainer = SimpleNamespace(lightning_module=object())  # no `client_schedule`: parallel
        assert isinstance(clients3.train_dataloader(), CombinedLoader)
    finally:
        clients3.trainer = None


def test_one_client_is_todays_loader() -> None:
    baseline, one = DigitsDataModule(batch_size=32), DigitsDataModule(batch_size=32, num_clients=1, partition="iid")
    baseline.setup()
    one.setup()
    assert one.partition is None and one.num_clients == 1
    loader = one.train_dataloader()
    assert type(loader) is DataLoader and loader.dataset is one.train_set
    for a, b in zip(baseline.train_dataloader(), loader, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_validation_and_test_loaders_stay_global(clients3: DigitsDataModule) -> None:
    baseline = DigitsDataModule(batch_size=32)
    baseline.setup()
    for name in ("val_dataloader", "test_dataloader"):
        for a, b in zip(getattr(baseline, name)(), getattr(clients3, name)(), strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 0}, r"`num_clients` to be a positive integer, but got 0"),
        ({"num_clients": 2, "partition": "pathological"}, r"`scheme` to be one of .*'pathological'"),
        ({"num_clients": 2, "partition": "dirichlet"}, r"`alpha` to be a positive number.*got None"),
        ({"num_clients": 2, "partition": "shards"}, r"`shards_per_client` to be a positive integer.*got None"),
    ],
)
def test_bad_partition_arguments_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 1258}, r"`num_clients` to be at most the number of samples, 1257.*got 1258"),
        ({"num_clients": 10, "partition": "shards", "shards_per_client": 126}, r"= 1260 \(try shards_per_client=125\)"),
    ],
)
def test_partitions_that_do_not_fit_the_data_fail_at_setup(kwargs: dict[str, Any], match: str) -> None:
    dm = DigitsDataModule(**kwargs)  # the number of training images is only known after setup
    with pytest.raises(ValueError, match=match):
        dm.setup()


@pytest.mark.parametrize("num_clients", [3, 10])
def test_shards_that_do_not_divide_the_images_use_them_all(num_clients: int) -> None:
    # 1,257 training images: neither 3 x 2 nor 10 x 2 shards divide them (both were refused before).
    dm = DigitsDataModule(num_clients=num_clients, partition="shards", shards_per_client=2)
    dm.setup()
    assert dm.partition is not None
    sizes = dm.partition.sizes
    assert sum(sizes) == 1257 and max(sizes) - min(sizes) <= 1 and dm.partition.num_dropped == 0
    dropped = DigitsDataModule(num_clients=num_clients, partition="shards", shards_per_client=2, drop_remainder=True)
    dropped.setup()
    assert dropped.partition is not None
    shard = 1257 // (num_clients * 2)
    assert dropped.partition.sizes == [2 * shard] * num_clients
    assert dropped.partition.num_dropped == 1257 - num_clients * 2 * shard
    assert dropped.hparams["drop_remainder"] is True


def test_drop_remainder_only_with_shards() -> None:
    with pytest.raises(ValueError, match=r"`drop_remainder` to be False with scheme='dirichlet'"):
        DigitsDataModule(num_clients=2, partition="dirichlet", alpha=0.5, drop_remainder=True)


class CountingModule(LightningModule):
    """Records which clients each training step received, and the samples they held."""

    def __init__(self, client_schedule: str) -> None:
        super().__init__()
        self.client_schedule = client_schedule
        self.layer = torch.nn.Linear(64, 10)
        self.steps: list[list[int]] = []
        self.samples = 0

    def training_step(self, batch: list[Any], batch_idx: int) -> torch.Tensor:
        present = [(i, entry) for i, entry in enumerate(batch) if entry is not None]
        self.steps.append([i for i, _ in present])
        self.samples += sum(len(y) for _, (_, y) in present)
        losses = [torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y) for _, (x, y) in present]
        return torch.stack(losses).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("parallel", [[0, 1, 2]] * 7), ("sequential", [[0]] * 7 + [[1]] * 7 + [[2]] * 7)],
)
def test_a_trainer_fits_with_either_schedule(tmp_path: Path, schedule: str, expected: list[list[int]]) -> None:
    dm = DigitsDataModule(batch_size=64, num_clients=3, partition="iid")  # 419 images each: 7 batches
    module = CountingModule(schedule)
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert module.steps == expected and trainer.num_training_batches == len(expected)
    assert module.samples == 1257  # the whole training set, once


# ---------------------------------------------------------------------- CIFAR (a fake torchvision copy)
def fake_cifar10(root: Path, per_class_per_batch: int = 2) -> None:
    """torchvision's cifar-10-batches-py layout with random images: 100 training and 10 test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, per_class: int) -> None:
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).tolist()
        data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)

    for k in range(1, 6):
        dump(f"data_batch_{k}", per_class_per_batch)
    dump("test_batch", 1)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)]}, f)


def test_cifar_clients_keep_the_batched_augmentation(tmp_path: Path) -> None:
    fake_cifar10(tmp_path)
    kwargs: dict[str, Any] = {"root": str(tmp_path), "batch_size": 8, "num_workers": 0, "pin_memory": False}
    dm = CIFARDataModule(**kwargs, num_clients=4, partition="shards", shards_per_client=1)
    dm.setup()
    assert dm.partition is not None and dm.partition.sizes == [25] * 4
    assert torch.all((dm.partition.histogram() > 0).sum(1) <= 4)  # a shard of 25 label-sorted images: <= 4 classes
    steps = epoch(dm.train_dataloader())
    assert len(steps) == 4 and all(len(s) == 4 for s in steps)
    labels = []
    for s in steps:
        for x, y in s:
            assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
            labels.append(y)
    assert torch.equal(torch.cat(labels).sort().values, dm.train_set.targets.sort().values)
    # One client is today's loader, augmentation included.
    baseline, one = CIFARDataModule(**kwargs), CIFARDataModule(**kwargs, num_clients=1)
    baseline.setup()
    one.setup()
    for a, b in zip(baseline.train_dataloader(), one.train_dataloader(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"`alpha` to be None with scheme='shards'"):
        CIFARDataModule(**kwargs, num_clients=2, partition="shards", shards_per_client=1, alpha=0.5)
