"""Splitting a training set over simulated clients: IID, Dirichlet label skew, or McMahan's label shards.

:func:`partition_indices` returns one sorted index tensor per client; :class:`Partition` keeps them with the
labels, counts the classes per client and draws them. Plain torch and numpy, no Lightning.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

PARTITION_SCHEMES = ("iid", "dirichlet", "shards")
"""``"iid"``: every client gets the same class proportions (as equal as integers allow); ``"dirichlet"``: each
class is split over the clients in proportions drawn from Dir(``alpha``) (smaller ``alpha``, more skew);
``"shards"``: the label-sorted samples are cut into shards and each client gets ``shards_per_client`` of them
(McMahan et al., 2017)."""

# Redraws of all the classes' proportions while a Dirichlet partition leaves a client empty: flwr-datasets'
# DirichletPartitioner with `min_partition_size=1` draws up to 11 times (its `sampling_try` 0 to 10), then refuses.
_DIRICHLET_REDRAWS = 10


def check_partition_args(
    num_clients: int,
    scheme: str = "iid",
    alpha: float | None = None,
    shards_per_client: int | None = None,
    drop_remainder: bool = False,
) -> None:
    """Check the arguments of a partition that do not depend on the data (a data module calls it at construction).

    Raises:
        ValueError: if ``num_clients`` is not a positive integer, ``scheme`` is unknown, or ``alpha``,
            ``shards_per_client`` or ``drop_remainder`` is missing, out of range, or given to a scheme that does
            not use it.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral) or num_clients < 1:
        raise ValueError(f"Expected argument `num_clients` to be a positive integer, but got {num_clients!r}.")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"Expected argument `scheme` to be one of {list(PARTITION_SCHEMES)}, but got {scheme!r}.")
    if scheme == "dirichlet":
        if alpha is None or isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise ValueError(
                f"Expected argument `alpha` to be a positive number with scheme='dirichlet' (e.g. 0.5; smaller is"
                f" more skewed), but got {alpha!r}."
            )
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"Expected argument `alpha` to be a positive finite number, but got {alpha!r}.")
    elif alpha is not None:
        raise ValueError(
            f"Expected argument `alpha` to be None with scheme={scheme!r} (it is only used with scheme='dirichlet'),"
            f" but got {alpha!r}."
        )
    if scheme == "shards":
        if isinstance(shards_per_client, bool) or not isinstance(shards_per_client, numbers.Integral):
            raise ValueError(
                "Expected argument `shards_per_client` to be a positive integer with scheme='shards' (e.g. 2), but"
                f" got {shards_per_client!r}."
            )
        if shards_per_client < 1:
            raise ValueError(
                f"Expected argument `shards_per_client` to be a positive integer, but got {shards_per_client}."
            )
    elif shards_per_client is not None:
        raise ValueError(
            f"Expected argument `shards_per_client` to be None with scheme={scheme!r} (it is only used with"
            f" scheme='shards'), but got {shards_per_client!r}."
        )
    if not isinstance(drop_remainder, bool):
        raise ValueError(f"Expected argument `drop_remainder` to be True or False, but got {drop_remainder!r}.")
    if drop_remainder and scheme != "shards":
        raise ValueError(
            f"Expected argument `drop_remainder` to be False with scheme={scheme!r} (it is only used with"
            " scheme='shards'), but got True."
        )


