"""Text classification from TSV/CSV files (SST-2 by default) with a WordPiece tokenizer trained on the training split.

The tokenizer is Hugging Face's ``tokenizers`` WordPiece model: ``[PAD]`` is id 0, ``[UNK]`` id 1, ``[CLS]`` id 2,
and ``[CLS]`` is prepended to every sequence. It is trained on the training split only and cached as JSON, so
later runs (and the other splits) reuse it.

The data module's pieces live beside it: the files are read by :mod:`~lightning_dsl.data.tables`, the tokenizer
is :mod:`~lightning_dsl.data.tokenizer`, the dataset and batches :mod:`~lightning_dsl.data.tokens` (their names
are importable from here too). This module keeps the data module and where its tokenizer is cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.data.buckets import BucketBatchSampler
from lightning_dsl.data.tables import DELIMITERS, read_table
from lightning_dsl.data.tokenizer import CLS, PAD, SPECIAL_TOKENS, UNK, build_tokenizer, load_tokenizer, save_tokenizer
from lightning_dsl.data.tokens import TokenizedDataset, collate

PRESETS: dict[str, dict[str, str]] = {
    "sst2": {
        "train_file": "train.tsv",
        "val_file": "dev.tsv",
        "test_file": "test.tsv",
        "text_column": "sentence",
        "label_column": "label",
        "delimiter": "\t",
    },
}
_PRESET_NUM_CLASSES = {"sst2": 2}
_CACHE_FORMAT = 2  # bump when the tokenizer pipeline changes, so old cache files are not reused


def user_cache_dir() -> Path:
    """The fallback tokenizer cache, ``$XDG_CACHE_HOME/lightning_dsl`` (``~/.cache/lightning_dsl`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_dsl"


def _writable_dir(path: Path) -> bool:
    """Create ``path`` if needed and check that a file can be written in it (``os.access`` is wrong for root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


class TextDataModule(LightningDataModule):
    r"""Sentence classification from delimited files: SST-2 by default, or any TSV/CSV with a text and a label column.

    A WordPiece tokenizer (Hugging Face ``tokenizers``) is trained on the training split only, with at most
    ``vocab_size`` tokens; ``[PAD]`` is id 0 (``pad_id``), ``[UNK]`` 1 and ``[CLS]`` 2, and ``[CLS]`` starts every
    sequence. The tokenizer is cached as JSON in ``<root>/.cache/`` when ``root`` is writable, else in
    ``~/.cache/lightning_dsl/`` (or in ``cache_dir``); the file name holds a hash of the training file (path,
    size, modification time), ``vocab_size`` and ``lowercase``, so changing any of them trains a new one.

    Sequences longer than ``max_length`` tokens (``[CLS]`` included) are **truncated** to their first
    ``max_length`` tokens. Batches are padded to their longest sequence (at most ``max_length``) and are
    ``(inputs, labels)``: ``inputs`` a :class:`~lightning_dsl.core.sequence.MaskedSequence` of the token ids
    (``values``, ``LongTensor [B, T]``) and the attention mask (``mask``, ``BoolTensor [B, T]``, True on real
    tokens), ``labels`` a ``LongTensor [B]``. ``input_shape`` is ``(max_length,)``, the longest input.

    Labels are integers ``0 .. num_classes - 1``; ``num_classes`` is 2 for the ``"sst2"`` preset and otherwise
    ``max(label) + 1`` over the training split, known after ``setup``. ``vocab_size`` is the requested size until
    ``setup`` and the tokenizer's real size after it.

    Args:
        root: folder holding the files (relative file names are looked up in it).
        preset: ``"sst2"``: ``train.tsv``, ``dev.tsv`` (validation) and ``test.tsv``, tab-separated, columns
            ``sentence`` and ``label``; the explicit arguments below override its values. ``None``: give at least
            ``train_file``, ``text_column`` and ``label_column``.
        train_file: the training file (trains the tokenizer).
        val_file: the validation file; ``None`` without a preset means no validation (``val_dataloader`` returns
            an empty list).
        test_file: the test file, also used by ``predict``; ``None`` without a preset means no test split.
        text_column: header name of the text column.
        label_column: header name of the label column (integers >= 0).
        delimiter: ``"\t"`` or ``","``; ``None`` takes the preset's, or guesses from the training file's
            extension (``.csv``: comma, else tab).
        vocab_size: the largest tokenizer vocabulary, special tokens included.
        max_length: the longest sequence in tokens, ``[CLS]`` included; longer ones are truncated.
        batch_size: batch size for all splits.
        num_workers: DataLoader worker processes (the batches are cheap: 0 is usually fastest).
        seed: seeds the order of the training batches.
        bucket_pool: ``0``: shuffled training batches. ``k >= 1``: batches of similar lengths
            (:class:`~lightning_dsl.data.buckets.BucketBatchSampler`): the shuffled examples are sorted by length
            in pools of ``k`` batches' worth, cut into batches, and the batches shuffled; far less padding (SST-2
            with ``k = 100``: 1.03 padded positions per real token instead of 3.6). Validation and test keep the
            file order.
        lowercase: lower-case (and strip accents from) the text before tokenizing.
        cache_dir: where to cache the tokenizer; ``None`` for ``<root>/.cache`` or ``~/.cache/lightning_dsl``.
        tokenizer_file: a tokenizer saved by ``tokenizers`` (the cached file of an earlier run, for instance) to use
            instead of training one; its ``[PAD]``, ``[UNK]``, ``[CLS]`` must be ids 0, 1, 2. Give every client of a
            deployment the same file: the trainer breaks ties between equally frequent merges in hash-map order, so
            two trainings on a small corpus can keep different subwords.

    Raises:
        ValueError: if an argument is out of range or a needed one is missing; from ``setup``, if a file is
            empty, lacks a column or has a label that is not an integer >= 0.
        FileNotFoundError: from ``setup``, if a file is missing.

    Example::

        dm = TextDataModule(root="../shared/data/sst2", max_length=64, batch_size=64)
        dm.setup("fit")
        inputs, labels = next(iter(dm.train_dataloader()))  # inputs.values: token ids, inputs.mask: real tokens
        model = TextTransformer(vocab_size=dm.vocab_size, max_length=dm.max_length, num_classes=dm.num_classes)
    """

    pad_id = 0

    def __init__(
        self,
        root: str = "data/sst2",
        preset: str | None = "sst2",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        text_column: str | None = None,
        label_column: str | None = None,
        delimiter: str | None = None,
        vocab_size: int = 8000,
        max_length: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        bucket_pool: int = 0,
        lowercase: bool = True,
        cache_dir: str | None = None,
        tokenizer_file: str | None = None,
    ) -> None:
        super().__init__()
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"Expected argument `preset` to be one of {sorted(PRESETS)} or None, but got {preset!r}.")
        chosen: dict[str, str | None] = {
            "train_file": train_file,
            "val_file": val_file,
            "test_file": test_file,
            "text_column": text_column,
            "label_column": label_column,
            "delimiter": delimiter,
        }
        defaults = PRESETS[preset] if preset is not None else {}
        merged = {arg: value if value is not None else defaults.get(arg) for arg, value in chosen.items()}
        for arg in ("train_file", "text_column", "label_column"):
            if not merged[arg]:
                raise ValueError(
                    f"Expected argument `{arg}` to be set when `preset` is None, but got {merged[arg]!r}"
                    f" (or choose a preset: {sorted(PRESETS)})."
                )
        if merged["delimiter"] is None:
            merged["delimiter"] = "," if str(merged["train_file"]).lower().endswith(".csv") else "\t"
        if merged["delimiter"] not in DELIMITERS:
            raise ValueError(
                f"Expected argument `delimiter` to be a tab '\\t' or a comma ',', but got {merged['delimiter']!r}."
            )
        if merged["text_column"] == merged["label_column"]:
            raise ValueError(
                "Expected arguments `text_column` and `label_column` to differ, but both are"
                f" {merged['text_column']!r}."
            )
        for arg, value, least in (
            ("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1),
            ("max_length", max_length, 2),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Expected argument `{arg}` to be an int >= {least}, but got {value!r}.")
        if isinstance(bucket_pool, bool) or not isinstance(bucket_pool, int) or bucket_pool < 0:
            raise ValueError(f"Expected argument `bucket_pool` to be an int >= 0 (0: off), but got {bucket_pool!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Expected argument `seed` to be an int, but got {seed!r}.")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.preset = preset
        self.train_file: str = str(merged["train_file"])
        self.val_file: str | None = merged["val_file"]
        self.test_file: str | None = merged["test_file"]
        self.text_column: str = str(merged["text_column"])
        self.label_column: str = str(merged["label_column"])
        self.delimiter: str = str(merged["delimiter"])
        self.requested_vocab_size = vocab_size
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.input_shape = (max_length,)  # the longest input; what the module probes the cut with
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.bucket_pool = bucket_pool
        self.lowercase = lowercase
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.tokenizer_file = Path(tokenizer_file).expanduser() if tokenizer_file is not None else None
        self.num_classes: int | None = _PRESET_NUM_CLASSES.get(preset) if preset is not None else None
        self.tokenizer: Tokenizer | None = None
        self.tokenizer_path: Path | None = None
        self.tokenizer_trained = False  # True when the last `setup` trained the tokenizer, False when it was cached
        self.train_set: TokenizedDataset | None = None
        self.val_set: TokenizedDataset | None = None
        self.test_set: TokenizedDataset | None = None

    # ------------------------------------------------------------------ files
    def _path(self, name: str) -> Path:
        return self.root / name

    def _check_exists(self, arg: str, name: str) -> Path:
        path = self._path(name)
        if path.is_file():
            return path
        if self.preset is not None:
            files = PRESETS[self.preset]
            expects = (
                f"The preset {self.preset!r} expects {files['train_file']}, {files['val_file']} and"
                f" {files['test_file']} in `root`={str(self.root.resolve())!r}"
                f" ({DELIMITERS[files['delimiter']]}-separated, columns {files['text_column']!r} and"
                f" {files['label_column']!r})."
            )
        else:
            expects = f"Set `root` and `{arg}` to an existing file."
        raise FileNotFoundError(
            f"TextDataModule: the {arg.removesuffix('_file')} file {str(path.resolve())!r} was "
            f"not found (`{arg}`={name!r}). {expects}"
        )

    def _read(self, path: Path, num_classes: int | None = None) -> tuple[list[str], list[int]]:
        texts, labels, lines = read_table(path, self.text_column, self.label_column, self.delimiter)
        if num_classes is not None:
            for label, line in zip(labels, lines, strict=True):
                if label >= num_classes:
                    raise ValueError(
                        f"{path}, line {line}: expected a label in 0..{num_classes - 1} (the classes of the training"
                        f" split), but got {label}."
                    )
        return texts, labels

    # ------------------------------------------------------------------ tokenizer
    def _given_tokenizer(self, path: Path) -> Tokenizer:
        tokenizer = load_tokenizer(path)
        self.tokenizer_path, self.tokenizer_trained = path, False
        return tokenizer

    def _cache_file(self, train_path: Path) -> Path:
        stat = train_path.stat()
        key = json.dumps(
            [
                _CACHE_FORMAT,
                str(train_path.resolve()),
                stat.st_size,
                stat.st_mtime_ns,
                self.requested_vocab_size,
                self.lowercase,
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        folder = self.cache_dir
        if folder is None:
            folder = self.root / ".cache"
            if not _writable_dir(folder):
                folder = user_cache_dir()
        return folder / f"tokenizer-wordpiece-{self.requested_vocab_size}-{digest}.json"

    def _load_or_train_tokenizer(self, train_path: Path, texts: Sequence[str]) -> Tokenizer:
        if self.tokenizer_file is not None:
            return self._given_tokenizer(self.tokenizer_file)
        path = self._cache_file(train_path)
        self.tokenizer_path = path
        if path.is_file():
            self.tokenizer_trained = False
            return Tokenizer.from_file(str(path))
        tokenizer = build_tokenizer(texts, self.requested_vocab_size, self.lowercase)
        self.tokenizer_trained = True
        save_tokenizer(tokenizer, path)
        rank_zero_info(f"TextDataModule: trained a WordPiece tokenizer ({tokenizer.get_vocab_size()} tokens): {path}")
        return tokenizer

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text: ``[CLS]`` first, truncated to ``max_length``.

        Raises:
            RuntimeError: before ``setup``.
        """
        if self.tokenizer is None:
            raise RuntimeError("TextDataModule: call `setup()` before encoding text.")
        return [enc.ids[: self.max_length] for enc in self.tokenizer.encode_batch(list(texts))]

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Check the files, read the training split, train or load the tokenizer and tokenize the stage's splits.

        ``fit`` tokenizes the training and validation files, ``validate`` the validation file, ``test`` and
        ``predict`` the test file, ``None`` all of them. The training file is always read: it gives the tokenizer
        and ``num_classes``.

        Raises:
            FileNotFoundError: if a needed file is missing.
            ValueError: if a file is empty, lacks a column or has a bad label, or the stage needs a split that was
                not given.
        """
        needs = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }
        if stage not in needs:
            raise ValueError(f"Expected argument `stage` to be one of {list(needs)}, but got {stage!r}.")
        splits = needs[stage]
        names = {"train": self.train_file, "val": self.val_file, "test": self.test_file}
        if stage in ("test", "predict") and self.test_file is None:
            raise ValueError(f"TextDataModule: `setup({stage!r})` needs a test split, but `test_file` is None.")
        paths = {"train": self._check_exists("train_file", self.train_file)}
        for split in splits:
            name = names[split]
            if name is not None and split != "train":
                paths[split] = self._check_exists(f"{split}_file", name)
        texts, labels = self._read(paths["train"])
        num_classes = max(labels) + 1
        if self.preset is not None and num_classes > _PRESET_NUM_CLASSES[self.preset]:
            raise ValueError(
                f"{paths['train']}: expected labels 0..{_PRESET_NUM_CLASSES[self.preset] - 1} for the preset"
                f" {self.preset!r}, but found {num_classes - 1}."
            )
        self.num_classes = max(num_classes, self.num_classes or 0)
        self.tokenizer = self._load_or_train_tokenizer(paths["train"], texts)
        self.vocab_size = self.tokenizer.get_vocab_size()
        for split in splits:
            if split not in paths:
                continue
            if split == "train":
                split_texts, split_labels = texts, labels
            else:
                split_texts, split_labels = self._read(paths[split], self.num_classes)
            setattr(self, f"{split}_set", TokenizedDataset(self.encode(split_texts), split_labels))

    # ------------------------------------------------------------------ loaders
    @property
    def collate_fn(self) -> functools.partial[tuple[MaskedSequence, Tensor]]:
        """The batch collation: pads to the longest sequence of the batch with ``pad_id`` (picklable)."""
        return functools.partial(collate, pad_id=self.pad_id)

    def _loader(self, dataset: TokenizedDataset | None, split: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"TextDataModule: call `setup()` for the {split} split before asking for its loader.")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        batching: dict[str, Any] = {"batch_size": self.batch_size, "shuffle": shuffle, "generator": generator}
        if shuffle and self.bucket_pool:
            lengths = [len(ids) for ids in dataset.ids]
            batching = {"batch_sampler": BucketBatchSampler(lengths, self.batch_size, self.bucket_pool, generator)}
        return DataLoader(
            dataset,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **batching,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the order seeded by ``seed``)."""
        return self._loader(self.train_set, "training", shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches, in file order; an empty list when there is no validation file."""
        if self.val_file is None:
            return []
        return self._loader(self.val_set, "validation")

    def test_dataloader(self) -> DataLoader:
        """Test batches, in file order."""
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """``trainer.predict`` runs on the test split (batches of ``(inputs, labels)``, in order)."""
        return self._loader(self.test_set, "test")


__all__ = [
    "CLS",
    "DELIMITERS",
    "PAD",
    "PRESETS",
    "SPECIAL_TOKENS",
    "UNK",
    "TextDataModule",
    "TokenizedDataset",
    "build_tokenizer",
    "collate",
    "read_table",
    "user_cache_dir",
]
