"""scikit-learn's 8x8 handwritten digits: the offline quickstart data (bundled with scikit-learn, no download)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_dsl.data.clients import ClientsDataMixin, SequentialClients


class DigitsDataModule(ClientsDataMixin, LightningDataModule):
    """The 1,797 8x8 digit images of ``sklearn.datasets.load_digits`` in seeded, stratified splits.

    Images are float tensors of shape ``(1, 8, 8)``: pixel values 0..16 are scaled to ``[0, 1]`` and then
    normalized with the mean and standard deviation of the training split (``mean`` and ``std`` after
    ``setup``), so no statistics leak from the validation or test images.

    With ``num_clients > 1`` the training images are partitioned over simulated clients and
    ``train_dataloader`` serves one loader per client (see :class:`~lightning_dsl.data.clients.ClientsDataMixin`);
    validation and test stay global.

    Args:
        batch_size: batch size for all splits.
        val_fraction: fraction of the images held out for validation.
        test_fraction: fraction of the images held out for testing.
        seed: seeds the splits and the shuffling.
        num_workers: DataLoader worker processes (the data are tiny: 0 is fastest).
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
        ValueError: if a fraction leaves a split with fewer images than classes, a count is negative, or the
            partition arguments are invalid (those that depend on the training images are checked in ``setup``).

    Example::

        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup()
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set)
        (1257, 270, 270)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), x.dtype, y.dtype
        ((32, 1, 8, 8), torch.float32, torch.int64)
    """

    num_classes = 10
    input_shape = (1, 8, 8)  # one image: the model builds its auxiliary head from it
    num_images = 1797

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
        num_clients: int = 1,
        partition: str = "iid",
        alpha: float | None = None,
        shards_per_client: int | None = None,
        drop_remainder: bool = False,
    ) -> None:
        super().__init__()
        for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1 or round(value * self.num_images) < self.num_classes:
                raise ValueError(
                    f"Expected argument `{arg}` to be in [{self.num_classes / self.num_images:.4f}, 1), enough for"
                    f" at least one image per class in the split, but got {value}."
                )
        n_train = self.num_images - round(val_fraction * self.num_images) - round(test_fraction * self.num_images)
        if n_train < self.num_classes:
            raise ValueError(
                f"Expected `val_fraction + test_fraction` to leave at least {self.num_classes} training images (one"
                f" per class), but val_fraction={val_fraction} and test_fraction={test_fraction} leave {n_train}."
            )
        if batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be a positive integer, but got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"Expected argument `num_workers` to be 0 or more, but got {num_workers}.")
        self._init_clients(num_clients, partition, alpha, shards_per_client, drop_remainder)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.mean = 0.0
        self.std = 1.0
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the digits, split them (stratified, seeded), normalize with the training statistics, partition.

        Raises:
            ValueError: if the partition does not fit the training images (more clients or shards than images, a
                Dirichlet draw that leaves a client empty 11 times).
        """
        if self.train_set is not None:
            self._setup_partition(self.train_set.tensors[1], self.num_classes)
            return
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        targets = torch.tensor(digits.target, dtype=torch.long)
        n_val, n_test = round(self.val_fraction * len(targets)), round(self.test_fraction * len(targets))
        indices = list(range(len(targets)))
        rest, test_idx = train_test_split(indices, test_size=n_test, stratify=targets, random_state=self.seed)
        train_idx, val_idx = train_test_split(rest, test_size=n_val, stratify=targets[rest], random_state=self.seed)
        train_images = images[train_idx]
        self.mean, self.std = train_images.mean().item(), train_images.std().item()

        def subset(idx: list[int]) -> TensorDataset:
            return TensorDataset((images[idx] - self.mean) / self.std, targets[idx])

        self.train_set, self.val_set, self.test_set = subset(train_idx), subset(val_idx), subset(test_idx)
        self._setup_partition(self.train_set.tensors[1], self.num_classes)

    def train_dataloader(self) -> DataLoader | CombinedLoader | SequentialClients:
        """Shuffled training batches (the order seeded by ``seed``); one loader per client with ``num_clients > 1``."""
        if self.train_set is None:
            raise RuntimeError("DigitsDataModule: call `setup()` before asking for a dataloader.")
        return self._client_dataloaders(self.train_set, self._train_loader)

    def _train_loader(self, dataset: Dataset, seed: int) -> DataLoader:
        return self._loader(dataset, shuffle=True, seed=seed)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """``trainer.predict`` runs on the test split (batches of ``(images, labels)``, in order)."""
        return self._loader(self.test_set)

    def _loader(self, dataset: Dataset | None, shuffle: bool = False, seed: int | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("DigitsDataModule: call `setup()` before asking for a dataloader.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed if seed is None else seed) if shuffle else None,
        )
