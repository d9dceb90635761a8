"""``strategy="split"``: the server and each client in their own process, over ``torch.distributed``.

Rank 0 is the server, ranks ``1..N`` the clients (client ``i`` is rank ``i + 1``), on one machine or
several: the processes come from ``torchrun`` (``--nproc-per-node``, ``--nnodes``,
``--rdzv-endpoint``) or, without it, from the Trainer itself (``devices=N + 1``), as with Lightning's
``ddp``. Every process runs the same LightningModule and Lightning loop; this strategy gives each its
side of the cut:

* the module's :class:`~lightning_dsl.core.cut.Cut` becomes a :class:`~lightning_dsl.distributed.cut.WireCut`
  (everything that crosses goes over a :class:`~lightning_dsl.distributed.Transport`, counted as it goes),
  and its client pool a :class:`~lightning_dsl.distributed.pool.RemoteClientPool` (FedAvg over the wire);
* a client trains its half and head on its own shard; the server's data hooks are never called (it
  loads no dataset) and its loops iterate :class:`~lightning_dsl.strategies.loaders.ServerLoader`;
* every process is its own Lightning run (``global_rank`` 0 for Lightning: it logs, checkpoints and
  writes its summary; there is no all-reduce between the sides); ``split_rank`` is its place in the group.

At start-up the processes check each other (:func:`~lightning_dsl.distributed.handshake`). A failure of
a peer (dead, silent beyond ``timeout``) stops the process with an error naming the peer, after a
checkpoint (``split-<role>-fault.ckpt``).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ParallelStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from torchmetrics import Metric

from lightning_dsl.distributed import (
    SERVER,
    Kind,
    LinkSpec,
    Message,
    Transport,
    TransportError,
    handshake,
    process_group_timeout,
)
from lightning_dsl.distributed.cut import WireCut
from lightning_dsl.distributed.pool import RemoteClientPool
from lightning_dsl.strategies.loaders import ServerLoader, announce

SERVER_ORDERS = ("client", "arrival")
_DATA_HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


class SplitStrategy(ParallelStrategy):
    """Split learning with the server and the clients in separate processes (``Trainer(strategy="split")``).

    Args:
        max_in_flight: messages a process may have sent to a peer and the peer not yet taken; a dsl client
            runs ahead of the server by at most this many batches (it waits only when the window is full).
        timeout: seconds any wait for a peer may last (a message, a window slot, the start-up check); then
            the process stops with an error naming the peer.
        server_order: ``"client"`` (default): the server takes each round's batches in client order, so a
            run is reproducible and equals the one-process parallel schedule; ``"arrival"``: in the order
            they arrive within a round (faster with unequal clients, not reproducible).
        uplink_mbps, uplink_latency_ms: an *emulated* client-to-server link (bandwidth in Mbit/s, latency in
            ms; :class:`~lightning_dsl.distributed.LinkSpec`); ``None``: the real link as it is.
        downlink_mbps, downlink_latency_ms: the same for server to client.
        process_group_backend: ``"gloo"`` (default on CPU) or ``"nccl"`` (default on CUDA).
    """

    strategy_name = "split"

    def __init__(
        self,
        accelerator: Any = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        max_in_flight: int = 2,
        timeout: float = 60.0,
        server_order: str = "client",
        uplink_mbps: float | None = None,
        uplink_latency_ms: float = 0.0,
        downlink_mbps: float | None = None,
        downlink_latency_ms: float = 0.0,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin)
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"Expected argument `max_in_flight` to be an int >= 1, but got {max_in_flight!r}.")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Expected argument `timeout` to be a number of seconds > 0, but got {timeout!r}.")
        if server_order not in SERVER_ORDERS:
            raise ValueError(
                f"Expected argument `server_order` to be one of {list(SERVER_ORDERS)}, but got {server_order!r}."
            )
        if process_group_backend not in (None, "gloo", "nccl"):
            raise ValueError(
                "Expected argument `process_group_backend` to be 'gloo', 'nccl' or None, but got"
                f" {process_group_backend!r}."
            )
        self.max_in_flight, self.timeout, self.server_order = max_in_flight, float(timeout), server_order
        self.uplink = _link("uplink", uplink_mbps, uplink_latency_ms)
        self.downlink = _link("downlink", downlink_mbps, downlink_latency_ms)
        self._process_group_backend = process_group_backend
        self._num_nodes = 1
        self.transport: Transport | None = None
        self.client_reports: list[dict[str, Any]] = []
        self._summary: dict[str, Any] = {}
        self._failed = False

    # ------------------------------------------------------------------ who is who
    @property
    def split_rank(self) -> int:
        """This process's rank in the split run: 0 is the server, ``i + 1`` is client ``i``."""
        return self.cluster_environment.global_rank() if self.cluster_environment is not None else 0

    @property
    def num_clients(self) -> int:
        """Clients in the run: the process group's size minus the server."""
        world = self.cluster_environment.world_size() if self.cluster_environment is not None else 1
        return world - 1

    @property
    def role(self) -> str:
        """``"server"`` or ``"client"``."""
        return "server" if self.split_rank == SERVER else "client"

    @property
    def client_index(self) -> int | None:
        """This client's index (``None`` on the server); the package's data modules serve its shard."""
        return None if self.split_rank == SERVER else self.split_rank - 1

    @property
    def run_name(self) -> str:
        """``server`` or ``client<i>``: the role in loggers' names and files."""
        return "server" if self.client_index is None else f"client{self.client_index}"

    @property
    def local_rank(self) -> int:
        """0: every process prepares its own data (the server none); :attr:`root_device` picks the device."""
        return 0

    @property
    def global_rank(self) -> int:
        """0: every process of a split run is its own Lightning run (it logs, checkpoints, writes its summary)."""
        return 0

    @property
    def world_size(self) -> int:
        """1, for Lightning: nothing is all-reduced between the sides."""
        return 1

    @property
    def is_distributed(self) -> bool:
        """False for Lightning: no distributed sampler (each client has its own data), no metric sync."""
        return False

    @property
    def root_device(self) -> torch.device:  # noqa: D102
        devices = self.parallel_devices or [torch.device("cpu")]
        local = self.cluster_environment.local_rank() if self.cluster_environment is not None else 0
        return devices[local % len(devices)]

    @property
    def num_nodes(self) -> int:  # noqa: D102
        return self._num_nodes

    @num_nodes.setter
    def num_nodes(self, num_nodes: int) -> None:
        self._num_nodes = num_nodes

    @property
    def num_processes(self) -> int:
        """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, else the Trainer's ``devices``."""
        if "LOCAL_WORLD_SIZE" in os.environ:
            return int(os.environ["LOCAL_WORLD_SIZE"])
        return len(self.parallel_devices) if self.parallel_devices else 1

    def model_to_device(self) -> None:  # noqa: D102
        assert self.model is not None
        self.model.to(self.root_device)

    @property
    def cut(self) -> Any:
        """The module's cut (a :class:`WireCut` once set up)."""
        return self.lightning_module.cut  # type: ignore[union-attr]

    def set_world_ranks(self) -> None:  # noqa: D102
        env = self.cluster_environment
        if env is not None:
            if "LOCAL_WORLD_SIZE" in os.environ:  # torchrun: its node count, whatever the Trainer's num_nodes says
                self._num_nodes = max(1, int(os.environ.get("WORLD_SIZE", 1)) // self.num_processes)
            env.set_global_rank(self.node_rank * self.num_processes + env.local_rank())
            env.set_world_size(self.num_nodes * self.num_processes)
        rank_zero_only.rank = 0  # type: ignore[attr-defined]

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        self._launcher = _SubprocessScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        """Check the run's shape and give the module its side, before any data hook runs.

        The process group is joined later, in :meth:`setup`: Lightning wraps ``prepare_data`` in a
        barrier without timeout when a group exists, which the server (it prepares no data) would not meet.
        """
        super().setup_environment()
        model = self.lightning_module
        from lightning_dsl.module import DecoupledSplitModule

        if not isinstance(model, DecoupledSplitModule):
            raise ValueError(
                f"strategy='split' trains a DecoupledSplitModule, but the model is a {type(model).__name__}."
            )
        if self.num_clients < 1:
            raise ValueError(
                "strategy='split' needs a server and at least one client: start 2 or more processes"
                " (Trainer(devices=N + 1) or torchrun --nproc-per-node=N + 1), got WORLD_SIZE=1."
            )
        trainer = model.trainer
        _check_clients(model, trainer, self.num_clients)
        for module in model.modules():  # torchmetrics would all-gather across the group: each side computes its own
            if isinstance(module, Metric):
                module.sync_on_compute = False
                module.dist_sync_on_step = False
        model.cut = WireCut.replacing(model.cut, self.role == "server", evaluator=self.split_rank in (SERVER, 1))
        model.clients = RemoteClientPool(self.num_clients, model.aggregate_every, self.role == "server")
        if self.role == "server":
            _without_data(trainer)

    def setup_distributed(self) -> None:
        """Join the process group from the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_*``); make the transport."""
        env = self.cluster_environment
        assert env is not None
        if not dist.is_initialized():
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.main_address, str(env.main_port)
            backend = self._process_group_backend or ("nccl" if self.root_device.type == "cuda" else "gloo")
            dist.init_process_group(
                backend,
                rank=env.global_rank(),
                world_size=env.world_size(),
                timeout=process_group_timeout(self.timeout),
            )
        self.transport = Transport(self.max_in_flight, self.timeout, self.uplink, self.downlink, self.root_device)
        self.cut.transport = self.transport

    def setup(self, trainer: Trainer) -> None:
        """Meet the other processes: join the group, check the configuration, tell the server the input shape.

        Then the usual set-up (optimizers, precision). The server builds its auxiliary head from the
        evaluating client's input shape (it has no data to read it from).
        """
        model = self.lightning_module
        assert model is not None
        self.setup_distributed()
        assert self.transport is not None
        handshake(self.transport, run_config(model, trainer, self))
        if self.role == "client":
            if self.split_rank == 1:
                self.transport.send(Message.from_json(Kind.HELLO, {"input_shape": model.input_shape}), SERVER)
        else:
            shape = self.transport.recv(1, expect=Kind.HELLO).json()["input_shape"]
            if not model._aux_head_built and shape is not None:  # the module's own set-up step, with the shape
                model._build_aux_head(shape)  # type: ignore[operator]
        super().setup(trainer)

    def process_dataloader(self, dataloader: Any) -> Any:
        """A client announces its loader's length to the server; the server's loops get what arrives at the cut."""
        if self.role == "server":
            return dataloader if isinstance(dataloader, ServerLoader) else ServerLoader(self)
        announce(dataloader, self)
        return dataloader

    def batch_to_device(self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0) -> Any:
        """A server's batches are markers; what they stand for arrives on this process's device already."""
        if self.role == "server":
            return batch
        return super().batch_to_device(batch, device, dataloader_idx)

    # ------------------------------------------------------------------ collectives: none across the cut
    def barrier(self, name: str | None = None) -> None:
        """Nothing to wait for: each process is its own run."""

    def broadcast(self, obj: Any, src: int = 0) -> Any:  # noqa: D102
        return obj

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:  # noqa: D102
        return tensor

    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:  # noqa: D102
        return tensor.unsqueeze(0)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: D102
        return decision

    # ------------------------------------------------------------------ the end, and faults
    def on_train_end(self) -> None:
        """Each client reports its figures to the server, whose summary merges them."""
        assert self.transport is not None
        if self.role == "client":
            self.transport.send(Message.from_json(Kind.HELLO, self._report()), SERVER)
        else:
            self.client_reports = [
                self.transport.recv(i + 1, expect=Kind.HELLO).json() for i in range(self.num_clients)
            ]

    def _report(self) -> dict[str, Any]:
        model = self.lightning_module
        assert model is not None and self.transport is not None
        metrics = {
            k: float(v)
            for k, v in model.trainer.callback_metrics.items()
            if not isinstance(v, Tensor) or v.numel() == 1
        }
        return {"run": self.run_name, "metrics": metrics, **self.summary(merge=False)}

    def summary(self, merge: bool = True) -> dict[str, Any]:
        """This process's part of the run summary (``RunSummary`` adds it); the server's has its clients' reports."""
        if self.transport is None:
            return dict(self._summary)
        sent, received = self.transport.sent.values(), self.transport.received.values()
        summary: dict[str, Any] = {
            "split/role": self.run_name,
            "split/rank": self.split_rank,
            "split/num_clients": self.num_clients,
            "split/max_in_flight": self.max_in_flight,
            "split/server_order": self.server_order,
            "split/uplink": None if self.uplink is None else str(self.uplink),
            "split/downlink": None if self.downlink is None else str(self.downlink),
            "split/wire_bytes_sent": sum(c.bytes for c in sent),
            "split/wire_payload_bytes_sent": sum(c.payload_bytes for c in sent),
            "split/wire_bytes_received": sum(c.bytes for c in received),
            "split/wire_payload_bytes_received": sum(c.payload_bytes for c in received),
            "split/cut_bytes_up": self.cut.traffic.bytes_up,
            "split/cut_bytes_down": self.cut.traffic.bytes_down,
            "split/cut_sync_bytes_up": self.cut.traffic.sync_bytes_up,
            "split/cut_sync_bytes_down": self.cut.traffic.sync_bytes_down,
        }
        if merge and self.client_reports:
            summary["split/clients"] = self.client_reports
        self._summary = summary
        return summary

    def on_predict_start(self) -> None:  # noqa: D102
        raise ValueError(
            "trainer.predict is not supported with strategy='split'; predict in one process (the same checkpoint"
            " loads there)."
        )

    def on_exception(self, exception: BaseException) -> None:
        """A peer failed: save this side's checkpoint (``split-<role>-fault.ckpt``); exit 1 after the error shows."""
        self._failed = True
        if not isinstance(exception, TransportError):
            return
        model = self.lightning_module
        trainer = model.trainer if model is not None and model._trainer is not None else None
        if trainer is not None and trainer.state.fn == "fit":
            path = os.path.join(_checkpoint_dir(trainer), f"split-{self.run_name}-fault.ckpt")
            try:
                trainer.save_checkpoint(path)
                print(f"[{self.run_name}] saved a checkpoint of this side to {path}", file=sys.stderr)
            except Exception as err:  # noqa: BLE001 (the original error matters more)
                print(f"[{self.run_name}] could not save a fault checkpoint: {err}", file=sys.stderr)
        # A peer that vanished leaves a thread blocked in gloo; the interpreter's normal exit would then
        # abort. Leave with status 1 once Python has shown the error (atexit runs after the traceback).
        atexit.register(_exit_now, 1)

    def teardown(self) -> None:
        """Close the transport (bounded by ``timeout``) and leave the process group.

        After a peer failed the group is left as it is: destroying it would wait on the dead peer, and the
        process leaves with ``os._exit`` (see :meth:`on_exception`).
        """
        if self.transport is not None:
            try:
                self.transport.close(timeout=5.0 if self._failed else self.timeout)
            except TransportError as err:
                if not self._failed:
                    raise
                print(f"[{self.run_name}] {err}", file=sys.stderr)
            self.summary()  # kept for the run summary, written after the teardown
            self.transport = None
        if dist.is_initialized() and not self._failed:
            dist.destroy_process_group()
        super().teardown()

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:  # noqa: D102
        strategy_registry.register(
            cls.strategy_name, cls, description="Split learning: server (rank 0) and clients in separate processes"
        )


def process_name(devices: Any = None) -> str:
    """``server`` or ``client<i>`` for this process of a split run, from the launch environment.

    torchrun sets ``RANK``; the processes the Trainer starts itself (``devices=N + 1``) have ``LOCAL_RANK``
    and ``NODE_RANK`` (the first has neither: it is the server, or node ``NODE_RANK``'s first process).
    """
    if "RANK" in os.environ:
        rank = int(os.environ["RANK"])
    else:
        per_node = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
        rank = int(os.environ.get("NODE_RANK", 0)) * per_node + int(os.environ.get("LOCAL_RANK", 0))
    return "server" if rank == SERVER else f"client{rank - 1}"


def run_group() -> str:
    """An id shared by every process of one split run (W&B's ``group``).

    torchrun's ``TORCHELASTIC_RUN_ID``, else one made by the first process and inherited by the
    processes it starts (``LIGHTNING_DSL_RUN_GROUP``).
    """
    group = os.environ.get("LIGHTNING_DSL_RUN_GROUP") or os.environ.get("TORCHELASTIC_RUN_ID")
    if not group or group == "none":
        group = f"split-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    os.environ["LIGHTNING_DSL_RUN_GROUP"] = group
    return group


def run_config(model: Any, trainer: Trainer, strategy: SplitStrategy) -> dict[str, Any]:
    """What every process of a split run must agree on (checked at start-up, mismatches named with both values)."""

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


def _check_clients(model: Any, trainer: Trainer, num_clients: int) -> None:
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


def _without_data(trainer: Trainer) -> None:
    """The server loads no dataset: its data module's data hooks are replaced, on this instance only."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        return
    for hook in ("prepare_data", "setup", "teardown"):
        if is_overridden(hook, datamodule):
            setattr(datamodule, hook, lambda *args, **kwargs: None)
    strategy = trainer.strategy
    assert isinstance(strategy, SplitStrategy)
    for hook in _DATA_HOOKS:
        if is_overridden(hook, datamodule):
            setattr(datamodule, hook, lambda: ServerLoader(strategy))


def _checkpoint_dir(trainer: Trainer) -> str:
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return str(dirpath) if dirpath else str(trainer.default_root_dir)


def _link(name: str, mbps: float | None, latency_ms: float) -> LinkSpec | None:
    if mbps is None and not latency_ms:
        return None
    try:
        return LinkSpec(bandwidth_mbps=mbps, latency_ms=latency_ms)
    except ValueError as err:
        raise ValueError(f"Bad emulated {name} (arguments `{name}_mbps`, `{name}_latency_ms`): {err}") from err


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


SplitStrategy.register_strategies(StrategyRegistry)
__all__ = ["SERVER_ORDERS", "SplitStrategy", "process_name", "run_config", "run_group"]
