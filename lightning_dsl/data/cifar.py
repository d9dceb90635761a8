"""CIFAR-10 and CIFAR-100 as a LightningDataModule, from torchvision's files or an ImageFolder copy.

Two on-disk formats are detected under ``root``, in this order:

* torchvision's: ``root/cifar-10-batches-py/`` or ``root/cifar-100-python/`` (what ``download=True`` fetches);
* the ImageFolder layout: ``root/train/<class>/*`` and ``root/test/<class>/*``, for instance the JPEG copy
  ``../shared/data/cifar10-jpg.tar.gz``.

Either way each split is held in memory as one ``uint8`` tensor of shape ``(N, 3, 32, 32)`` and the
training augmentation runs on tensors (see :mod:`lightning_dsl.data.images`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from lightning_dsl.data.clients import ClientsDataMixin, SequentialClients
from lightning_dsl.data.images import InMemoryImageDataset, load_image_folder, read_cache, scan_image_folder

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_TORCHVISION = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_NORMALIZATIONS = ("dataset", "imagenet")
_IMAGE_SHAPE = (3, 32, 32)


class CIFARDataModule(ClientsDataMixin, LightningDataModule):
    """CIFAR-10 or CIFAR-100 with the standard augmentation, from torchvision's files or an ImageFolder copy.

    The data are looked for under ``root`` in torchvision's format first (``cifar-10-batches-py/`` or
    ``cifar-100-python/``), then in the ImageFolder layout (``train/<class>/*``, ``test/<class>/*``). Each
    split is decoded once and held in memory; a decoded ImageFolder copy is also cached in
    ``root/.lightning_dsl_cache.pt`` when ``root`` is writable, so later runs skip the decoding.

    With ``val_size=0`` (the default) validation runs on the test split, as is common in CIFAR papers and
    as the decoupled split learning paper does; set ``val_size`` to hold out a class-stratified part of
    the training images instead (validated without augmentation).

    With ``num_clients > 1`` the training images are partitioned over simulated clients and
    ``train_dataloader`` serves one loader per client (see :class:`~lightning_dsl.data.clients.ClientsDataMixin`);
    validation and test stay global.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: folder holding the data in one of the two formats (``download=True`` downloads into it).
        download: download torchvision's copy into ``root`` in ``prepare_data`` unless it is already there
            (needs internet); it then takes precedence over an ImageFolder copy in ``root``.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size; ``None`` means ``batch_size``.
        num_workers: DataLoader worker processes.
        val_size: number of training images held out for validation (seeded, class-stratified); 0 validates
            on the test split.
        train_subset: train on a seeded, class-balanced subset of this many of the remaining training
            images (class counts differ by at most one); ``None`` uses all of them.
        augment: random crop with 4 pixels of zero padding and random horizontal flip for training.
        normalization: ``"dataset"`` for the per-dataset channel statistics, ``"imagenet"`` for ImageNet's
            (what the published CIFAR-ResNet checkpoints were trained with).
        seed: seeds the validation split, the subset, the shuffling and the augmentation.
        pin_memory: pin batches in page-locked memory; ``None`` pins when CUDA is available.
        num_clients: number of simulated clients the training images are partitioned over; 1 trains on all
            of them with one loader, as without clients.
        partition: how the training images are partitioned over the clients, one of
            :data:`~lightning_dsl.data.partition.PARTITION_SCHEMES` (``"iid"``, ``"dirichlet"``, ``"shards"``);
            seeded by ``seed``.
        alpha: the Dirichlet concentration with ``partition="dirichlet"`` (smaller is more skewed).
        shards_per_client: label shards per client with ``partition="shards"``.
        drop_remainder: with ``partition="shards"``, shards of exactly ``n // (num_clients * shards_per_client)``
            training images, the rest left out, as flwr-datasets' ``ShardPartitioner(num_shards_per_partition=...)``;
            by default every image is used, in shards and clients that differ by at most one image.

    Raises:
        ValueError: if an argument is out of range (``val_size``, ``train_subset`` and the partition against
            the number of training images are checked in ``setup``).
        FileNotFoundError: from ``prepare_data``/``setup`` when no data are found under ``root``.

    Example::

        dm = CIFARDataModule("cifar10", root="data/cifar10-jpg", train_subset=10_000)
        trainer.fit(model, datamodule=dm)
    """

    def __init__(
        self,
        name: str = "cifar10",
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        val_size: int = 0,
        train_subset: int | None = None,
        augment: bool = True,
        normalization: str = "dataset",
        seed: int = 0,
        pin_memory: bool | None = None,
        num_clients: int = 1,
        partition: str = "iid",
        alpha: float | None = None,
        shards_per_client: int | None = None,
        drop_remainder: bool = False,
    ) -> None:
        super().__init__()
        if name not in _NUM_CLASSES:
            raise ValueError(f"Expected argument `name` to be one of {sorted(_NUM_CLASSES)}, but got {name!r}.")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"Expected argument `normalization` to be one of {list(_NORMALIZATIONS)}, but got {normalization!r}."
            )
        for arg, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"Expected argument `{arg}` to be a positive integer, but got {value}.")
        if num_workers < 0:
            raise ValueError(f"Expected argument `num_workers` to be 0 or more, but got {num_workers}.")
        if val_size < 0:
            raise ValueError(
                f"Expected argument `val_size` to be 0 (validate on the test split) or a positive number of"
                f" training images, but got {val_size}."
            )
        if train_subset is not None and train_subset < _NUM_CLASSES[name]:
            raise ValueError(
                f"Expected argument `train_subset` to be None (all training images) or at least"
                f" {_NUM_CLASSES[name]} (one image per class of {name!r}), but got {train_subset}."
            )
        self._init_clients(num_clients, partition, alpha, shards_per_client, drop_remainder)
        self.save_hyperparameters()
        self.name = name  # LightningDataModule's `name` attribute, here the dataset's
        self._name: str = name
        self.root = Path(root).expanduser()
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.train_subset = train_subset
        self.augment = augment
        self.normalization = normalization
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.mean, self.std = _STATS[name] if normalization == "dataset" else _IMAGENET_STATS
        self.classes: list[str] = []
        self.data_format: str | None = None
        self.train_set: InMemoryImageDataset | None = None
        self.val_set: InMemoryImageDataset | None = None
        self.test_set: InMemoryImageDataset | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes: 10 for CIFAR-10, 100 for CIFAR-100."""
        return _NUM_CLASSES[self._name]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(3, 32, 32)``: the model builds its auxiliary head from it."""
        return _IMAGE_SHAPE

    # ------------------------------------------------------------------ finding the data
    @property
    def _torchvision_folder(self) -> Path:
        return self.root / _TORCHVISION[self._name].base_folder

    def _torchvision_files(self) -> list[str]:
        cls = _TORCHVISION[self._name]
        return [f for f, _ in cls.train_list + cls.test_list] + [str(cls.meta["filename"])]

    def _find_format(self) -> str | None:
        if all((self._torchvision_folder / f).is_file() for f in self._torchvision_files()):
            return "torchvision"
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return "imagefolder"
        return None

    def _not_found_message(self) -> str:
        root, title = self.root.resolve(), _TITLES[self._name]
        files = ", ".join(self._torchvision_files())
        lines = [
            f"{title} data not found under `root`={str(root)!r}. Looked for:",
            f"  - torchvision's format: {root / _TORCHVISION[self._name].base_folder}/ with {files}",
            f"  - the ImageFolder layout: {root / 'train'}/<class>/* and {root / 'test'}/<class>/*",
        ]
        other = next(n for n in _TORCHVISION if n != self._name)
        if (self.root / _TORCHVISION[other].base_folder).is_dir():
            lines.append(f"  (found {_TORCHVISION[other].base_folder}/, which is {_TITLES[other]}: name={other!r}?)")
        if self.download:
            lines.append("  (download=True downloads in prepare_data(); outside a Trainer, call it before setup())")
        lines += [
            "Get the data in one of two ways:",
            f"  1. download=True (needs internet): torchvision downloads {title} into root in prepare_data.",
            "  2. point `root` at a copy you already have: a folder holding"
            f" {_TORCHVISION[self._name].base_folder}/, or an ImageFolder copy with train/ and test/.",
        ]
        if self._name == "cifar10":
            lines += [
                "     e.g. mkdir -p data/cifar10-jpg && tar xzf ../shared/data/cifar10-jpg.tar.gz -C data/cifar10-jpg,",
                "     then root=data/cifar10-jpg",
            ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download the data if asked, check that they exist, and cache a decoded ImageFolder copy.

        Raises:
            FileNotFoundError: if no data are found under ``root`` (or the download failed).
        """
        if self.download and self._find_format() != "torchvision":
            try:
                _TORCHVISION[self._name](str(self.root), train=True, download=True)
            except Exception as err:  # no network, a proxy, a bad checksum: say what to do instead
                raise FileNotFoundError(
                    f"Downloading {_TITLES[self._name]} into {str(self.root.resolve())!r} failed with"
                    f" {type(err).__name__}: {err}\n{self._not_found_message()}"
                ) from err
        data_format = self._find_format()
        if data_format is None:
            raise FileNotFoundError(self._not_found_message())
        if data_format == "imagefolder" and os.access(self.root, os.W_OK):
            # Decode and cache here, once per node, so that the processes of a multi-GPU run only read the cache.
            *_, fingerprint = scan_image_folder(self.root)
            if read_cache(self.root, fingerprint) is None:
                load_image_folder(self.root, _IMAGE_SHAPE, write_cache=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits into memory, check ``val_size`` and ``train_subset`` against them, partition the clients.

        Raises:
            FileNotFoundError: if no data are found under ``root``.
            ValueError: if the class count does not match ``name``, a size argument is out of range, or the
                partition does not fit the training images.
        """
        if self.train_set is not None and self.test_set is not None:
            self._setup_partition(self.train_set.targets, self.num_classes)
            return
        self.data_format = self._find_format()
        if self.data_format is None:
            raise FileNotFoundError(self._not_found_message())
        if self.data_format == "torchvision":
            classes, (train_x, train_y), (test_x, test_y) = self._load_torchvision()
        else:
            classes, (train_x, train_y), (test_x, test_y) = load_image_folder(
                self.root, _IMAGE_SHAPE, write_cache=os.access(self.root, os.W_OK)
            )
        self._check_classes(classes, train_y, test_y)
        self.classes = classes
        generator = torch.Generator().manual_seed(self.seed)
        train_idx, val_idx = self._split(train_y, generator)
        stats = (self.mean, self.std)
        augment_generator = torch.Generator().manual_seed(self.seed + 1)
        self.train_set = InMemoryImageDataset(
            train_x[train_idx], train_y[train_idx], *stats, augment=self.augment, generator=augment_generator
        )
        self.test_set = InMemoryImageDataset(test_x, test_y, *stats)
        self.val_set = InMemoryImageDataset(train_x[val_idx], train_y[val_idx], *stats) if self.val_size else None
        rank_zero_info(
            f"{_TITLES[self._name]} ({self.data_format} format, root={str(self.root)!r}): {len(self.train_set)} train,"
            f" {self.val_size or len(test_y)} validation{' (the test split)' if not self.val_size else ''},"
            f" {len(test_y)} test images."
        )
        self._setup_partition(self.train_set.targets, self.num_classes)

    def _load_torchvision(self) -> tuple[list[str], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        # Reads the pickles as torchvision's CIFAR10/CIFAR100 do, without re-hashing ~170 MB on every run
        # (the download checks the MD5 sums).
        cls = _TORCHVISION[self._name]
        splits = []
        for file_list in (cls.train_list, cls.test_list):
            data, labels = [], []
            for file_name, _ in file_list:
                with open(self._torchvision_folder / file_name, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                data.append(entry["data"])
                labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            images = torch.from_numpy(np.concatenate(data).reshape(-1, *_IMAGE_SHAPE))
            splits.append((images, torch.tensor(labels, dtype=torch.long)))
        with open(self._torchvision_folder / str(cls.meta["filename"]), "rb") as f:
            classes = list(pickle.load(f, encoding="latin1")[str(cls.meta["key"])])
        return classes, splits[0], splits[1]

    def _check_classes(self, classes: list[str], *targets: Tensor) -> None:
        if len(classes) != self.num_classes:
            where = f"class folders in {self.root / 'train'}" if self.data_format == "imagefolder" else "class names"
            raise ValueError(
                f"Found {len(classes)} {where} ({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''}),"
                f" but `name`={self._name!r} has {self.num_classes} classes. Check `root`={str(self.root)!r}"
                f" or set `name` to match the data."
            )
        for split_targets in targets:
            if len(split_targets) and int(split_targets.max()) >= self.num_classes:
                raise ValueError(
                    f"Found label {int(split_targets.max())} in {self.root}, but {self._name!r} has"
                    f" {self.num_classes} classes."
                )

    def _split(self, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Return the training and validation indices into the full training split."""
        total = len(targets)
        if self.val_size >= total:
            raise ValueError(
                f"Expected argument `val_size` to be in [0, {total - 1}] ({total} training images in {self.root}),"
                f" but got {self.val_size}."
            )
        sizes = torch.bincount(targets, minlength=self.num_classes).tolist()
        val_idx, train_idx = _take_per_class(targets, _proportional_counts(sizes, self.val_size), generator)
        if self.train_subset is not None:
            sizes = torch.bincount(targets[train_idx], minlength=self.num_classes).tolist()
            largest = _max_balanced(sizes)
            if self.train_subset > largest:
                raise ValueError(
                    f"Expected argument `train_subset` to be in [{self.num_classes}, {largest}] (the largest"
                    f" class-balanced subset of the {len(train_idx)} training images left with val_size="
                    f"{self.val_size}), but got {self.train_subset}."
                )
            subset, _ = _take_per_class(targets[train_idx], _balanced_counts(sizes, self.train_subset), generator)
            train_idx = train_idx[subset]
        return train_idx, val_idx

    def train_dataloader(self) -> DataLoader | CombinedLoader | SequentialClients:
        """Shuffled training batches (the order seeded by ``seed``); one loader per client with ``num_clients > 1``."""
        return self._client_dataloaders(self._require(self.train_set), self._train_loader)

    def _train_loader(self, dataset: Dataset, seed: int) -> DataLoader:
        return self._loader(dataset, self.batch_size, shuffle=True, seed=seed)

    def val_dataloader(self) -> DataLoader:
        """Validation batches: the held-out training images, or the test split when ``val_size=0``."""
        return self._loader(
            self._require(self.test_set if self.val_set is None else self.val_set), self.eval_batch_size
        )

    def test_dataloader(self) -> DataLoader:
        """Test split batches."""
        return self._loader(self._require(self.test_set), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """``trainer.predict`` runs on the test split (batches of ``(images, labels)``, in order)."""
        return self._loader(self._require(self.test_set), self.eval_batch_size)

    @staticmethod
    def _require(dataset: InMemoryImageDataset | None) -> InMemoryImageDataset:
        if dataset is None:
            raise RuntimeError("CIFARDataModule: call `setup()` before asking for a dataloader.")
        return dataset

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed if seed is None else seed) if shuffle else None,
        )


# ---------------------------------------------------------------------- splits
def _proportional_counts(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over classes in proportion to ``sizes`` (largest remainders get the leftovers)."""
    n = sum(sizes)
    counts = [total * s // n for s in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (-(total * sizes[c] % n), c))
    for c in by_remainder[: total - sum(counts)]:
        counts[c] += 1
    return counts


def _max_balanced(sizes: list[int]) -> int:
    """Largest total whose per-class counts differ by at most one and fit in ``sizes``."""
    smallest = min(sizes)
    return len(sizes) * smallest + sum(s > smallest for s in sizes)


def _balanced_counts(sizes: list[int], total: int) -> list[int]:
    """Equal per-class counts; the remainder goes to the largest classes (ties: lower class index)."""
    quota, remainder = divmod(total, len(sizes))
    counts = [quota] * len(sizes)
    for c in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c))[:remainder]:
        counts[c] += 1
    return counts


def _take_per_class(targets: Tensor, counts: list[int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pick ``counts[c]`` random indices of each class ``c``; return (picked, rest), both sorted."""
    picked, rest = [], []
    for c, k in enumerate(counts):
        idx = (targets == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        picked.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(picked).sort().values, torch.cat(rest).sort().values
