"""The WordPiece tokenizer of the text data: trained on the training split, with fixed ids, saved safely.

Hugging Face's ``tokenizers`` WordPiece model with BERT-style normalization and pre-tokenization:
``[PAD]`` is id 0, ``[UNK]`` id 1, ``[CLS]`` id 2, and ``[CLS]`` is prepended to every sequence. The
other tokens are numbered in sorted order, so the same texts give the same ids on every run and machine.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # in id order: [PAD] = 0, [UNK] = 1, [CLS] = 2


def build_tokenizer(texts: Sequence[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """Train a WordPiece tokenizer (BERT-style normalization and pre-tokenization) on ``texts``.

    Args:
        texts: the training texts.
        vocab_size: the largest vocabulary, special tokens included (a small corpus may give fewer).
        lowercase: lower-case (and strip accents from) the text before tokenizing.

    Returns:
        The tokenizer: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, then the other tokens in sorted order (one
        token, one id on every run; see ``tokenizer_file`` for the tokens themselves), with ``[CLS]`` prepended
        by ``encode``.

    Example::

        >>> tok = build_tokenizer(["a good film", "a bad film"], vocab_size=100)
        >>> tok.encode("a good day").tokens
        ['[CLS]', 'a', 'good', '[UNK]']
    """
    tokenizer = Tokenizer(WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The trainer numbers the tokens in hash-map order, which differs from run to run: two processes (or two
    # machines) training on the same texts would give the same token different ids. Number them in a fixed order.
    vocab = tokenizer.get_vocab()
    ordered = [*SPECIAL_TOKENS, *sorted(set(vocab) - set(SPECIAL_TOKENS))]
    tokenizer.model = WordPiece({token: i for i, token in enumerate(ordered)}, unk_token=UNK)
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # pragma: no cover - the trainer adds special tokens first
        raise RuntimeError(f"Expected the special tokens {SPECIAL_TOKENS} to have ids 0, 1, 2, but got {ids}.")
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, ids[2])])
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer saved by ``tokenizers`` (argument ``tokenizer_file``), checked to give the special tokens 0, 1, 2.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a ``tokenizers`` JSON file, or its special tokens have other ids.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Argument `tokenizer_file`: no file at {path.resolve()}.")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:
        raise ValueError(f"Argument `tokenizer_file`: {path} is not a `tokenizers` JSON file: {err}") from err
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise ValueError(
            f"Argument `tokenizer_file`: {path} must give {list(SPECIAL_TOKENS)} the ids 0, 1, 2, but gives {ids}."
        )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write ``tokenizer`` to ``path`` through a temporary file and a rename: safe with several ranks at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = ["CLS", "PAD", "SPECIAL_TOKENS", "UNK", "build_tokenizer", "load_tokenizer", "save_tokenizer"]
