"""Auxiliary heads: output shapes, parameter counts by hand, what the pooling computes, and the head check."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_dsl.core.heads import HEADS, PoolFlatten, build_aux_head, check_aux_head, count_parameters

C, H, W = 6, 8, 8  # per-sample shape of the cut activation
K = 5  # classes
BATCH = 3


def activation(*shape: int) -> Tensor:
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- shapes and sizes
@pytest.mark.parametrize(
    ("head", "options", "parameters"),
    [
        ("linear", {"pool": 1}, C * 1 * 1 * K + K),  # 35
        ("linear", {"pool": 2}, C * 2 * 2 * K + K),  # 125
        ("linear", {"pool": 4}, C * 4 * 4 * K + K),  # 485
        ("linear", {"pool": 0}, C * H * W * K + K),  # 1925: no pooling, one linear layer on the flattened z
        ("linear", {}, C * K + K),  # default: global average pooling
        ("mlp", {"hidden": 16}, (C * 16 + 16) + (16 * K + K)),
        ("mlp", {"hidden": 16, "pool": 2}, (C * 4 * 16 + 16) + (16 * K + K)),
        ("mlp", {}, (C * 256 + 256) + (256 * K + K)),  # default hidden width 256
        ("conv", {}, C * C * 9 + 2 * C + (C * K + K)),  # 3x3 conv without bias, BatchNorm, linear
        ("conv", {"pool": 2}, C * C * 9 + 2 * C + (C * 4 * K + K)),
        ("conv", {"pool": 0}, C * C * 9 + 2 * C + (C * H * W * K + K)),
    ],
)
def test_builtin_heads_give_logits_and_have_the_parameters_counted_by_hand(
    head: str, options: dict[str, Any], parameters: int
) -> None:
    module = build_aux_head(head, (C, H, W), K, **options)
    assert module(activation(C, H, W)).shape == (BATCH, K)
    assert count_parameters(module) == parameters


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("pool", [0, 1, 2])
def test_flat_activations_are_not_pooled(head: str, pool: int) -> None:
    module = build_aux_head(head, (12,), K, pool=pool, hidden=8)
    assert module(activation(12)).shape == (BATCH, K)
    assert count_parameters(module) == (12 * K + K if head == "linear" else 12 * 8 + 8 + 8 * K + K)


def test_sequence_activations_are_averaged_over_their_length() -> None:
    head = build_aux_head("linear", (C, 7), K, pool=2)  # (N, C, L): the pooling grid applies to images only
    z = activation(C, 7)
    linear = head[1]
    assert linear.in_features == C
    assert torch.allclose(head(z), linear(z.mean(dim=2)), rtol=1e-5, atol=1e-6)


def test_every_builtin_head_is_listed() -> None:
    assert HEADS == ("linear", "mlp", "conv")
    for name in HEADS:
        assert build_aux_head(name, (C, H, W), K)(activation(C, H, W)).shape == (BATCH, K)


# ---------------------------------------------------------------------------------------------- what the head computes
@pytest.mark.parametrize(
    ("pool", "features"),
    [
        (1, lambda z: z.mean(dim=(2, 3))),
        # 8 x 8 -> 2 x 2: the mean of each 4 x 4 block, flattened channel-major
        (2, lambda z: z.reshape(BATCH, C, 2, 4, 2, 4).mean(dim=(3, 5)).flatten(1)),
        (0, lambda z: z.flatten(1)),
    ],
)
def test_linear_head_is_one_linear_layer_on_the_pooled_activation(pool: int, features: Any) -> None:
    head = build_aux_head("linear", (C, H, W), K, pool=pool)
    z = activation(C, H, W)
    linear = head[1]
    assert isinstance(head[0], PoolFlatten) and isinstance(linear, nn.Linear)
    assert torch.allclose(head(z), features(z) @ linear.weight.T + linear.bias, rtol=1e-5, atol=1e-6)


def test_a_users_head_is_used_as_it_is() -> None:
    mine = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K))
    assert build_aux_head(mine, (C, H, W), K) is mine


# ---------------------------------------------------------------------------------------------- check_aux_head
def test_check_accepts_a_fitting_head_without_moving_its_statistics() -> None:
    head = build_aux_head("conv", (C, H, W), K)
    head.train()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    check_aux_head(head, activation(C, H, W), K)
    assert head.training  # its mode is restored
    for name, value in head.state_dict().items():
        assert torch.equal(value, before[name]), name  # eval-mode forward: BatchNorm statistics did not move


def test_check_restores_train_mode_when_the_head_fails() -> None:
    head = nn.Linear(7, K).train()
    with pytest.raises(ValueError):
        check_aux_head(head, activation(C, H, W), K)
    assert head.training


def test_check_refuses_a_head_that_does_not_accept_the_activation() -> None:
    with pytest.raises(
        ValueError,
        match=r"^Argument `aux_head` \(Linear\) does not accept the cut activation of shape \(3, 6, 8, 8\) \(batch,"
        r" \*per-sample shape\)\. Build it for inputs of that shape\. The error was: mat1 and mat2",
    ):
        check_aux_head(nn.Linear(7, K), activation(C, H, W), K)


@pytest.mark.parametrize(
    ("head", "returned"),
    [
        (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, K + 1)), r"\(3, 6\)"),
        (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), r"\(3, 6\)"),
        (nn.Conv2d(C, K, 1), r"\(3, 5, 8, 8\)"),
    ],
)
def test_check_refuses_a_head_with_the_wrong_output_shape(head: nn.Module, returned: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"Argument `aux_head` \(\w+\) must return logits of shape \(batch, num_classes\) = \(3, 5\) for the cut"
        rf" activation of shape \(3, 6, 8, 8\), but returned {returned}\.$",
    ):
        check_aux_head(head, activation(C, H, W), K)


def test_check_refuses_a_head_that_does_not_return_a_tensor() -> None:
    class Pair(nn.Module):
        def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
            return z, z

    with pytest.raises(ValueError, match=r"must return logits of shape .* but returned tuple\.$"):
        check_aux_head(Pair(), activation(C, H, W), K)
