"""What a split run checks before it trains: the strategy's arguments, the model, the run's shape.

Every check runs in :meth:`~lightning_dsl.strategies.split.SplitStrategy.__init__` or
``setup_environment``, before any data hook or training step, and its error names the argument, the
value and what is allowed. :func:`run_config` is what every process of a run must agree on; the
start-up handshake (:func:`~lightning_dsl.distributed.handshake`) compares it across processes.

The model is checked by what the strategy uses, not by its class (the strategy does not import the
module, which registers the strategy by importing this package).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer

from lightning_dsl.core.cut import Cut
from lightning_dsl.distributed import LinkSpec

SERVER_ORDERS = ("client", "arrival")
PROCESS_GROUP_BACKENDS = (None, "gloo", "nccl")


def check_arguments(max_in_flight: Any, timeout: Any, server_order: Any, process_group_backend: Any) -> None:
    """The strategy's own arguments (see :class:`~lightning_dsl.strategies.split.SplitStrategy`)."""
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"Expected argument `max_in_flight` to be an int >= 1, but got {max_in_flight!r}.")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"Expected argument `timeout` to be a number of seconds > 0, but got {timeout!r}.")
    if server_order not in SERVER_ORDERS:
        raise ValueError(
            f"Expected argument `server_order` to be one of {list(SERVER_ORDERS)}, but got {server_order!r}."
        )
    if process_group_backend not in PROCESS_GROUP_BACKENDS:
        raise ValueError(
            "Expected argument `process_group_backend` to be 'gloo', 'nccl' or None, but got"
            f" {process_group_backend!r}."
        )


def link(name: str, mbps: float | None, latency_ms: float) -> LinkSpec | None:
    """The emulated ``uplink`` or ``downlink`` of the arguments ``<name>_mbps``, ``<name>_latency_ms`` (or none)."""
    if mbps is None and not latency_ms:
        return None
    try:
        return LinkSpec(bandwidth_mbps=mbps, latency_ms=latency_ms)
    except ValueError as err:
        raise ValueError(f"Bad emulated {name} (arguments `{name}_mbps`, `{name}_latency_ms`): {err}") from err


def check_model(model: Any) -> None:
    """The model is a split network: a :class:`~lightning_dsl.DecoupledSplitModule` (or a subclass).

    Told by its :class:`~lightning_dsl.core.cut.Cut` (the strategy replaces it with the wire), so that
    the strategy needs no import of the module class.
    """
    if not isinstance(getattr(model, "cut", None), Cut):
        raise ValueError(f"strategy='split' trains a DecoupledSplitModule, but the model is a {type(model).__name__}.")


def check_world(num_clients: int) -> None:
    """A split run has a server and at least one client."""
    if num_clients < 1:
        raise ValueError(
            "strategy='split' needs a server and at least one client: start 2 or more processes"
            " (Trainer(devices=N + 1) or torchrun --nproc-per-node=N + 1), got WORLD_SIZE=1."
        )


def check_clients(model: Any, trainer: Trainer, num_clients: int) -> None:
    """The module's and the data module's ``num_clients`` are 1 (one per process) or the run's count."""
    datamodule = getattr(trainer, "datamodule", None)
    for owner, value in (("model", model.num_clients), ("data", getattr(datamodule, "num_clients", 1))):
        if value not in (1, num_clients):
            raise ValueError(
                f"Argument `num_clients`={value} of the {owner} does not match the processes: strategy='split' runs"
                f" WORLD_SIZE - 1 = {num_clients} clients. Set num_clients to {num_clients} (or leave it at 1), or"
                f" start {value + 1} processes."
            )
    if model.client_schedule != "parallel":
        raise ValueError(
            f"Argument `client_schedule`={model.client_schedule!r} is not supported with strategy='split' (clients in"
            " separate processes train in parallel): use client_schedule='parallel'."
        )
    if num_clients > 1:
        # With several clients a process's steps differ from side to side (a client steps its optimizer once per own
        # batch, the server once per client batch, and the clients' epochs have their own lengths): a count of steps
        # or a fraction of an epoch would stop or validate the sides at different places.
        if trainer.max_steps != -1:
            raise ValueError(
                f"Trainer argument `max_steps`={trainer.max_steps} is not supported with strategy='split' and"
                f" {num_clients} clients (each side counts its own optimizer steps): use `max_epochs` and"
                " `limit_train_batches` (batches per client and epoch)."
            )
        if trainer.val_check_interval != 1.0:
            raise ValueError(
                f"Trainer argument `val_check_interval`={trainer.val_check_interval!r} is not supported with"
                f" strategy='split' and {num_clients} clients (the clients' epochs have different lengths): use"
                " val_check_interval=1.0 and `check_val_every_n_epoch`."
            )


def run_config(model: Any, trainer: Trainer, strategy: Any) -> dict[str, Any]:
    """What every process of a split run must agree on (checked at start-up, mismatches named with both values).

    ``strategy`` is the run's :class:`~lightning_dsl.strategies.split.SplitStrategy` (its ``num_clients``
    and ``server_order`` are read).
    """

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    network = model.hparams.get("network")
    return {
        "network": network if isinstance(network, str) else type(model.client).__name__,
        "client_parameters": count(model.client),
        "server_parameters": count(model.server),
        "split_index": model.split_index,
        "mode": model.mode,
        "codec": model.cut.codec.name,
        "grad_codec": model.cut.grad_codec.name,
        "num_classes": model.num_classes,
        "feedback_weight": model.feedback_weight,
        "feedback_every": model.feedback_every,
        "aggregate_every": model.aggregate_every,
        "accumulate_grad_batches": model.accumulate_grad_batches,
        "num_clients": strategy.num_clients,
        "server_order": strategy.server_order,
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "limit_train_batches": trainer.limit_train_batches,
        "limit_val_batches": trainer.limit_val_batches,
        "num_sanity_val_steps": trainer.num_sanity_val_steps,
        "val_check_interval": trainer.val_check_interval,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
    }


__all__ = [
    "PROCESS_GROUP_BACKENDS",
    "SERVER_ORDERS",
    "check_arguments",
    "check_clients",
    "check_model",
    "check_world",
    "link",
    "run_config",
]
