"""The cut planner's figures against what real split steps measure, at every cut."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lightning_dsl.core import Cut, split_step
from lightning_dsl.core.codecs import get_codec
from lightning_dsl.core.heads import build_aux_head
from lightning_dsl.core.memory import SavedTensorTracker, state_tensors
from lightning_dsl.core.sequence import Activation, MaskedSequence, values_of
from lightning_dsl.core.split import cut_units
from lightning_dsl.cuts import LinkSpeed, network_flops, plan_cuts, recommend
from lightning_dsl.models import create_model

NETWORKS = {"resnet20": (3, 32, 32), "small_cnn": (1, 8, 8)}


def linear_head(z: Activation) -> nn.Module:
    return build_aux_head("linear", values_of(z).shape[1:], 10, sequence=isinstance(z, MaskedSequence))


def measured_step(units: list[nn.Module], k: int, mode: str, codec: str, x: Activation, y: torch.Tensor) -> tuple:
    """Peak saved bytes (client, server, step) of one real split step at cut ``k``, by the package's tracker."""
    client, server = nn.Sequential(*units[:k]), nn.Sequential(*units[k:])
    with torch.no_grad():
        z = client(x)
    head = linear_head(z)
    tracker = SavedTensorTracker(exclude=state_tensors(client, server, head))

    @contextlib.contextmanager
    def phase(side: str) -> Iterator[None]:
        with tracker.side(side):
            yield

    def frozen(params: object) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.0)  # type: ignore[arg-type]

    split_step(
        client, server, head, x, y,
        cut=Cut(codec, codec),
        client_optimizer=frozen([*client.parameters(), *head.parameters()]),
        server_optimizer=frozen(server.parameters()),
        feedback_weight=None if mode == "dsl" else 1.0,
        phase=phase,
    )  # fmt: skip
    peaks = tracker.peak_bytes_by_side
    return peaks.get("client", 0), peaks.get("server", 0), tracker.peak_bytes


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_saved_activations_equal_real_steps_at_every_cut(network: str, codec: str) -> None:
    torch.manual_seed(0)
    units = cut_units(create_model(network, num_classes=10).train())
    x, y = torch.randn(4, *NETWORKS[network]), torch.randint(0, 10, (4,))
    plans = plan_cuts(units, x, y, linear_head, codec=get_codec(codec), grad_codec=get_codec(codec))
    assert [p.index for p in plans] == list(range(1, len(units)))
    for plan in plans:
        for mode in ("dsl", "sl"):
            want = tuple(getattr(plan, f"saved_{side}_{mode}") for side in ("client", "server", "step"))
            assert measured_step(units, plan.index, mode, codec, x, y) == want, (plan.index, mode)


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_bytes_equal_a_real_steps_traffic_at_every_cut(codec: str) -> None:
    """What ``benchmarks/cut_costs.py`` reports as bytes per batch: the planner's, equal to a real step's cut."""
    torch.manual_seed(0)
    units = cut_units(create_model("small_cnn", num_classes=10).train())
    x, y = torch.randn(4, *NETWORKS["small_cnn"]), torch.randint(0, 10, (4,))
    plans = plan_cuts(units, x, y, linear_head, codec=get_codec(codec), grad_codec=get_codec(codec))
    for plan in plans:
        client, server = nn.Sequential(*units[: plan.index]), nn.Sequential(*units[plan.index :])
        with torch.no_grad():
            head = linear_head(client(x))
        for mode in ("sl", "dsl"):
            cut = Cut(codec, codec)
            split_step(
                client, server, head, x, y,
                cut=cut,
                client_optimizer=torch.optim.SGD([*client.parameters(), *head.parameters()], lr=0.0),
                server_optimizer=torch.optim.SGD(server.parameters(), lr=0.0),
                feedback_weight=None if mode == "dsl" else 1.0,
            )  # fmt: skip
            assert cut.traffic.bytes_up == plan.bytes_up * 4, (plan.index, mode)
            assert cut.traffic.bytes_down == (plan.bytes_down * 4 if mode == "sl" else 0), (plan.index, mode)


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_a_transformer_on_padded_sequences(codec: str) -> None:
    """Every cut of the text transformer: saved bytes equal real steps, and the mask is in the bytes up."""
    torch.manual_seed(0)
    network = create_model("text_transformer", vocab_size=50, max_length=9, num_classes=10, dim=16, depth=3, heads=2)
    units = cut_units(network.train())
    ids = torch.randint(3, 50, (4, 9))
    x, y = MaskedSequence(ids, torch.arange(9) < torch.tensor([[9], [5], [2], [7]])), torch.randint(0, 10, (4,))
    plans = plan_cuts(units, x, y, linear_head, codec=get_codec(codec), grad_codec=get_codec(codec))
    assert [p.index for p in plans] == [1, 2, 3, 4]
    for plan in plans:
        for mode in ("dsl", "sl"):
            want = tuple(getattr(plan, f"saved_{side}_{mode}") for side in ("client", "server", "step"))
            assert measured_step(units, plan.index, mode, codec, x, y) == want, (plan.index, mode)
        values = 9 * 16 * 4 if codec == "none" else 9 * 16 + 8 / 4  # per sample; int8's scale and offset shared
        assert plan.bytes_up == pytest.approx(values + 9 + 8)  # + the mask (a byte per position) + the label
        assert plan.aux_head_params == 16 * 10 + 10


