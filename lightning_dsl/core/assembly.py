"""Assembling a split network from its arguments: the auxiliary head, the probes and the codec checks.

The auxiliary head is built from the cut activation's real shape, read by running the client half on a
probe batch; the same probe checks that the codecs can carry the cut's dtype and that the server half ends
in as many classes as the run has. All of it runs at construction (or at ``setup`` when the input shape is
known only then), before any optimizer exists and before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsl.core.codecs import Codec, check_codec_dtype
from lightning_dsl.core.cut import Cut
from lightning_dsl.core.heads import HEAD_OPTIONS, HEADS, build_aux_head, check_aux_head
from lightning_dsl.core.sequence import Activation, MaskedSequence, example_inputs, values_of
from lightning_dsl.core.split import SplitNetwork, check_split_matches


@dataclass(frozen=True)
class HeadOptions:
    """The checked auxiliary-head arguments: the head (a built-in name or a module), its options and its lr."""

    spec: str | nn.Module = "linear"
    kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None

    @classmethod
    def check(cls, aux_head: Any, aux_head_kwargs: dict[str, Any] | None, aux_head_lr: Any) -> HeadOptions:
        """Check ``aux_head``, ``aux_head_kwargs`` and ``aux_head_lr`` (the module's arguments)."""
        if not isinstance(aux_head, nn.Module) and aux_head not in HEADS:
            raise ValueError(
                f"Expected argument `aux_head` to be one of {list(HEADS)} or an nn.Module, got {aux_head!r}."
            )
        if aux_head_lr is not None and (isinstance(aux_head_lr, bool) or not aux_head_lr > 0):
            raise ValueError(f"Expected argument `aux_head_lr` to be a float > 0 or None, got {aux_head_lr!r}.")
        kwargs = dict(aux_head_kwargs or {})
        unknown = sorted(set(kwargs) - set(HEAD_OPTIONS))
        if unknown:
            raise ValueError(f"Unknown keys {unknown} in argument `aux_head_kwargs`: allowed are {list(HEAD_OPTIONS)}.")
        return cls(aux_head, kwargs, aux_head_lr)

    @property
    def is_module(self) -> bool:
        """A user's head (its parameters exist before any shape is known)."""
        return isinstance(self.spec, nn.Module)

    def build(self, z: Activation, num_classes: int) -> nn.Module:
        """The head for the cut activation ``z`` (a probe batch), on ``z``'s device; checked on ``z``."""
        values = values_of(z)
        sequence = isinstance(z, MaskedSequence)
        head = build_aux_head(self.spec, values.shape[1:], num_classes, **self.kwargs, sequence=sequence)
        if not self.is_module:  # a built-in head follows the network's device and dtype
            head = head.to(device=values.device, dtype=values.dtype if values.is_floating_point() else None)
        check_aux_head(head, z, num_classes)
        return head.to(values.device)


def example_batch(client: nn.Sequential, input_shape: Sequence[int]) -> Activation:
    """A dummy batch of 2 inputs of ``input_shape`` on the client's device, in its dtype (token ids for text)."""
    parameter = next(client.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    return example_inputs(client[0], input_shape, 2, device, dtype)


@torch.no_grad()
def check_halves(network: nn.Module, halves: SplitNetwork, input_shape: Sequence[int]) -> None:
    """Refuse halves that, chained, differ from ``network``'s own forward on a dummy batch (eval mode)."""
    check_split_matches(network, halves, example_batch(halves.client, input_shape))


@torch.no_grad()
def probe_cut_activation(client: nn.Sequential, split_index: int, input_shape: Sequence[int]) -> Activation:
    """Run the client half on a dummy batch of 2 in eval mode: no BatchNorm statistic moves."""
    was_training = client.training
    client.eval()
    try:
        return client(example_batch(client, input_shape))
    except Exception as err:
        raise ValueError(
            f"The client (units [0, {split_index}) of the network) cannot run on inputs of shape"
            f" {tuple(input_shape)} (argument `input_shape`): {err}"
        ) from err
    finally:
        client.train(was_training)


@torch.no_grad()
def check_network_output(server: nn.Module, z: Activation, num_classes: int) -> None:
    """Refuse a network whose logits have another number of classes than ``num_classes`` (before training)."""
    was_training = server.training
    server.eval()
    try:
        logits = server(z)
    finally:
        server.train(was_training)
    if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] != num_classes:
        raise ValueError(
            f"The network's output has {logits.shape[1]} classes, but argument `num_classes` is {num_classes}:"
            f" build the network for {num_classes} classes (its own `num_classes` argument)."
        )


def check_cut_codecs(cut: Cut, dtype: torch.dtype, mode: str) -> None:
    """Refuse a codec that cannot carry the cut's ``dtype`` (the gradient sent down has the same dtype)."""
    assert isinstance(cut.codec, Codec) and isinstance(cut.grad_codec, Codec)
    check_codec_dtype(cut.codec, dtype, "codec")
    if mode != "dsl":  # in dsl nothing is sent down
        check_codec_dtype(cut.grad_codec, dtype, "grad_codec")


def check_head_fits_inputs(
    client: nn.Sequential,
    head: nn.Module,
    split_index: int,
    shape: Sequence[int],
    input_shape: Sequence[int] | None,
    num_classes: int,
) -> None:
    """Refuse batches whose inputs the auxiliary head, built for ``input_shape``, cannot take (on the first batch)."""
    z = probe_cut_activation(client, split_index, shape)
    try:
        check_aux_head(head, z, num_classes)
    except ValueError as err:
        raise ValueError(
            f"The batches' inputs have per-sample shape {tuple(shape)}, but argument `input_shape` is"
            f" {tuple(input_shape) if input_shape is not None else None}, for which the auxiliary head was built, and"
            f" the head does not take the cut activation of these inputs: pass input_shape={tuple(shape)} (or leave it"
            f" out: it is read from the data). {err}"
        ) from err
