"""FSHA in plain torch: in sl the client gets exactly the hijacking gradient; in dsl nothing of it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from lightning_dsl.core import Cut, build_aux_head, split_step
from lightning_dsl.models import small_cnn
from lightning_dsl.privacy import FeatureSpaceHijacking, default_networks

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: threads only wait for each other


def setup(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module, Tensor, Tensor, Tensor]:
    torch.manual_seed(seed)
    net = small_cnn(width=4)
    client, server = net[:2], net[2:]
    head = build_aux_head("linear", (8, 4, 4), 10)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (6,), generator=generator)
    public = torch.randn(10, 1, 8, 8, generator=generator)
    return client, server, head, x, y, public


def step(
    client: nn.Module, server: nn.Module, head: nn.Module, x: Tensor, y: Tensor, cut: Cut, feedback: float | None
) -> None:
    optimizer = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: E731
    split_step(
        client,
        server,
        head,
        x,
        y,
        cut=cut,
        client_optimizer=optimizer(nn.ModuleList([client, head])),
        server_optimizer=optimizer(server),
        feedback_weight=feedback,
    )


def client_grads(client: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in client.parameters()]  # type: ignore[union-attr]


def test_in_sl_the_client_gets_exactly_the_hijacking_gradient_and_not_the_tasks() -> None:
    client, server, head, x, y, public = setup()
    attack = FeatureSpaceHijacking.for_client(client, public)
    client_before, server_before = copy.deepcopy(client), copy.deepcopy(server)
    critic_before = copy.deepcopy(attack.discriminator)  # the gradient is taken before the critic's own step

    step(client, server, head, x, y, Cut(taps=[attack]), feedback=1.0)

    hijacking = torch.autograd.grad(critic_before(client_before(x)).mean(), list(client_before.parameters()))
    for got, want in zip(client_grads(client), hijacking, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    task = torch.autograd.grad(
        nn.functional.cross_entropy(server_before(client_before(x)), y), list(client_before.parameters())
    )
    assert not any(torch.allclose(got, want) for got, want in zip(client_grads(client), task, strict=True))
    assert (attack.steps, attack.sent_down) == (1, 1)
    # The attacker trained: pilot, decoder and discriminator moved.
    assert not torch.equal(critic_before[0].weight, attack.discriminator[0].weight)


def test_an_inactive_attack_leaves_the_task_gradient() -> None:
    client, server, head, x, y, public = setup()
    attack = FeatureSpaceHijacking.for_client(client, public)
    attack.active = False
    client_before, server_before = copy.deepcopy(client), copy.deepcopy(server)
    step(client, server, head, x, y, Cut(taps=[attack]), feedback=1.0)
    task = torch.autograd.grad(
        nn.functional.cross_entropy(server_before(client_before(x)), y), list(client_before.parameters())
    )
    for got, want in zip(client_grads(client), task, strict=True):
        torch.testing.assert_close(got, want)
    assert attack.steps == 0


def test_in_dsl_the_client_update_is_bit_exact_the_one_without_the_attack() -> None:
    updated = []
    for attacked in (False, True):
        client, server, head, x, y, public = setup()
        attack = FeatureSpaceHijacking.for_client(client, public)
        for _ in range(3):
            step(client, server, head, x, y, Cut(taps=[attack] if attacked else []), feedback=None)
        updated.append(client.state_dict())
        assert attack.steps == (3 if attacked else 0) and attack.sent_down == 0
    for key, value in updated[0].items():
        assert torch.equal(value, updated[1][key]), key


def test_the_attack_leaves_the_global_rng_alone() -> None:
    client, *_, public = setup()
    torch.manual_seed(123)
    attack = FeatureSpaceHijacking.for_client(client, public)
    attack.arrived(client(public[:4]).detach(), torch.zeros(4, dtype=torch.long))
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))


def test_state_dict_round_trip_continues_identically() -> None:
    client, *_, public = setup()
    z = client(public[:4]).detach()
    first = FeatureSpaceHijacking.for_client(client, public, seed=1)
    first.arrived(z, torch.zeros(4, dtype=torch.long))
    second = FeatureSpaceHijacking.for_client(client, public, seed=5)  # other weights, other sampler
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for attack in (first, second):
        attack.arrived(z, torch.zeros(4, dtype=torch.long))
    assert torch.equal(first.hijacking_gradients[0], second.hijacking_gradients[0])
    assert torch.equal(first.reconstruct(z), second.reconstruct(z))
    assert second.steps == 2


@pytest.mark.parametrize(
    ("z_shape", "x_shape"),
    [((8, 4, 4), (1, 8, 8)), ((16, 32, 32), (3, 32, 32)), ((5, 3, 3), (1, 8, 8)), ((20,), (1, 8, 8))],
)
def test_default_networks_map_between_the_cuts_and_the_inputs_shapes(
    z_shape: tuple[int, ...], x_shape: tuple[int, ...]
) -> None:
    class Client(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.zeros(len(x), *z_shape) + self.scale

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

    pilot, decoder, critic = default_networks(Client(), torch.zeros(2, *x_shape))
    z = torch.randn(3, *z_shape)
    assert decoder(z).shape == (3, *x_shape)
    assert critic(z).shape == (3, 1)
    assert pilot(torch.zeros(3, *x_shape)).shape == (3, *z_shape)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules()), "a WGAN-GP critic"


def test_the_pilot_is_the_clients_architecture_with_fresh_weights() -> None:
    client, *_, public = setup()
    pilot, _, _ = default_networks(client, public[:2], seed=3)
    assert [type(m) for m in pilot.modules()] == [type(m) for m in client.modules()]
    assert not torch.equal(pilot[0][0].weight, client[0][0].weight)
    assert torch.equal(pilot[0][0].weight, default_networks(client, public[:2], seed=3)[0][0][0].weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, r"`lr` to be a number > 0, but got 0.0"),
        ({"discriminator_lr": -1}, r"`discriminator_lr` to be a number > 0, but got -1"),
        ({"gradient_penalty_weight": -0.5}, r"`gradient_penalty_weight` to be a number >= 0, but got -0.5"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, float], message: str) -> None:
    client, *_, public = setup()
    with pytest.raises(ValueError, match=message):
        FeatureSpaceHijacking.for_client(client, public, **kwargs)


def test_integer_inputs_are_refused() -> None:
    client, *_ = setup()
    with pytest.raises(ValueError, match=r"`public_inputs` to be a non-empty float tensor"):
        FeatureSpaceHijacking(client, client, client, torch.zeros(3, 4, dtype=torch.long))


def test_doctests() -> None:
    import doctest

    from lightning_dsl.core import cut
    from lightning_dsl.privacy import fsha

    for module in (fsha, cut):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
