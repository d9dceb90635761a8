"""How a split run ends: with its reports, or, when a peer fails, with this side's checkpoint.

At the end of training each client sends the server its report (:func:`client_report`: its metrics
and its own :func:`side_summary`); the server's summary lists them under ``split/clients``, and
:class:`~lightning_dsl.callbacks.RunSummary` writes it with the run's summary.

A failure of a peer (dead, silent beyond the strategy's ``timeout``) surfaces as a
:class:`~lightning_dsl.distributed.TransportError` in any wait. The strategy's ``on_exception`` saves
this side (:func:`save_fault_checkpoint`: ``split-<role>-fault.ckpt``, beside the run's checkpoints)
while training, and ends the process with status 1 once Python has shown the error
(:func:`exit_after_error`): a peer that vanished leaves a thread blocked in gloo, and the interpreter's
normal exit would then abort.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from lightning.pytorch import Trainer
from torch import Tensor

from lightning_dsl.core.cut import Cut
from lightning_dsl.distributed import LinkSpec, Transport


def side_summary(
    transport: Transport,
    cut: Cut,
    *,
    run_name: str,
    split_rank: int,
    num_clients: int,
    max_in_flight: int,
    server_order: str,
    uplink: LinkSpec | None,
    downlink: LinkSpec | None,
) -> dict[str, Any]:
    """This process's part of the run summary: who it is, how the run is set, what it sent and received."""
    sent, received = transport.sent.values(), transport.received.values()
    return {
        "split/role": run_name,
        "split/rank": split_rank,
        "split/num_clients": num_clients,
        "split/max_in_flight": max_in_flight,
        "split/server_order": server_order,
        "split/uplink": None if uplink is None else str(uplink),
        "split/downlink": None if downlink is None else str(downlink),
        "split/wire_bytes_sent": sum(c.bytes for c in sent),
        "split/wire_payload_bytes_sent": sum(c.payload_bytes for c in sent),
        "split/wire_bytes_received": sum(c.bytes for c in received),
        "split/wire_payload_bytes_received": sum(c.payload_bytes for c in received),
        "split/cut_bytes_up": cut.traffic.bytes_up,
        "split/cut_bytes_down": cut.traffic.bytes_down,
        "split/cut_sync_bytes_up": cut.traffic.sync_bytes_up,
        "split/cut_sync_bytes_down": cut.traffic.sync_bytes_down,
    }


def client_report(run_name: str, callback_metrics: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What a client sends the server at the end of training: its scalar metrics and its summary."""
    metrics = {k: float(v) for k, v in callback_metrics.items() if not isinstance(v, Tensor) or v.numel() == 1}
    return {"run": run_name, "metrics": metrics, **summary}


def fault_checkpoint_path(trainer: Trainer, run_name: str) -> str:
    """``split-<run_name>-fault.ckpt`` in the checkpoint callback's directory (else the Trainer's root dir)."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    return os.path.join(str(dirpath) if dirpath else str(trainer.default_root_dir), f"split-{run_name}-fault.ckpt")


def save_fault_checkpoint(trainer: Trainer | None, run_name: str) -> None:
    """Save this side's checkpoint when ``trainer`` is fitting; say where (or why not) on stderr."""
    if trainer is None or trainer.state.fn != "fit":
        return
    path = fault_checkpoint_path(trainer, run_name)
    try:
        trainer.save_checkpoint(path)
        print(f"[{run_name}] saved a checkpoint of this side to {path}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 (the original error matters more)
        print(f"[{run_name}] could not save a fault checkpoint: {err}", file=sys.stderr)


def exit_after_error(code: int = 1) -> None:
    """Leave with ``code`` once Python has shown the error (``atexit`` runs after the traceback)."""
    atexit.register(_exit_now, code)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["client_report", "exit_after_error", "fault_checkpoint_path", "save_fault_checkpoint", "side_summary"]
