"""A small encoder-only transformer for sequence classification, cut between its blocks.

Pre-norm encoder blocks (Xiong et al. 2020) built from ``torch.nn`` and
:func:`torch.nn.functional.scaled_dot_product_attention`; token and learned position
embeddings in front; a final LayerNorm, the mean over the real tokens (or the ``[CLS]``
position) and one linear layer at the end. Every unit takes and returns a
:class:`~lightning_dsl.core.sequence.MaskedSequence`, so the padding mask travels with the
hidden states through the network and across the cut.

Cut units: ``embeddings``, ``blocks[0]``, ..., ``blocks[depth - 1]``, ``head``; the named cuts put
a third, a half and two thirds of the blocks on the client, as the ResNets' do with their blocks.

Example::

    >>> import torch
    >>> from lightning_dsl.core.sequence import MaskedSequence
    >>> net = text_transformer(vocab_size=100, max_length=16, num_classes=2, dim=32, depth=3, heads=4)
    >>> ids = torch.tensor([[2, 7, 8, 9], [2, 5, 0, 0]])
    >>> tuple(net(MaskedSequence(ids, ids != 0)).shape), net.named_cuts()
    ((2, 2), {'shallow': 2, 'middle': 2, 'deep': 3})
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_dsl.core.sequence import MaskedSequence, masked_mean
from lightning_dsl.models.registry import register_model

POOLING = ("mean", "cls")


class TokenEmbeddings(nn.Module):
    """Token embedding plus a learned position embedding, then dropout (the first cut unit).

    Args:
        vocab_size: number of token ids (``0`` is the padding id).
        max_length: number of positions; a longer sequence is refused (the data module truncates).
        dim: model width.
        dropout: dropout after the sum.
    """

    def __init__(self, vocab_size: int, max_length: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: MaskedSequence) -> MaskedSequence:  # noqa: D102
        length = x.values.shape[1]
        if length > self.positions.num_embeddings:
            raise ValueError(
                f"Got sequences of {length} tokens, longer than the model's"
                f" `max_length`={self.positions.num_embeddings} positions: truncate them"
                " (TextDataModule's `max_length`) or build the model with more positions."
            )
        positions = torch.arange(length, device=x.values.device)
        return x.with_values(self.dropout(self.tokens(x.values) + self.positions(positions)))

    def example_input(self, batch_size: int, input_shape: tuple[int, ...]) -> MaskedSequence:
        """Dummy token ids of ``input_shape = (length,)``, all real (what the module probes the cut with)."""
        (length,) = input_shape
        ids = torch.full((batch_size, length), 2, dtype=torch.long)  # [CLS]-like ids, no padding
        return MaskedSequence(ids, torch.ones(batch_size, length, dtype=torch.bool))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: ``h + attn(norm1(h))``, then ``h + mlp(norm2(h))``.

    Padding positions are masked out of every attention (as keys); their own outputs are computed
    but never read by a real token, the pooling or the loss.

    Args:
        dim: model width.
        heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
        dropout: dropout on the attention weights and after each residual branch.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.dropout_p = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def attention(self, h: Tensor, mask: Tensor) -> Tensor:
        """Multi-head self-attention of ``h [B, T, D]`` over the real tokens of ``mask [B, T]``."""
        batch, length, dim = h.shape
        q, k, v = self.qkv(h).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        keep = mask[:, None, None, :]  # [B, 1, 1, T]: every query attends to the real keys only
        dropout = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))

    def forward(self, x: MaskedSequence) -> MaskedSequence:  # noqa: D102
        h = x.values + self.dropout(self.attention(self.norm1(x.values), x.mask))
        h = h + self.dropout(self.mlp(self.norm2(h)))
        return x.with_values(h)


class ClassifierHead(nn.Module):
    """Final LayerNorm, pooling over the sequence (``"mean"`` of the real tokens or the ``"cls"`` position), linear."""

    def __init__(self, dim: int, num_classes: int, pool: str = "mean") -> None:
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: MaskedSequence) -> Tensor:  # noqa: D102
        h = self.norm(x.values)
        pooled = masked_mean(h, x.mask) if self.pool == "mean" else h[:, 0]
        return self.linear(pooled)

    def extra_repr(self) -> str:  # noqa: D102
        return f"pool={self.pool!r}"


class TextTransformer(nn.Module):
    """Encoder-only transformer classifier: embeddings, ``depth`` pre-norm blocks, a pooled linear head.

    Takes a :class:`~lightning_dsl.core.sequence.MaskedSequence` of token ids ``[B, T]`` (``T <= max_length``)
    and returns logits ``[B, num_classes]``. The vocabulary and the positions come from the data: the CLI
    links the data module's ``vocab_size`` and ``max_length`` to ``network.init_args``
    (see ``configs/sst2_transformer.yaml``).

    Args:
        vocab_size: token ids ``0 .. vocab_size - 1`` (``0`` pads); the data module's ``vocab_size``.
        max_length: positions; the data module's ``max_length`` (longer sequences are truncated there).
        num_classes: classes of the linear head.
        dim: model width.
        depth: number of encoder blocks (cut units ``1 .. depth``).
        heads: attention heads; ``dim`` must be divisible by it.
        mlp_ratio: the MLP's hidden width as a multiple of ``dim``.
        dropout: dropout in the embeddings, the attention and the residual branches.
        pool: ``"mean"`` (over the real tokens) or ``"cls"`` (the first position, ``[CLS]``).

    Raises:
        ValueError: naming the argument for a value out of range.
    """

    def __init__(
        self,
        vocab_size: int = 8000,
        max_length: int = 64,
        num_classes: int = 2,
        dim: int = 128,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("vocab_size", vocab_size, 3),
            ("max_length", max_length, 1),
            ("num_classes", num_classes, 2),
            ("dim", dim, 1),
            ("depth", depth, 1),
            ("heads", heads, 1),
            ("mlp_ratio", mlp_ratio, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Expected argument `{name}` to be an int >= {low}, but got {value!r}.")
        if dim % heads != 0:
            raise ValueError(f"Expected argument `dim`={dim} to be divisible by `heads`={heads}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"Expected argument `dropout` to be in [0, 1), but got {dropout!r}.")
        if pool not in POOLING:
            raise ValueError(f"Expected argument `pool` to be one of {list(POOLING)}, but got {pool!r}.")
        self.vocab_size, self.max_length, self.num_classes = vocab_size, max_length, num_classes
        self.embeddings = TokenEmbeddings(vocab_size, max_length, dim, dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.head = ClassifierHead(dim, num_classes, pool)
        self.apply(_init_weights)

    def cut_units(self) -> list[nn.Module]:
        """``embeddings``, each block, ``head``: ``depth + 2`` units, cuts ``1 .. depth + 1``."""
        return [self.embeddings, *self.blocks, self.head]

    def named_cuts(self) -> dict[str, int]:
        """Split indices with a third, a half and two thirds of the blocks on the client (at least one each).

        For ``depth = 6``: ``shallow`` 3, ``middle`` 4, ``deep`` 5 (two, three and four blocks on the client).
        """
        depth = len(self.blocks)
        return {"shallow": 1 + max(1, depth // 3), "middle": 1 + max(1, depth // 2), "deep": 1 + max(1, 2 * depth // 3)}

    def forward(self, x: MaskedSequence) -> Tensor:  # noqa: D102
        for unit in self.cut_units()[:-1]:
            x = unit(x)
        return self.head(x)


def _init_weights(module: nn.Module) -> None:
    """GPT-2/BERT initialisation: normal(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


@register_model
def text_transformer(**kwargs: Any) -> TextTransformer:
    """Build a :class:`TextTransformer`; the keyword arguments are its own (``vocab_size``, ``depth``, ...)."""
    return TextTransformer(**kwargs)
