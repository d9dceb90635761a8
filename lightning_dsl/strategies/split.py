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

The class reads in the order of its life, as Lightning's ``DDPStrategy`` does: who is who (ranks,
devices, launcher), ``setup_environment`` -> ``setup_distributed`` -> ``setup``, the loaders, the
collectives (none across the cut), the end, faults and ``teardown``. Its collaborators, one concept
each: :mod:`~lightning_dsl.strategies.checks` (arguments, model and run shape, the shared run
configuration), :mod:`~lightning_dsl.strategies.roles` (names from the launch environment),
:mod:`~lightning_dsl.strategies.loaders` (what each side iterates) and :mod:`~lightning_dsl.strategies.endings`
(its reports at the end, and a peer that fails).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ParallelStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from torchmetrics import Metric

from lightning_dsl.distributed import (
    SERVER,
    Kind,
    Message,
    Transport,
    TransportError,
    handshake,
    process_group_timeout,
)
from lightning_dsl.distributed.cut import WireCut
from lightning_dsl.distributed.pool import RemoteClientPool
from lightning_dsl.strategies.checks import (
    SERVER_ORDERS,
    check_arguments,
    check_clients,
    check_model,
    check_world,
    link,
    run_config,
)
from lightning_dsl.strategies.endings import client_report, exit_after_error, save_fault_checkpoint, side_summary
from lightning_dsl.strategies.loaders import ServerLoader, announce, without_data
from lightning_dsl.strategies.roles import process_name, role_name, run_group

_check_clients = check_clients  # the name this module had for it


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
        check_arguments(max_in_flight, timeout, server_order, process_group_backend)
        self.max_in_flight, self.timeout, self.server_order = max_in_flight, float(timeout), server_order
        self.uplink = link("uplink", uplink_mbps, uplink_latency_ms)
        self.downlink = link("downlink", downlink_mbps, downlink_latency_ms)
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
        return role_name(self.split_rank)

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
        model: Any = self.lightning_module
        check_model(model)
        check_world(self.num_clients)
        trainer = model.trainer
        check_clients(model, trainer, self.num_clients)
        for module in model.modules():  # torchmetrics would all-gather across the group: each side computes its own
            if isinstance(module, Metric):
                module.sync_on_compute = False
                module.dist_sync_on_step = False
        model.cut = WireCut.replacing(model.cut, self.role == "server", evaluator=self.split_rank in (SERVER, 1))
        model.clients = RemoteClientPool(self.num_clients, model.aggregate_every, self.role == "server")
        if self.role == "server":
            without_data(trainer, self)

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
        return client_report(self.run_name, model.trainer.callback_metrics, self.summary(merge=False))

    def summary(self, merge: bool = True) -> dict[str, Any]:
        """This process's part of the run summary (``RunSummary`` adds it); the server's has its clients' reports."""
        if self.transport is None:
            return dict(self._summary)
        summary = side_summary(
            self.transport,
            self.cut,
            run_name=self.run_name,
            split_rank=self.split_rank,
            num_clients=self.num_clients,
            max_in_flight=self.max_in_flight,
            server_order=self.server_order,
            uplink=self.uplink,
            downlink=self.downlink,
        )
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
        save_fault_checkpoint(
            model.trainer if model is not None and model._trainer is not None else None, self.run_name
        )
        exit_after_error(1)

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


SplitStrategy.register_strategies(StrategyRegistry)
__all__ = ["SERVER_ORDERS", "SplitStrategy", "process_name", "run_config", "run_group"]
