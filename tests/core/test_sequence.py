"""Sequences with a padding mask at the cut: the mask crosses exact and is counted; heads pool the real tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dsl.core.cut import Cut
from lightning_dsl.core.heads import MaskedMeanPool, build_aux_head, check_aux_head
from lightning_dsl.core.sequence import MaskedSequence, example_inputs, masked_mean, values_of
from lightning_dsl.core.step import scale_grad

B, T, D = 3, 5, 4


def sequence(dtype: torch.dtype = torch.float32) -> MaskedSequence:
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return MaskedSequence(torch.randn(B, T, D, generator=torch.Generator().manual_seed(0), dtype=dtype), mask)


def test_mask_must_be_bool_of_the_batch_and_length() -> None:
    with pytest.raises(ValueError, match=r"`mask` to be a bool tensor of shape \(batch, length\) = \(3, 5\)"):
        MaskedSequence(torch.zeros(B, T, D), torch.ones(B, T))
    with pytest.raises(ValueError, match=r"but got dtype torch.bool and shape \(3, 4\)"):
        MaskedSequence(torch.zeros(B, T, D), torch.ones(B, T - 1, dtype=torch.bool))


def test_to_keeps_the_mask_bool_and_detach_keeps_it_shared() -> None:
    z = sequence()
    half = z.to(torch.float16)
    assert half.values.dtype == torch.float16 and half.mask.dtype == torch.bool
    assert torch.equal(half.mask, z.mask)
    assert z.detach().mask is z.mask
    assert z.shape == (B, T, D) and z.tokens == 9


def test_masked_mean_ignores_padding() -> None:
    z = sequence()
    expected = torch.stack([z.values[i, : int(z.mask[i].sum())].mean(0) for i in range(B)])
    torch.testing.assert_close(masked_mean(z.values, z.mask), expected)
    garbage = z.values.masked_fill(~z.mask[..., None], 1e6)  # what sits at padded positions never counts
    torch.testing.assert_close(masked_mean(garbage, z.mask), expected)


@pytest.mark.parametrize(
    ("codec", "value_bytes"),
    [("none", B * T * D * 4), ("fp16", B * T * D * 2), ("int8", B * T * D + 8), ("int8-channel", B * T * D + 8 * T)],
)
def test_cut_sends_the_mask_exact_and_counts_it(codec: str, value_bytes: int) -> None:
    cut = Cut(codec=codec)
    z, labels = sequence(), torch.tensor([0, 1, 1])
    arrived, arrived_labels = cut.send_up(z, labels)
    assert isinstance(arrived, MaskedSequence)
    assert torch.equal(arrived.mask, z.mask) and arrived.mask.dtype == torch.bool  # no codec touches the mask
    assert torch.equal(arrived_labels, labels)
    torch.testing.assert_close(arrived.values, z.values, atol=0.05, rtol=0.01)
    # values through the codec + one byte per position of the mask + int64 labels
    assert cut.traffic.bytes_up == value_bytes + B * T + B * 8
    assert cut.traffic.messages_up == 1


def test_gradient_down_is_the_values_gradient_only() -> None:
    cut = Cut()
    gradient = torch.randn(B, T, D)
    assert torch.equal(cut.send_down(gradient), gradient)
    assert cut.traffic.bytes_down == B * T * D * 4  # the mask never comes down


def test_scale_grad_scales_the_values_and_keeps_the_mask() -> None:
    values = torch.randn(B, T, D, requires_grad=True)
    z = MaskedSequence(values, sequence().mask)
    scaled = scale_grad(z, 0.25)
    assert isinstance(scaled, MaskedSequence) and scaled.mask is z.mask
    values_of(scaled).sum().backward()
    torch.testing.assert_close(values.grad, torch.full_like(values, 0.25))
    assert not values_of(scale_grad(z, 0.0)).requires_grad


@pytest.mark.parametrize(("spec", "parameters"), [("linear", D * 2 + 2), ("mlp", D * 8 + 8 + 8 * 2 + 2)])
def test_built_in_heads_pool_the_real_tokens(spec: str, parameters: int) -> None:
    head = build_aux_head(spec, (T, D), num_classes=2, hidden=8, sequence=True)
    assert isinstance(head[0], MaskedMeanPool)
    assert sum(p.numel() for p in head.parameters()) == parameters
    z = sequence()
    check_aux_head(head, z, 2)
    padded_garbage = z.with_values(z.values.masked_fill(~z.mask[..., None], 123.0))
    torch.testing.assert_close(head(padded_garbage), head(z))


def test_linear_head_is_mean_then_linear() -> None:
    head = build_aux_head("linear", (T, D), num_classes=2, sequence=True)
    z = sequence()
    linear = head[1]
    assert isinstance(linear, nn.Linear)
    torch.testing.assert_close(head(z), linear(masked_mean(z.values, z.mask)))


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("conv", {}, "got 'conv', which needs images"),
        ("linear", {"pool": 0}, r"`aux_head_kwargs\['pool'\]` to be 1 for a sequence cut activation"),
        ("linear", {"pool": 2}, "got 2"),
    ],
)
def test_heads_that_do_not_apply_to_sequences_are_refused(spec: str, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_aux_head(spec, (T, D), num_classes=2, sequence=True, **kwargs)


def test_example_inputs_come_from_the_first_unit_when_it_says() -> None:
    class Ids(nn.Module):
        def example_input(self, batch_size: int, input_shape: tuple[int, ...]) -> MaskedSequence:
            ids = torch.ones(batch_size, *input_shape, dtype=torch.long)
            return MaskedSequence(ids, ids > 0)

    made = example_inputs(Ids(), (7,), 2, torch.device("cpu"), torch.float32)
    assert isinstance(made, MaskedSequence) and made.shape == (2, 7) and made.values.dtype == torch.long
    zeros = example_inputs(nn.Identity(), (3, 4), 2, torch.device("cpu"), torch.float64)
    assert isinstance(zeros, torch.Tensor) and zeros.shape == (2, 3, 4) and zeros.dtype == torch.float64
