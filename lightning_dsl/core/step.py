"""One training step of split learning, decoupled or with feedback, in plain torch.

This is the whole algorithm; the LightningModule only wires it to Lightning.

* **Decoupled** (``feedback_weight=None``, mode ``"dsl"``): the client trains on its
  auxiliary loss alone and finishes its backward and step *before* the server runs, so the
  client's graph is freed before the server's forward. The server trains on the received
  activations. Nothing comes back down.
* **One side per process**: when ``cut.sides`` is only ``{"client"}`` or ``{"server"}`` (client and
  server in separate processes), the step runs that side's part of the same algorithm: the client
  sends up and, with feedback, waits for the gradient; the server receives, trains and, with
  feedback, sends the gradient down.
* **Feedback** (``feedback_weight=λ``, modes ``"sl"`` and ``"hybrid"``): the server runs first
  on the received activations, steps, and sends the gradient at the cut back down; the
  client's gradient is ``(1 - λ) ∇ aux_loss + λ ∇ server_loss`` through the cut. ``λ = 1`` is
  conventional split learning, whose client update equals end-to-end backprop; the
  auxiliary head then trains as a probe on the detached activations and never changes the
  client.

The server shows each training batch that arrives to the cut's taps
(:class:`~lightning_dsl.core.cut.CutTap`) before its forward, in its own phase; a tap may also replace
the gradient the server sends down (:meth:`~lightning_dsl.core.cut.Cut.send_down`).

A ``client_regularizer(inputs, z)`` adds a term of the client's own to its objective (NoPeek's
``α · dCor(x, z)``): in the decoupled step to the auxiliary loss, with feedback to the client's whole
objective, unweighted by ``λ``. With a :attr:`Cut.client_transform` (clipping, noise), the gradient that
comes down is applied through the transform's deterministic part (:meth:`Cut.bound_up`).

Each optimizer gets exactly one ``zero_grad``, one backward and one ``step`` per batch, and
the client runs one forward per batch (BatchNorm statistics move once). With gradient
accumulation (:mod:`lightning_dsl.core.accumulation`) the caller skips the ``zero_grad`` or the
``step`` of the batches inside a window and scales every loss by ``loss_scale``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lightning_dsl.core.cut import Cut, Gradient
from lightning_dsl.core.sequence import Activation, grad_tensors, head_input, with_grad_tensors


class Optimizer(Protocol):
    """What the step needs of an optimizer (``torch.optim.Optimizer`` and Lightning's wrapper fit)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...  # noqa: D102

    def step(self, closure: Any = None) -> Any: ...  # noqa: D102


Phase = Callable[[str], AbstractContextManager[Any]]

Regularizer = Callable[[Activation, Activation], Tensor]
"""``regularizer(inputs, z)``: a scalar the client adds to its objective (differentiable in ``z``)."""
"""``phase("client")`` / ``phase("server")`` wraps the work of one side (memory accounting hooks in here)."""


def no_phase(side: str) -> AbstractContextManager[Any]:
    """The default phase: does nothing."""
    return contextlib.nullcontext()


@dataclass(frozen=True)
class StepOutput:
    """What one step produced, all detached.

    A process that runs one side only (:attr:`Cut.sides`) has ``None`` for the other side's values:
    a client has no ``loss``/``logits``, a server no ``aux_loss``/``aux_logits``.
    """

    loss: Tensor | None
    aux_loss: Tensor | None
    logits: Tensor | None
    aux_logits: Tensor | None
    labels: Tensor
    feedback: bool
    client_penalty: Tensor | None = None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by a constant on the way back."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(activation: Activation, scale: float) -> Activation:
    """``activation`` in the forward pass; its gradient times ``scale`` in the backward pass.

    ``scale == 1`` returns ``activation`` and ``scale == 0`` a detached copy, so the two limits
    are exactly "full gradient" and "no gradient". A :class:`~lightning_dsl.core.sequence.MaskedSequence`
    has its ``values`` scaled and keeps its mask; :class:`~lightning_dsl.core.cut_tensors.CutTensors` has each
    floating-point tensor scaled.
    """
    if scale == 1.0:
        return activation
    if scale == 0.0:
        return activation.detach()
    return with_grad_tensors(activation, [_ScaleGrad.apply(t, scale) for t in grad_tensors(activation)])


def split_step(
    client: nn.Module,
    server: nn.Module,
    aux_head: nn.Module,
    inputs: Activation | None,
    labels: Tensor | None,
    *,
    cut: Cut,
    client_optimizer: Optimizer,
    server_optimizer: Optimizer,
    criterion: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    backward: Callable[[Tensor], None] = Tensor.backward,
    feedback_weight: float | None = None,
    phase: Phase = no_phase,
    client_index: int = 0,
    zero_grad: bool = True,
    step_optimizers: bool = True,
    loss_scale: float = 1.0,
    client_regularizer: Regularizer | None = None,
) -> StepOutput:
    """Train client, auxiliary head and server on one batch.

    Args:
        client: the layers before the cut.
        server: the layers after the cut.
        aux_head: the auxiliary classifier on the cut activation (stepped by ``client_optimizer``).
        inputs: the batch's inputs (on the client; ``None`` on a server in another process).
        labels: the batch's labels (sent up with the activations; ``None`` on a server in another process).
        cut: the seam everything crossing between the sides passes through.
        client_optimizer: optimizer over the client's and the auxiliary head's parameters.
        server_optimizer: optimizer over the server's parameters.
        criterion: loss on (logits, labels), used on both sides.
        backward: how to run a backward pass on a scalar loss (Lightning's ``manual_backward``).
        feedback_weight: ``None`` for a decoupled step; ``λ`` in ``[0, 1]`` for a step where the
            server's gradient comes back down and weighs ``λ`` in the client's update.
        phase: context-manager factory wrapped around each side's work.
        client_index: which client this is (its link on the cut), when many clients share the server.
        zero_grad: zero both optimizers' gradients first (``False`` inside an accumulation window).
        step_optimizers: step both optimizers (``False`` until an accumulation window closes).
        loss_scale: factor on each loss before its backward (``1 / k`` when accumulating ``k``
            batches). The gradient sent down stays the gradient of the server's unscaled loss, so
            what crosses the cut does not depend on the accumulation.
        client_regularizer: ``regularizer(inputs, z)``, a term added to the client's objective (scaled by
            ``loss_scale`` like the rest); its value is returned as ``client_penalty``.
    """
    step = _Step(
        client,
        server,
        aux_head,
        cut,
        client_optimizer,
        server_optimizer,
        criterion,
        backward,
        phase,
        client_index,
        zero_grad,
        step_optimizers,
        loss_scale,
        client_regularizer,
    )
    if feedback_weight is None:
        return step.decoupled(inputs, labels)
    return step.with_feedback(inputs, labels, feedback_weight)


@dataclass(frozen=True)
class _Step:
    """The two sides, the cut and the optimizers of one step."""

    client: nn.Module
    server: nn.Module
    aux_head: nn.Module
    cut: Cut
    client_optimizer: Optimizer
    server_optimizer: Optimizer
    criterion: Callable[[Tensor, Tensor], Tensor]
    backward: Callable[[Tensor], None]
    phase: Phase
    client_index: int = 0
    zero_grad: bool = True
    step_optimizers: bool = True
    loss_scale: float = 1.0
    client_regularizer: Regularizer | None = None

    def _zero_grad(self, optimizer: Optimizer) -> None:
        if self.zero_grad:
            optimizer.zero_grad()

    def _step(self, optimizer: Optimizer) -> None:
        if self.step_optimizers:
            optimizer.step()

    def _scaled(self, loss: Tensor) -> Tensor:
        return loss if self.loss_scale == 1.0 else loss * self.loss_scale

    def _penalty(self, inputs: Activation, z: Activation) -> Tensor | None:
        return None if self.client_regularizer is None else self.client_regularizer(inputs, z)

    @property
    def runs_client(self) -> bool:
        return "client" in self.cut.sides

    @property
    def runs_server(self) -> bool:
        return "server" in self.cut.sides

    def decoupled(self, inputs: Activation | None, labels: Tensor | None) -> StepOutput:
        """Client on its auxiliary loss, finished before the server starts; nothing comes down."""
        aux_loss = aux_logits = loss = logits = arrived = penalty = None
        if self.runs_client:
            assert inputs is not None and labels is not None
            with self.phase("client"):
                self._zero_grad(self.client_optimizer)
                z = self.client(inputs)
                aux_logits = self.aux_head(head_input(z))  # several tensors at the cut: the named module's output
                aux_loss = self.criterion(aux_logits, labels)
                penalty = self._penalty(inputs, z)
                objective = aux_loss if penalty is None else aux_loss + penalty
                self.backward(self._scaled(objective))  # frees the client's graph: nothing of it is alive afterwards
                self._step(self.client_optimizer)
                arrived = self.cut.send_up(z.detach(), labels, self.client_index)
                del z
        if self.runs_server:
            arrived = arrived or self.cut.receive_up(self.client_index)
            loss, logits, _ = self._server(*arrived, feedback=False)
        assert arrived is not None
        return _output(loss, aux_loss, logits, aux_logits, arrived[1], False, penalty)

    def with_feedback(self, inputs: Activation | None, labels: Tensor | None, weight: float) -> StepOutput:
        """Server first; its gradient at the cut comes down and weighs ``weight`` in the client's update."""
        aux_loss = aux_logits = loss = logits = arrived = gradient = penalty = None
        if self.runs_client:
            assert inputs is not None and labels is not None
            with self.phase("client"):
                self._zero_grad(self.client_optimizer)
                z = self.client(inputs)
                # The head always learns from the full auxiliary gradient; only its share in the client's
                # update is (1 - λ). At λ = 1 the head sees z.detach(): a probe that cannot touch the client.
                aux_logits = self.aux_head(head_input(scale_grad(z, 1.0 - weight)))
                aux_loss = self.criterion(aux_logits, labels)
                penalty = self._penalty(inputs, z)
                arrived = self.cut.send_up(z.detach(), labels, self.client_index, reply=True)
        if self.runs_server:
            arrived = arrived or self.cut.receive_up(self.client_index)
            loss, logits, gradient = self._server(*arrived, feedback=True)
        if self.runs_client:
            assert aux_loss is not None
            with self.phase("client"):
                gradient = self.cut.receive_down(self.client_index) if gradient is None else gradient
                gradients = (gradient,) if isinstance(gradient, Tensor) else gradient
                # One backward for both terms: d/dz of sum(z * g) is exactly g, so the client receives
                # λ ∇_z(server loss) plus (1 - λ) ∇(aux loss) through the scaled branch; with several tensors
                # at the cut, each one's gradient through its own term. The gradient is the server's at what was
                # sent: it reaches z through the client transform's clip (bound_up).
                terms = [
                    (t * (g.detach() if weight == 1.0 else weight * g.detach())).sum()
                    for t, g in zip(grad_tensors(self.cut.bound_up(z)), gradients, strict=True)
                ]
                objective = aux_loss + (terms[0] if len(terms) == 1 else torch.stack(terms).sum())
                self.backward(self._scaled(objective if penalty is None else objective + penalty))
                self._step(self.client_optimizer)
        assert arrived is not None
        return _output(loss, aux_loss, logits, aux_logits, arrived[1], True, penalty)

    def _server(self, z_up: Activation, labels_up: Tensor, feedback: bool) -> tuple[Tensor, Tensor, Gradient | None]:
        """The server's step on what arrived; with ``feedback`` the gradient at the cut is sent down (and returned)."""
        with self.phase("server"):
            self.cut.tap_arrival(z_up, labels_up, self.client_index, reply=feedback)  # the server's observers
            self._zero_grad(self.server_optimizer)
            # With feedback the server needs d(loss)/dz: the activation (a sequence's values, each floating-point
            # tensor of several) becomes a leaf.
            leaves = [t.detach().requires_grad_() for t in grad_tensors(z_up)] if feedback else []
            logits = self.server(with_grad_tensors(z_up, leaves) if feedback else z_up)
            loss = self.criterion(logits, labels_up)
            self.backward(self._scaled(loss))
            self._step(self.server_optimizer)
            if not feedback:
                return loss, logits, None
            # What goes down is the gradient of the server's own loss, whatever the accumulation. A tensor the
            # server's loss does not depend on gets a zero gradient (it still crossed, so it is answered).
            grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
            if self.loss_scale != 1.0:
                grads = [g / self.loss_scale for g in grads]
            del leaves
            gradient: Gradient = grads[0] if len(grads) == 1 else tuple(grads)
            return loss, logits, self.cut.send_down(gradient, self.client_index)


def _output(
    loss: Tensor | None,
    aux_loss: Tensor | None,
    logits: Tensor | None,
    aux_logits: Tensor | None,
    labels: Tensor,
    feedback: bool,
    penalty: Tensor | None = None,
) -> StepOutput:
    def detached(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.detach()

    return StepOutput(
        detached(loss), detached(aux_loss), detached(logits), detached(aux_logits), labels, feedback, detached(penalty)
    )
