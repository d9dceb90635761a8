"""Inversion of a text model's cut: a probe trained on auxiliary hidden states recovers the token ids.

The text analogue of :mod:`lightning_dsl.privacy.inversion`: the attacker holds the client half and an
auxiliary set of token sequences, computes the hidden states ``z = client(x)`` (``[B, T, D]`` with the padding
mask), and trains a probe ``z[b, t] -> x[b, t]`` on the real positions; applied to the private sequences' hidden
states it guesses every token. The figure is ``token_accuracy``, the fraction of the private real tokens guessed
right, read against ``baseline_token_accuracy``: always guessing the auxiliary set's most frequent token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.privacy.distance import distance_correlation


@dataclass(frozen=True)
class TokenReport:
    """The probe's token accuracy on the private real tokens and the most-frequent-token baseline's."""

    token_accuracy: float
    baseline_token_accuracy: float
    dcor: float
    auxiliary_tokens: int
    private_tokens: int
    time_s: float

    def figures(self) -> dict[str, float | int]:
        """The numbers, as a JSON-ready dict."""
        return asdict(self)


def probe_tokens(
    client: nn.Module,
    auxiliary: Sequence[MaskedSequence],
    private: Sequence[MaskedSequence],
    vocab_size: int,
    epochs: int = 5,
    lr: float = 3e-3,
    hidden: int | None = None,
    seed: int = 0,
) -> TokenReport:
    """Train a per-position probe from the client's hidden states to the token ids; score it on ``private``.

    The client runs in eval mode without gradients. The probe is linear (``hidden=None``) or an MLP with
    one hidden layer of ``hidden`` units, trained with Adam and cross-entropy on the real positions of the
    auxiliary batches, ``epochs`` passes in a seeded order; its output bias starts at the log-frequencies of
    the auxiliary tokens, where a probe that sees nothing ends. ``dcor`` is the batch-size-weighted mean over the
    private batches of :func:`~lightning_dsl.privacy.distance_correlation` of the ids (one-hot) and the hidden
    states, padding zeroed.

    Args:
        client: the client half, as the attacker holds it (takes and returns :class:`MaskedSequence`).
        auxiliary: the attacker's own batches of token ids (``MaskedSequence`` of ``[B, T]`` ids).
        private: the clients' batches whose tokens the probe guesses.
        vocab_size: the number of token ids.
        epochs: passes over the auxiliary batches.
        lr: Adam's learning rate.
        hidden: hidden units of an MLP probe; ``None`` for a linear probe.
        seed: seeds the probe's initialisation and the batch order.

    Raises:
        ValueError: if a batch is not a ``MaskedSequence`` of integer ids (image inputs: measure mse, psnr and
            ssim with :func:`~lightning_dsl.privacy.invert_images`), the client does not return one, or a
            count argument is not positive.
    """
    for name, batches in (("auxiliary", auxiliary), ("private", private)):
        if not batches or any(
            not isinstance(b, MaskedSequence) or b.values.is_floating_point() or b.values.ndim != 2 for b in batches
        ):
            raise ValueError(
                f"Expected argument `{name}` to be a non-empty list of MaskedSequence batches of token ids [B, T]: the"
                " token probe is for text models; for images measure mse, psnr and ssim with invert_images."
            )
    for arg, value in (("vocab_size", vocab_size), ("epochs", epochs), ("hidden", hidden or 1)):
        if value < 1:
            raise ValueError(f"Expected argument `{arg}` to be a positive integer, but got {value}.")
    start = time.perf_counter()
    parameter = next(client.parameters(), None)
    device = parameter.device if parameter is not None else auxiliary[0].values.device
    client = client.eval()
    aux_states, aux_ids = _real_positions(client, auxiliary, device)
    width = aux_states.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe: nn.Module = (
            nn.Linear(width, vocab_size)
            if hidden is None
            else nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, vocab_size))
        )
    counts = torch.bincount(aux_ids, minlength=vocab_size).float()
    with torch.no_grad():  # start at the token frequencies: a probe that sees nothing guesses the most frequent token
        last = probe if isinstance(probe, nn.Linear) else probe[-1]  # type: ignore[index]
        last.bias.copy_(torch.log(counts / counts.sum() + 1e-8).to(last.bias.device))
    probe.to(device).train()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    chunk = 512  # positions per step: a few dozen sequences
    for _ in range(epochs):
        permutation = torch.randperm(len(aux_ids), generator=order).to(device)
        for begin in range(0, len(permutation), chunk):
            index = permutation[begin : begin + chunk]
            loss = nn.functional.cross_entropy(probe(aux_states[index]), aux_ids[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probe.eval()
    most_frequent = int(counts.argmax())
    right = baseline_right = tokens = 0
    dcor, samples = 0.0, 0
    with torch.no_grad():
        for batch in private:
            batch = batch.to(device)
            z = client(batch)
            if not isinstance(z, MaskedSequence):
                raise ValueError(f"Expected the client to return a MaskedSequence, but it returned {type(z).__name__}.")
            ids = batch.values[batch.mask]
            guesses = probe(z.values[batch.mask]).argmax(dim=1)
            right += int((guesses == ids).sum())
            baseline_right += int((ids == most_frequent).sum())
            tokens += len(ids)
            if len(batch.values) >= 2:
                dcor += float(distance_correlation(batch, z, dtype=torch.float64)) * len(batch.values)
                samples += len(batch.values)
    return TokenReport(
        token_accuracy=right / tokens,
        baseline_token_accuracy=baseline_right / tokens,
        dcor=dcor / samples if samples else float("nan"),
        auxiliary_tokens=len(aux_ids),
        private_tokens=tokens,
        time_s=time.perf_counter() - start,
    )


def _real_positions(
    client: nn.Module, batches: Sequence[MaskedSequence], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The hidden states ``[N, D]`` and token ids ``[N]`` of every real position of ``batches``."""
    states, ids = [], []
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(device)
            z = client(batch)
            if not isinstance(z, MaskedSequence):
                raise ValueError(f"Expected the client to return a MaskedSequence, but it returned {type(z).__name__}.")
            states.append(z.values[batch.mask].float())
            ids.append(batch.values[batch.mask])
    return torch.cat(states), torch.cat(ids)