def test_flops_of_both_sides_add_up_to_the_networks_at_every_cut() -> None:
    units = cut_units(create_model("resnet20", num_classes=10).train())
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    total = network_flops(units, x)
    plans = plan_cuts(units, x, y, linear_head)
    for plan in plans:
        assert (plan.client_flops + plan.server_flops) * 2 == pytest.approx(total, rel=1e-9)
    assert all(a.client_flops < b.client_flops for a, b in zip(plans, plans[1:], strict=False))
    # The first unit: a 3x3 convolution 3 -> 16 channels on 32x32 (+ BN, ReLU): 2 * 27 * 16 * 1024 MACs forward,
    # the same again for the weight gradient (no input gradient for the network's input).
    assert plans[0].client_flops == 2 * (2 * 27 * 16 * 32 * 32)


def test_bytes_parameters_names_and_the_link_estimate() -> None:
    network = create_model("resnet20", num_classes=10).train()
    units = cut_units(network)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    link = LinkSpeed(bandwidth_mbps=8.0, latency_ms=10.0)
    plans = plan_cuts(units, x, y, linear_head, codec=get_codec("fp16"), names={"shallow": 4}, link=link)
    shallow = plans[3]
    assert shallow.name == "shallow" and shallow.index == 4
    assert shallow.bytes_up == 16 * 32 * 32 * 2 + 8  # fp16 activations + int64 label, per sample
    assert shallow.bytes_down == 16 * 32 * 32 * 4  # gradient codec "none": float32
    assert shallow.client_params == sum(p.numel() for u in units[:4] for p in u.parameters())
    assert shallow.aux_head_params == 16 * 10 + 10
    up_s, down_s = (b * 2 * 8 / 8e6 for b in (shallow.bytes_up, shallow.bytes_down))
    c, s = shallow.client_seconds, shallow.server_seconds
    assert shallow.sl_seconds == pytest.approx(c + s + up_s + down_s + 0.02)
    assert shallow.dsl_seconds == pytest.approx(max(c, s, up_s))


def test_recommendations_and_a_budget_smaller_than_any_client() -> None:
    units = cut_units(create_model("small_cnn", num_classes=10).train())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    plans = plan_cuts(units, x, y, linear_head)
    advice = recommend(plans, client_memory_budget_mib=1e6)
    assert advice.lowest_dsl_memory.saved_step_dsl == min(p.saved_step_dsl for p in plans)
    assert advice.deepest_within_budget is plans[-1]  # everything fits: the deepest cut
    with pytest.raises(ValueError, match=r"`--client-memory-mib`=1e-06 is smaller than the smallest client: cut 1"):
        recommend(plans, client_memory_budget_mib=1e-6)
