"""The optimizers and LR schedulers of a split run, one set per side, in a fixed order.

Checkpoints restore optimizer states by position, so the order never changes: one client optimizer per
client (over its half and its auxiliary head), then the server's. Parameter groups are named by side so
that Lightning's ``LearningRateMonitor`` logs ``lr/client``, ``lr/aux_head``, ``lr/server``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_dsl.core.clients import ClientPair

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The default for both sides: SGD, lr 0.1, momentum 0.9, weight decay 5e-4 (the CIFAR-ResNet recipe)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def client_parameters(pair: ClientPair, head_lr: float | None) -> Any:
    """A client's half and head as one list, or as two parameter groups when the head has its own lr."""
    client, head = pair
    if head_lr is None:
        return list(client.parameters()) + list(head.parameters())
    return [{"params": list(client.parameters())}, {"params": list(head.parameters()), "lr": head_lr}]


def build_optimizers(
    pairs: Sequence[ClientPair],
    server: nn.Module,
    client_optimizer: OptimizerFactory,
    server_optimizer: OptimizerFactory,
    head_lr: float | None = None,
) -> list[torch.optim.Optimizer]:
    """One client optimizer per client pair (in client order), then the server's, their groups named by side."""
    optimizers = [client_optimizer(client_parameters(pair, head_lr)) for pair in pairs]
    optimizers.append(server_optimizer(server.parameters()))
    for index, optimizer in enumerate(optimizers[:-1]):
        suffix = str(index) if len(pairs) > 1 else ""
        name_param_groups(optimizer, (f"client{suffix}", f"aux_head{suffix}"))
    name_param_groups(optimizers[-1], ("server",))
    return optimizers


def build_schedulers(
    optimizers: Sequence[torch.optim.Optimizer],
    client_lr_scheduler: SchedulerFactory | None,
    server_lr_scheduler: SchedulerFactory | None,
    interval: str,
) -> list[dict[str, Any]]:
    """Lightning scheduler configs for the optimizers of :func:`build_optimizers` whose side has a factory.

    ``LearningRateMonitor`` logs ``"<name>/<param group name>"``: ``lr/client``, ``lr/server`` (``lr/aux_head``).
    """
    factories = [client_lr_scheduler] * (len(optimizers) - 1) + [server_lr_scheduler]
    return [
        {"scheduler": factory(optimizer), "interval": interval, "name": "lr"}
        for factory, optimizer in zip(factories, optimizers, strict=True)
        if factory is not None
    ]


def step_schedulers(schedulers: Iterable[Any], val_loss: Any = None) -> None:
    """Step each scheduler; ``ReduceLROnPlateau`` on ``val_loss``, and not at all before there is one."""
    for scheduler in schedulers:
        if isinstance(scheduler, ReduceLROnPlateau):
            if val_loss is not None:
                scheduler.step(val_loss)
        else:
            scheduler.step()


def name_param_groups(optimizer: torch.optim.Optimizer, names: Sequence[str]) -> None:
    """Name the parameter groups by side (``client``, ``aux_head``, ``server``) unless the user named them.

    ``LearningRateMonitor`` appends a group's ``name`` to its key: ``lr-SGD/client`` and ``lr-SGD-1/server``
    for optimizers without schedulers (it takes the rest from the optimizer's class), ``lr/client`` and
    ``lr/server`` with schedulers (their config's ``name``).
    """
    if len(optimizer.param_groups) <= len(names):
        for group, name in zip(optimizer.param_groups, names, strict=False):
            group.setdefault("name", name)