def partition_indices(
    targets: Tensor | Sequence[int],
    num_clients: int,
    scheme: str = "iid",
    alpha: float | None = None,
    shards_per_client: int | None = None,
    seed: int = 0,
    drop_remainder: bool = False,
) -> list[Tensor]:
    """Split the indices of a labelled data set over ``num_clients`` clients.

    The result is one sorted ``LongTensor`` of indices per client; the clients' indices are disjoint and every
    client has at least one. They cover every index exactly once, except that ``drop_remainder=True`` leaves out
    the samples that do not fill a shard. The same ``seed`` gives the same partition.

    * ``"iid"``: each class's indices are shuffled, the classes are laid end to end and the positions are dealt
      round-robin to the clients in a random order. Client sizes differ by at most one, and so does each class's
      count on any two clients; the clients that get one more are random, not always the first.
    * ``"dirichlet"``: flwr-datasets' ``DirichletPartitioner(alpha=alpha, seed=seed, self_balancing=False)``,
      draw for draw: for each class ``c`` in increasing order, proportions ``p ~ Dir(alpha * ones(num_clients))``
      are drawn and the class's indices, in data set order, are split at ``(cumsum(p) * n_c).astype(int)[:-1]``.
      When no client is left empty this is flwr's partition for any ``min_partition_size`` it meets (0 included).
      Every client must have a sample here, so a draw that leaves one empty is drawn again from the same
      generator, as flwr does with ``min_partition_size=1`` (the same partition as flwr's with that setting);
      after 11 draws with an empty client, as flwr, it is refused.
    * ``"shards"``: the indices, stably sorted by label (data set order within a class), are cut into
      ``num_clients * shards_per_client`` consecutive shards, and the shards are dealt to the clients in the
      order of one random permutation, ``shards_per_client`` each (McMahan et al., "Communication-Efficient
      Learning of Deep Networks from Decentralized Data", 2017). By default every sample is used: client sizes
      differ by at most one (which clients get one more is random) and so do shard sizes. With
      ``drop_remainder=True`` every shard has ``len(targets) // (num_clients * shards_per_client)`` samples and
      the rest are dropped: flwr-datasets' ``ShardPartitioner(num_shards_per_partition=shards_per_client,
      seed=seed)``, shard for shard (it also drops a whole shard when ``len(targets) // shard size`` exceeds the
      number of shards: the permutation runs over all the whole shards and the first are kept). When the shards
      divide the samples, both ways give flwr's partition.

    All randomness comes from ``numpy.random.default_rng(seed)``.

    Args:
        targets: the class labels of the data set, a 1-D sequence of non-negative integers.
        num_clients: number of clients.
        scheme: one of :data:`PARTITION_SCHEMES`.
        alpha: concentration of the Dirichlet distribution (``scheme="dirichlet"`` only).
        shards_per_client: shards per client (``scheme="shards"`` only).
        seed: seeds the partition.
        drop_remainder: equal shards, the samples left over dropped (``scheme="shards"`` only).

    Returns:
        ``num_clients`` sorted ``int64`` tensors of indices into ``targets``.

    Raises:
        ValueError: if an argument is invalid (see :func:`check_partition_args`), ``targets`` is not a 1-D sequence
            of non-negative integers, there are more clients than samples, more shards than samples, or 11
            Dirichlet draws in a row leave a client empty.

    Example::

        >>> parts = partition_indices([0, 0, 0, 1, 1, 1], num_clients=3, seed=0)
        >>> [p.tolist() for p in parts]
        [[0, 4], [1, 3], [2, 5]]
        >>> parts = partition_indices([0, 1, 0, 1, 0, 1, 0], num_clients=2, scheme="shards", shards_per_client=2)
        >>> [p.tolist() for p in parts]  # 7 samples: clients of 3 and 4, in shards of 1 or 2
        [[0, 1, 6], [2, 3, 4, 5]]
    """
    check_partition_args(num_clients, scheme, alpha, shards_per_client, drop_remainder)
    labels = _check_targets(targets)
    n = len(labels)
    if num_clients > n:
        raise ValueError(
            f"Expected argument `num_clients` to be at most the number of samples, {n}, so that every client has"
            f" one, but got {num_clients}."
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(labels, num_clients, rng)
    elif scheme == "dirichlet":
        assert alpha is not None
        parts = _dirichlet(labels, num_clients, float(alpha), rng)
    else:
        assert shards_per_client is not None
        parts = _shards(labels, num_clients, int(shards_per_client), drop_remainder, rng)
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def _check_targets(targets: Tensor | Sequence[int]) -> np.ndarray:
    array = targets.detach().cpu().numpy() if isinstance(targets, Tensor) else np.asarray(targets)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(
            "Expected argument `targets` to be a 1-D sequence of integer class labels, but got"
            f" {array.ndim}-D values of dtype {array.dtype}."
        )
    if array.size and array.min() < 0:
        raise ValueError(f"Expected argument `targets` to hold class labels 0 or more, but found {int(array.min())}.")
    return array.astype(np.int64)


def _class_indices(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Consecutive positions of the class-by-class order go to consecutive clients, so every class (a block of
    # consecutive positions) and the whole are spread evenly; the random client order spreads the remainders.
    order = np.concatenate([rng.permutation(idx) for idx in _class_indices(labels)])
    clients = rng.permutation(num_clients)[np.arange(len(order)) % num_clients]
    return [order[clients == i] for i in range(num_clients)]


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    # flwr-datasets 0.6.1 DirichletPartitioner._determine_partition_id_to_indices_if_needed, self_balancing=False:
    # the only draws are one Dirichlet vector per class (then its shuffle of each partition, which moves nothing).
    concentration = np.full(num_clients, alpha)
    for _ in range(1 + _DIRICHLET_REDRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in _class_indices(labels):
            proportions = rng.dirichlet(concentration)
            cuts = (np.cumsum(proportions) * len(idx)).astype(int)[:-1]
            for i, split in enumerate(np.split(idx, cuts)):
                parts[i].append(split)
        clients = [np.concatenate(p) for p in parts]
        if min(len(c) for c in clients) > 0:
            return clients
    raise ValueError(
        f"Expected argument `alpha` to leave every client at least one sample, but alpha={alpha:g} left a client"
        f" of num_clients={num_clients} empty in all {1 + _DIRICHLET_REDRAWS} draws (flwr-datasets'"
        " DirichletPartitioner refuses it too with min_partition_size=1): use a larger `alpha`, fewer"
        " `num_clients`, or another `seed`."
    )


def _shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, drop_remainder: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    n, num_shards = len(labels), num_clients * shards_per_client
    if num_shards > n:
        raise ValueError(
            f"Expected `num_clients * shards_per_client` to be at most the number of samples, {n}, so that every"
            f" shard has one, but num_clients={num_clients} * shards_per_client={shards_per_client} = {num_shards}"
            f" (try shards_per_client={n // num_clients})."
        )
    order = np.argsort(labels, kind="stable")
    if drop_remainder:  # flwr-datasets 0.6.1 ShardPartitioner, num_shards_per_partition given, shard_size not
        size = n // num_shards
        owners = rng.permutation(n // size)[:num_shards].reshape(num_clients, shards_per_client)
        return [np.concatenate([order[s * size : (s + 1) * size] for s in owned]) for owned in owners]
    owners = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    # Client sizes n // num_clients or one more (for random clients), each client's size split over its shards as
    # evenly as integers allow: every sample used, shards and clients within one sample of each other.
    client_sizes = np.full(num_clients, n // num_clients)
    if n % num_clients:
        client_sizes[rng.permutation(num_clients)[: n % num_clients]] += 1
    shard_sizes = np.empty(num_shards, dtype=np.int64)
    for owned, size in zip(owners, client_sizes, strict=True):
        shard_sizes[owned] = size // shards_per_client + (np.arange(shards_per_client) < size % shards_per_client)
    shards = np.split(order, np.cumsum(shard_sizes)[:-1])
    return [np.concatenate([shards[s] for s in owned]) for owned in owners]


@dataclass
class Partition:
    """The clients' shares of a training set, with the labels to describe them.

    Args:
        indices: one sorted index tensor per client, as returned by :func:`partition_indices`.
        targets: the labels of the whole training set.
        num_classes: the number of classes (columns of :meth:`histogram`).
        scheme: the partition scheme, one of :data:`PARTITION_SCHEMES`.
        alpha: the Dirichlet concentration, or ``None``.
        shards_per_client: the shards per client, or ``None``.
        seed: the seed of the partition.
        drop_remainder: whether the shards left out the samples that do not fill one.

    Example::

        >>> part = Partition.from_targets(torch.tensor([0, 0, 1, 1, 2, 2]), num_clients=2, seed=0)
        >>> part.sizes, part.histogram().tolist()
        ([3, 3], [[1, 1, 1], [1, 1, 1]])
    """

    indices: list[Tensor]
    targets: Tensor
    num_classes: int
    scheme: str
    alpha: float | None = None
    shards_per_client: int | None = None
    seed: int = 0
    drop_remainder: bool = False

    @classmethod
    def from_targets(
        cls,
        targets: Tensor | Sequence[int],
        num_clients: int,
        scheme: str = "iid",
        alpha: float | None = None,
        shards_per_client: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        drop_remainder: bool = False,
    ) -> Partition:
        """Partition ``targets`` with :func:`partition_indices`; ``num_classes`` defaults to the largest label + 1."""
        indices = partition_indices(targets, num_clients, scheme, alpha, shards_per_client, seed, drop_remainder)
        labels = torch.as_tensor(targets, dtype=torch.long)
        if num_classes is None:
            num_classes = int(labels.max()) + 1
        return cls(indices, labels, num_classes, scheme, alpha, shards_per_client, seed, drop_remainder)

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.indices)

    @property
    def sizes(self) -> list[int]:
        """Number of samples of each client."""
        return [len(idx) for idx in self.indices]

    @property
    def num_dropped(self) -> int:
        """Number of samples no client has (those left over by ``drop_remainder=True``; else 0)."""
        return len(self.targets) - sum(self.sizes)

    def histogram(self) -> Tensor:
        """Class counts per client, a ``LongTensor`` of shape ``(num_clients, num_classes)``."""
        targets = torch.as_tensor(self.targets, dtype=torch.long)
        return torch.stack([torch.bincount(targets[idx], minlength=self.num_classes) for idx in self.indices])

    def to_dict(self) -> dict[str, Any]:
        """The partition's settings, sizes and class histogram, ready for ``json.dumps``."""
        return {
            "scheme": self.scheme,
            "alpha": self.alpha,
            "shards_per_client": self.shards_per_client,
            "seed": self.seed,
            "drop_remainder": self.drop_remainder,
            "num_dropped": self.num_dropped,
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "sizes": self.sizes,
            "histogram": self.histogram().tolist(),
        }

    def plot(self, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
        """Write a PNG of the class counts of each client, one stacked bar per client.

        Args:
            path: the PNG file to write (its folder must exist).
            class_names: names for the legend (shown for up to 20 classes); ``None`` numbers the classes.

        Returns:
            The path written.

        Raises:
            ValueError: if ``class_names`` does not have ``num_classes`` names.
        """
        from matplotlib import colormaps
        from matplotlib.collections import PolyCollection
        from matplotlib.figure import Figure  # no pyplot: PNGs come from the Agg canvas, no global backend changes
        from matplotlib.patches import Patch

        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"Expected argument `class_names` to have {self.num_classes} names (one per class), but got"
                f" {len(class_names)}."
            )
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        counts = self.histogram().numpy()
        clients = np.arange(self.num_clients)
        if self.num_classes <= 20:
            cmap = colormaps["tab10" if self.num_classes <= 10 else "tab20"]
            colors = [cmap(c) for c in range(self.num_classes)]
        else:
            colors = [colormaps["turbo"](c / (self.num_classes - 1)) for c in range(self.num_classes)]
        legend = self.num_classes <= 20
        width = min(max(6.0, 0.2 * self.num_clients + 3), 20.0) + (2.0 if legend else 0.0)
        fig = Figure(figsize=(width, 4.5), layout="tight")
        ax = fig.subplots()
        # One collection of rectangles, not one artist per bar: 100 clients x 100 classes draw in well under a second.
        tops = counts.cumsum(axis=1)
        client, cls = np.nonzero(counts)
        left, low, high = client - 0.425, tops[client, cls] - counts[client, cls], tops[client, cls]
        boxes = np.stack([left, low, left + 0.85, low, left + 0.85, high, left, high], axis=1).reshape(-1, 4, 2)
        ax.add_collection(PolyCollection(list(boxes), facecolors=[colors[c] for c in cls], linewidths=0))
        ax.set_xticks(clients[:: max(1, math.ceil(self.num_clients / 25))])
        ax.set_xlim(-0.6, self.num_clients - 0.4)
        ax.set_ylim(0, 1.05 * max(self.sizes))
        ax.set_xlabel("client")
        ax.set_ylabel("samples")
        setting = ""
        if self.scheme == "dirichlet" and self.alpha is not None:
            setting = f", alpha={self.alpha:g}"
        elif self.scheme == "shards":
            setting = f", {self.shards_per_client} shards per client"
            if self.num_dropped:
                setting += f", {self.num_dropped} samples dropped"
        ax.set_title(
            f"{self.scheme}{setting}\n{sum(self.sizes)} samples, {self.num_clients} clients, {self.num_classes} classes"
        )
        if legend:
            handles = [Patch(color=colors[c], label=names[c]) for c in range(self.num_classes)]
            ax.legend(
                handles=handles,
                title="class",
                bbox_to_anchor=(1.01, 1),
                loc="upper left",
                fontsize="small",
                frameon=False,
            )
        fig.savefig(path, dpi=100)
        return Path(path)
