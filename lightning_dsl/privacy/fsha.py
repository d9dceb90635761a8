"""Feature-space hijacking (FSHA; Pasquini et al., CCS 2021): a malicious server, at the seam, in plain torch.

The server holds auxiliary (public) inputs from the clients' distribution and three networks of its own:
a *pilot* encoder ``f~`` with the client half's input and output shapes, a *decoder* ``z -> x`` and a
*discriminator* ``D`` on cut activations. On every training batch that arrives it

1. computes the **hijacking gradient** ``d mean(D(z)) / dz`` at the activations ``z`` it received (before
   any of its networks change in this step) and sends it down *in place of* the task gradient, so the
   client learns to map its inputs where ``D`` cannot tell them from the pilot's features;
2. trains pilot and decoder as an autoencoder on an auxiliary batch of the same size (MSE);
3. trains ``D`` to tell ``f~(x_aux)`` from ``z`` (WGAN loss with gradient penalty, weight 100 by default).

Once the client's features live in the pilot's space, ``decoder(z)`` reconstructs the client's private
inputs. :class:`FeatureSpaceHijacking` is a :class:`~lightning_dsl.core.cut.CutTap`: it sees what arrives
with :meth:`~FeatureSpaceHijacking.arrived` and replaces what is sent down with
:meth:`~FeatureSpaceHijacking.sending_down`. In decoupled training nothing is sent down, so the same
algorithm runs and the hijacking gradient reaches nobody.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsl.core.cut import CutTap, Gradient
from lightning_dsl.core.sequence import Activation, values_of

_WIDTH = 128  # channels of the default decoder and discriminator


class FeatureSpaceHijacking(CutTap):
    """The FSHA server: pilot encoder, decoder and discriminator, trained on the batches that arrive.

    Args:
        pilot: the encoder ``f~`` (inputs to cut activations, the client half's shapes).
        decoder: cut activations to inputs.
        discriminator: cut activations to one score per sample (a WGAN critic: no BatchNorm).
        public_inputs: the attacker's auxiliary inputs, ``(N, *input_shape)``, disjoint from the clients' data.
        lr: Adam learning rate of pilot and decoder.
        discriminator_lr: Adam learning rate of the discriminator.
        gradient_penalty_weight: weight of the WGAN-GP gradient penalty in the discriminator's loss.
        seed: seeds the auxiliary batches and the penalty's interpolation (the global RNG is left alone).

    Attributes:
        active: the tap acts only while this is true (off: the server is honest again, nothing is trained).
        steps: training batches the attack has seen.
        reconstructions: per client, ``decoder(z)`` of the last batch that arrived (detached).
        hijacking_gradients: per client, the last hijacking gradient computed (detached), sent down or not.
        sent_down: hijacking gradients that replaced a gradient going down.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> client = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        >>> attack = FeatureSpaceHijacking.for_client(client, torch.randn(16, 1, 8, 8))
        >>> z = client(torch.randn(5, 1, 8, 8)).detach()
        >>> attack.arrived(z, torch.zeros(5, dtype=torch.long), reply=True)
        >>> attack.sending_down(torch.zeros_like(z)).shape  # the task gradient is replaced
        torch.Size([5, 4, 8, 8])
        >>> attack.reconstructions[0].shape
        torch.Size([5, 1, 8, 8])
    """

    def __init__(
        self,
        pilot: nn.Module,
        decoder: nn.Module,
        discriminator: nn.Module,
        public_inputs: Tensor,
        *,
        lr: float = 1e-4,
        discriminator_lr: float = 1e-4,
        gradient_penalty_weight: float = 100.0,
        seed: int = 0,
    ) -> None:
        check_options(lr, discriminator_lr, gradient_penalty_weight)
        if not isinstance(public_inputs, Tensor) or not public_inputs.is_floating_point() or len(public_inputs) < 1:
            found = (
                f"dtype {public_inputs.dtype}, {len(public_inputs)} rows"
                if isinstance(public_inputs, Tensor)
                else type(public_inputs).__name__
            )
            raise ValueError(
                f"Expected argument `public_inputs` to be a non-empty float tensor of inputs, but got {found}."
            )
        self.pilot, self.decoder, self.discriminator = pilot, decoder, discriminator
        self.public_inputs = public_inputs.detach()
        self.gradient_penalty_weight = float(gradient_penalty_weight)
        self.autoencoder_optimizer = torch.optim.Adam([*pilot.parameters(), *decoder.parameters()], lr=lr)
        self.discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=discriminator_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.active = True
        self.steps = 0
        self.sent_down = 0
        self.reconstructions: dict[int, Tensor] = {}
        self.hijacking_gradients: dict[int, Tensor] = {}

    @classmethod
    def for_client(
        cls, client: nn.Module, public_inputs: Tensor, seed: int = 0, **kwargs: Any
    ) -> FeatureSpaceHijacking:
        """The attack against ``client`` with the default networks (:func:`default_networks`), seeded by ``seed``."""
        pilot, decoder, discriminator = default_networks(client, public_inputs[:2], seed)
        return cls(pilot, decoder, discriminator, public_inputs, seed=seed, **kwargs)

    def modules(self) -> Iterator[nn.Module]:
        """Pilot, decoder and discriminator."""
        yield from (self.pilot, self.decoder, self.discriminator)

    def to(self, device: torch.device | str) -> FeatureSpaceHijacking:
        """Move the networks and their optimizers' state to ``device`` (the auxiliary inputs stay where they are)."""
        for module in self.modules():
            module.to(device)
        for optimizer in (self.autoencoder_optimizer, self.discriminator_optimizer):
            for state in optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, Tensor) and key != "step":
                        state[key] = value.to(device)
        return self

    # ------------------------------------------------------------------ the seam
    def arrived(self, activations: Activation, labels: Tensor, client: int = 0, reply: bool = False) -> None:
        """One FSHA step on the batch ``z`` that arrived from ``client`` (while :attr:`active`)."""
        if not self.active:
            return
        z = values_of(activations).detach()
        if not z.is_floating_point():
            raise ValueError(f"FeatureSpaceHijacking needs floating-point cut activations, but got dtype {z.dtype}.")
        z = z.float()
        # Everything is computed from the networks as they are at arrival, as in the paper's single tape.
        z_leaf = z.clone().requires_grad_()
        (gradient,) = torch.autograd.grad(self.discriminator(z_leaf).mean(), z_leaf)
        self.hijacking_gradients[client] = gradient.detach()
        with torch.no_grad():
            self.reconstructions[client] = self.decoder(z).detach()
        self._train(z)
        self.steps += 1

    def sending_down(self, gradient: Gradient, client: int = 0) -> Gradient:
        """The hijacking gradient of the batch that arrived from ``client``, in place of the task gradient.

        With several tensors at the cut, the main tensor's gradient is replaced and the others are zeroed.
        """
        hijacking = self.hijacking_gradients.get(client) if self.active else None
        main = gradient if isinstance(gradient, Tensor) else gradient[0]
        if hijacking is None or hijacking.shape != main.shape:
            return gradient
        self.sent_down += 1
        if isinstance(gradient, Tensor):
            return hijacking.to(dtype=gradient.dtype)
        return (hijacking.to(dtype=main.dtype), *(torch.zeros_like(g) for g in gradient[1:]))

    def reconstruct(self, activations: Activation) -> Tensor:
        """The decoder's reconstruction of the inputs behind ``activations`` (no gradient)."""
        with torch.no_grad():
            return self.decoder(values_of(activations).detach().float())

    # ------------------------------------------------------------------ the attacker's own training
    def _train(self, z_private: Tensor) -> None:
        index = torch.randint(len(self.public_inputs), (len(z_private),), generator=self.generator)
        x_public = self.public_inputs[index].to(z_private.device)
        # Pilot and decoder: an autoencoder on the auxiliary data.
        z_public = self.pilot(x_public)
        reconstruction_loss = nn.functional.mse_loss(self.decoder(z_public), x_public)
        self.autoencoder_optimizer.zero_grad()
        reconstruction_loss.backward()
        self.autoencoder_optimizer.step()
        # Discriminator (WGAN critic): low on the pilot's features, high on the client's.
        z_public = z_public.detach()
        loss = self.discriminator(z_public).mean() - self.discriminator(z_private).mean()
        if self.gradient_penalty_weight:
            loss = loss + self.gradient_penalty_weight * self._gradient_penalty(z_private, z_public)
        self.discriminator_optimizer.zero_grad()
        loss.backward()
        self.discriminator_optimizer.step()

    def _gradient_penalty(self, z_private: Tensor, z_public: Tensor) -> Tensor:
        """WGAN-GP (Gulrajani et al., 2017): ``(||grad D||_2 - 1)^2`` at random interpolates of the two batches."""
        shape = (len(z_private),) + (1,) * (z_private.dim() - 1)
        epsilon = torch.rand(shape, generator=self.generator).to(z_private.device)
        mixed = (epsilon * z_private + (1 - epsilon) * z_public).requires_grad_()
        (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, the auxiliary sampler's state and the counters (everything a resume needs)."""
        return {
            "pilot": self.pilot.state_dict(),
            "decoder": self.decoder.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "autoencoder_optimizer": self.autoencoder_optimizer.state_dict(),
            "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "steps": self.steps,
            "sent_down": self.sent_down,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (call :meth:`to` before, not after, on another device)."""
        self.pilot.load_state_dict(state["pilot"])
        self.decoder.load_state_dict(state["decoder"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.autoencoder_optimizer.load_state_dict(state["autoencoder_optimizer"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.generator.set_state(state["generator"])
        self.steps, self.sent_down = int(state["steps"]), int(state["sent_down"])


def check_options(lr: float, discriminator_lr: float, gradient_penalty_weight: float) -> None:
    """Refuse learning rates that are not positive and a negative penalty weight, naming the argument."""
    for name, value in (("lr", lr), ("discriminator_lr", discriminator_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"Expected argument `{name}` to be a number > 0, but got {value!r}.")
    weight = gradient_penalty_weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"Expected argument `gradient_penalty_weight` to be a number >= 0, but got {weight!r}.")


# ---------------------------------------------------------------------- default networks
def default_networks(
    client: nn.Module, example_inputs: Tensor, seed: int = 0
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Pilot, decoder and discriminator for attacking ``client``, built from its shapes and seeded by ``seed``.

    * pilot: the client half's architecture with fresh weights (the attacker knows the architecture it
      hands out, or any encoder of the same shapes would do);
    * decoder: for image-shaped activations ``(C, h, w)`` and inputs ``(c, H, W)``: a 3x3 convolution, as
      many stride-2 transposed convolutions as double ``h`` up to ``H``, a resize if needed and a 3x3
      convolution to ``c`` channels; otherwise an MLP;
    * discriminator: 3x3 convolutions (stride 2 while the side is above 4) and a linear score, with
      LeakyReLU and no normalization (a WGAN-GP critic); an MLP for flat activations.

    The global RNG is left as it was. Raises ``ValueError`` for inputs that are not a float batch.
    """
    if not isinstance(example_inputs, Tensor) or not example_inputs.is_floating_point() or example_inputs.dim() < 2:
        raise ValueError(
            "Expected argument `example_inputs` to be a float batch of inputs (N, ...), but got"
            f" {getattr(example_inputs, 'dtype', type(example_inputs).__name__)}."
        )
    was_training = client.training
    client.eval()
    try:
        with torch.no_grad():
            z = values_of(client(example_inputs))
    finally:
        client.train(was_training)
    z_shape, x_shape = tuple(z.shape[1:]), tuple(example_inputs.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pilot = copy.deepcopy(client)
        for module in pilot.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return pilot.train(), _decoder(z_shape, x_shape), _discriminator(z_shape)


def _decoder(z_shape: Sequence[int], x_shape: Sequence[int]) -> nn.Module:
    if len(z_shape) == 3 and len(x_shape) == 3:
        channels, height, width = z_shape
        layers: list[nn.Module] = [nn.Conv2d(channels, _WIDTH, 3, padding=1), nn.ReLU()]
        while height * 2 <= x_shape[1]:
            layers += [nn.ConvTranspose2d(_WIDTH, _WIDTH, 4, stride=2, padding=1), nn.ReLU()]
            height, width = height * 2, width * 2
        if (height, width) != tuple(x_shape[1:]):
            layers.append(nn.Upsample(size=tuple(x_shape[1:]), mode="bilinear", align_corners=False))
        return nn.Sequential(*layers, nn.Conv2d(_WIDTH, x_shape[0], 3, padding=1))
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(z_shape), 4 * _WIDTH),
        nn.ReLU(),
        nn.Linear(4 * _WIDTH, math.prod(x_shape)),
        nn.Unflatten(1, tuple(x_shape)),
    )


def _discriminator(z_shape: Sequence[int]) -> nn.Module:
    if len(z_shape) == 3:
        channels, height, width = z_shape
        layers: list[nn.Module] = [nn.Conv2d(channels, _WIDTH, 3, padding=1), nn.LeakyReLU(0.2)]
        while height > 4:
            layers += [nn.Conv2d(_WIDTH, _WIDTH, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            height, width = (height + 1) // 2, (width + 1) // 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(_WIDTH * height * width, 1))
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(z_shape), 4 * _WIDTH), nn.LeakyReLU(0.2), nn.Linear(4 * _WIDTH, 1)
    )
