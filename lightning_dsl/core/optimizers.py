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


def check_factories(**factories: Any) -> None:
    """Refuse an optimizer or scheduler *instance* (or anything not callable) where a factory is expected.

    Args:
        factories: ``argument name -> value``; ``None`` is allowed for the schedulers (no scheduler).
    """
    for name, factory in factories.items():
        if factory is None and name.endswith("lr_scheduler"):
            continue
        if callable(factory) and not isinstance(factory, torch.optim.Optimizer):
            continue
        kind = "scheduler" if name.endswith("lr_scheduler") else "optimizer"
        example = (
            "functools.partial(torch.optim.lr_scheduler.StepLR, step_size=30)"
            if kind == "scheduler"
            else "functools.partial(torch.optim.SGD, lr=0.1)"
        )
        raise ValueError(
            f"Expected argument `{name}` to be a callable that builds the {kind} (from the parameters"
            f"{' of' if kind == 'optimizer' else ', given the optimizer'}), such as {example} or class_path/init_args"
            f" in a config, but got {type(factory).__name__} {factory!r}: the module builds one {kind} per side and"
            " client itself, so it cannot take one that is already built."
        )


def check_saved_optimizers(saved: Sequence[dict[str, Any]], factories: Sequence[tuple[str, OptimizerFactory]]) -> None:
    """Refuse to resume optimizer states that the optimizers built now cannot take, before training.

    A checkpoint restores each optimizer's state by position into the optimizer the module builds now.
    When that optimizer is of another kind than the saved one (a default SGD rebuilt for a run trained with
    Adam, say), its step would fail on a missing option (``KeyError: 'momentum'``) after training started.

    Args:
        saved: the checkpoint's ``optimizer_states``, in the module's optimizer order.
        factories: per position, the module argument that builds it and its value.

    Raises:
        ValueError: naming the argument, what the checkpoint's optimizer had and what the new one needs.
    """
    probe = [nn.Parameter(torch.zeros(1))]
    for state, (name, factory) in zip(saved, factories, strict=False):
        groups = state.get("param_groups") or [{}]
        try:
            optimizer = factory(probe)
        except Exception:  # a factory that wants more than a list of parameters: the resume itself will tell
            continue
        # What `load_state_dict` leaves in a group: the saved options, with those the optimizer fills in itself.
        optimizer.__setstate__({"state": {}, "param_groups": [{**groups[0], "params": probe}]})
        missing = sorted(set(optimizer.defaults) - set(optimizer.param_groups[0]))
        if missing:
            raise ValueError(
                f"Cannot resume: the checkpoint's optimizer states were saved by an optimizer without the options"
                f" {missing} that argument `{name}` builds an optimizer with: pass the run's own optimizers"
                f" (load_from_checkpoint(path, client_optimizer=..., server_optimizer=...), or the run's --config)."
            )
