"""Small images held in memory as one ``uint8`` tensor, augmented a batch at a time.

Decoding 50,000 CIFAR JPEGs with PIL every epoch is the bottleneck of a CIFAR run on a small CPU.
Here each split is decoded once (:func:`load_image_folder`, with an optional on-disk cache) and
:class:`InMemoryImageDataset` crops, flips and normalizes whole batches with a few tensor operations.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, read_file

#: File under the data root that caches the decoded images of an ImageFolder copy.
CACHE_FILENAME = ".lightning_dsl_cache.pt"
_CACHE_VERSION = 1
_CHUNK = 1024


class InMemoryImageDataset(Dataset[tuple[Tensor, int]]):
    """Images from one ``uint8`` tensor, as normalized ``float32`` tensors, optionally augmented.

    The augmentation is that of ``RandomCrop(H, padding=padding)`` then ``RandomHorizontalFlip()``:
    a random ``H x W`` window of the image padded with ``padding`` zero pixels on each side, mirrored
    with probability 1/2. The DataLoader fetches batches through ``__getitems__``, which augments the
    whole batch with one gather instead of a dozen small operations per image.

    Args:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        targets: class labels of shape ``(N,)``.
        mean: per-channel mean of the images scaled to ``[0, 1]``.
        std: per-channel standard deviation of the images scaled to ``[0, 1]``.
        augment: apply the random crop and flip.
        padding: zero padding on each side before the random crop.
        generator: random numbers for the augmentation in the main process. DataLoader workers use
            their global generator instead, which the DataLoader seeds from its own ``generator``,
            so the augmentation is reproducible with and without workers.

    Example::

        >>> images = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
        >>> data = InMemoryImageDataset(images, torch.arange(4), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> x, y = data[1]
        >>> tuple(x.shape), x.dtype, float(x.max()), y
        ((3, 32, 32), torch.float32, 1.0, 1)
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        padding: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or targets.shape != (len(images),):
            raise ValueError(
                "Expected `images` to be a uint8 tensor of shape (N, C, H, W) and `targets` of shape (N,), but got"
                f" {images.dtype} {tuple(images.shape)} and {tuple(targets.shape)}."
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"Expected `mean` and `std` with {images.shape[1]} channels, but got {mean} and {std}.")
        if padding < 0:
            raise ValueError(f"Expected argument `padding` to be 0 or more, but got {padding}.")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment
        self.padding = padding
        self.generator = generator

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """Return the samples at ``indices`` (the DataLoader's batched fetch)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index]
        if self.augment:
            images = self.crop_and_flip(images)
        x = images.float().div_(255.0).sub_(self.mean).div_(self.std)
        return list(zip(x.unbind(0), self.targets[index].tolist(), strict=True))

    def crop_and_flip(self, images: Tensor) -> Tensor:
        """Randomly crop (after zero padding) and horizontally flip each image of a ``(B, C, H, W)`` batch."""
        generator = self.generator if get_worker_info() is None else None
        batch, _, height, width = images.shape
        side = 2 * self.padding + 1
        # One draw per image picks the window's corner in the padded image and the coin, all uniform.
        draw = torch.randint(2 * side * side, (batch,), generator=generator)
        flip, top, left = (draw % 2).bool(), (draw // 2) % side, draw // (2 * side)
        padded = F.pad(images, (self.padding,) * 4)
        windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # (B, C, side, side, H, W), a view
        out = windows[torch.arange(batch), :, top, left]
        out[flip] = out[flip].flip(-1)
        return out


def load_image_folder(
    root: Path, image_shape: tuple[int, int, int], write_cache: bool
) -> tuple[list[str], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Decode ``root/train`` and ``root/test`` (ImageFolder layout) into ``uint8`` tensors.

    The decoded images are read from ``root/.lightning_dsl_cache.pt`` when it matches the files (same
    paths, labels, sizes and modification times), and written there when ``write_cache`` is set.

    Args:
        root: folder holding ``train/<class>/*`` and ``test/<class>/*``.
        image_shape: the expected ``(C, H, W)`` of every image.
        write_cache: write the cache file when it is missing or out of date (failures only warn).

    Returns:
        The class names, then ``(images, targets)`` of the training and of the test split.

    Raises:
        ValueError: if the two splits have different classes or an image has another shape.
    """
    train, test, fingerprint = scan_image_folder(root)
    cache = read_cache(root, fingerprint)
    if cache is not None:
        splits = [(cache[f"{s}_images"].clone(), cache[f"{s}_targets"].clone()) for s in ("train", "test")]
        return list(cache["classes"]), splits[0], splits[1]
    rank_zero_info(f"Decoding the {len(train.samples) + len(test.samples)} images under {root} (once) ...")
    splits = [(decode_images([p for p, _ in d.samples], image_shape), torch.tensor(d.targets)) for d in (train, test)]
    if write_cache:
        cache = {"version": _CACHE_VERSION, "fingerprint": fingerprint, "classes": train.classes}
        for split, (images, targets) in zip(("train", "test"), splits, strict=True):
            cache.update({f"{split}_images": images, f"{split}_targets": targets})
        _write_cache(root / CACHE_FILENAME, cache)
    return train.classes, splits[0], splits[1]


def scan_image_folder(root: Path) -> tuple[ImageFolder, ImageFolder, str]:
    """List the images of ``root/train`` and ``root/test``; return both and a fingerprint of the files.

    Raises:
        ValueError: if the two splits have different class folders.
    """
    train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
    if train.classes != test.classes:
        raise ValueError(
            f"Expected the same class folders in {root / 'train'} and {root / 'test'}, but got"
            f" {len(train.classes)} and {len(test.classes)}: {sorted(set(train.classes) ^ set(test.classes))[:10]}"
            " are in only one of them."
        )
    digest = hashlib.sha1()
    for path, target in train.samples + test.samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{target}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return train, test, digest.hexdigest()


def read_cache(root: Path, fingerprint: str) -> dict[str, Any] | None:
    """Return the cache under ``root`` (memory-mapped) if it matches ``fingerprint``, else ``None``."""
    path = root / CACHE_FILENAME
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, weights_only=True, mmap=True)
    except Exception as err:  # a truncated or foreign file: decode again
        rank_zero_warn(f"Ignoring the unreadable cache {path} ({type(err).__name__}: {err}).")
        return None
    if not isinstance(cache, dict) or cache.get("version") != _CACHE_VERSION or cache.get("fingerprint") != fingerprint:
        return None
    return cache


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    tmp_path = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(cache, tmp_path)
        os.replace(tmp_path, path)  # atomic: a reader sees the old file or the whole new one
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        rank_zero_warn(f"Could not write the cache {path} ({err}); the images will be decoded again next run.")


def decode_images(paths: list[str], image_shape: tuple[int, int, int]) -> Tensor:
    """Decode images into one ``uint8`` tensor, in a few threads (torchvision's decoders release the GIL)."""
    out = torch.empty((len(paths), *image_shape), dtype=torch.uint8)

    def decode_chunk(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            image = _decode(paths[i])
            if tuple(image.shape) != image_shape:
                raise ValueError(
                    f"Expected images of shape (C, H, W) = {image_shape}, but {paths[i]} has {tuple(image.shape)}."
                )
            out[i] = image

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(decode_chunk, range(0, len(paths), _CHUNK)))
    return out


def _decode(path: str) -> Tensor:
    try:  # torchvision decodes JPEG, PNG, WebP and GIF about twice as fast as PIL
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError:  # the other formats ImageFolder accepts (BMP, TIFF, PPM, ...)
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
