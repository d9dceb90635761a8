"""``DecoupledSplitModule``: split learning, decoupled or conventional, as a LightningModule.

This file is the Lightning face: each hook is a few lines that hand the work to a collaborator.
The algorithm of one step is :mod:`lightning_dsl.core.step`; the checked arguments are
:mod:`lightning_dsl.core.config` (values) and :mod:`lightning_dsl.core.assembly` (network, halves, head,
codecs); the optimizers :mod:`lightning_dsl.core.optimizers`; the clients and their FedAvg rounds
:mod:`lightning_dsl.core.clients`; what the step hooks do batch by batch :mod:`lightning_dsl.loops`; the
Trainer's side :mod:`lightning_dsl.trainer_glue`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

import lightning_dsl.core.assembly as assembly
import lightning_dsl.core.optimizers as optimizers
import lightning_dsl.loops as loops
import lightning_dsl.trainer_glue as glue
from lightning_dsl.core.clients import ClientPair, ClientPool
from lightning_dsl.core.codecs import Codec, get_codec
from lightning_dsl.core.config import CLIP_ALGORITHMS, MODES, RunConfig
from lightning_dsl.core.cut import Arrival, Cut
from lightning_dsl.core.optimizers import default_optimizer
from lightning_dsl.core.peek import batch_inputs
from lightning_dsl.core.phases import PhaseHook, PhaseHooks
from lightning_dsl.core.sequence import values_of
from lightning_dsl.core.split import named_cuts, split_network
from lightning_dsl.models.registry import resolve_network
from lightning_dsl.privacy.defenses import CutPrivacy
from lightning_dsl.strategies import SplitStrategy  # noqa: F401 (registers strategy="split")

__all__ = ["CLIP_ALGORITHMS", "MODES", "DecoupledSplitModule", "default_optimizer"]


class DecoupledSplitModule(LightningModule):
    """Train a network cut in two, with the client on an auxiliary loss (``dsl``) or on the server's gradient (``sl``).

    Args:
        network: the network to cut: an ``nn.Sequential`` (cut by child index), a module with
            ``cut_units()`` (such as :class:`~lightning_dsl.models.CIFARResNet`), or the name of a
            registered model (``"resnet110"``, ...; built with ``num_classes``). ``None``: a subclass
            returns it from :meth:`build_network`.
        split_index: number of cut units on the client (``1 .. units - 1``), or a cut name the
            network defines (``"shallow"``, ``"middle"``, ``"deep"`` for the CIFAR ResNets). Required.
        mode: ``"dsl"`` (decoupled: client on its auxiliary loss, nothing comes back), ``"sl"``
            (conventional: the gradient at the cut comes back, the client update equals
            end-to-end backprop) or ``"hybrid"`` (the gradient comes back every ``feedback_every``
            batches and weighs ``feedback_weight`` in the client's update).
        num_classes: number of classes (the CLI links it from the data module).
        aux_head: ``"linear"``, ``"mlp"``, ``"conv"`` or an ``nn.Module`` taking the cut activation.
        aux_head_kwargs: options of the built-in heads: ``pool`` (pooling grid side, 1 = global
            average, 0 = none; default 1) and ``hidden`` (``"mlp"`` width; default 256).
        aux_head_lr: learning rate of the auxiliary head, in its own parameter group of the client
            optimizer (schedulers scale it like the client's). ``None`` (default): the client's.
            A head with many inputs (little pooling) can need a smaller one than the client.
        client_optimizer: optimizer callable for the client and auxiliary-head parameters.
            Default: SGD, lr 0.1, momentum 0.9, weight decay 5e-4.
        server_optimizer: optimizer callable for the server parameters. Same default.
        client_lr_scheduler: optional LR-scheduler callable for the client optimizer.
        server_lr_scheduler: optional LR-scheduler callable for the server optimizer.
        scheduler_interval: step the schedulers every ``"epoch"`` (default) or every ``"step"`` (batch).
        feedback_weight: ``hybrid`` only: λ in ``[0, 1]`` (default 0.5). 0 is exactly ``dsl``; 1 with
            ``feedback_every=1`` is exactly ``sl``.
        feedback_every: ``hybrid`` only: the gradient comes down on every k-th batch (default 1).
        codec: codec for the activations sent up (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``,
            ``"int8-channel"``).
        grad_codec: codec for the gradient sent down (``sl``/``hybrid``).
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``, used to build the auxiliary
            head with its real shapes at construction (the CLI links it from the data module).
            When ``None``, it is read at ``setup`` from the data module's ``input_shape`` or from one
            sample of the loader (``fit``, ``validate``, ``test`` or ``predict`` with plain loaders
            work too). A head passed as a module needs no shape: it is checked on the first batch.
        gradient_clip_val: clip each side's gradients (the client with its auxiliary head, the server)
            to this norm or value before its optimizer steps; ``None`` or 0: no clipping. Lightning's
            ``Trainer(gradient_clip_val=...)`` cannot be used with this module's manual optimization.
        gradient_clip_algorithm: ``"norm"`` (default: each side's total 2-norm) or ``"value"``.
        accumulate_grad_batches: step the optimizers every k batches (windows counted from each epoch's
            start; the last window of an epoch is stepped even when shorter), each loss scaled by 1/k.
            Replaces ``Trainer(accumulate_grad_batches=...)``, which manual optimization refuses.
        predict_aux_logits: ``trainer.predict`` returns, per batch, a dict ``{"logits", "aux_logits"}``
            (the split network's and the client-alone logits) instead of the split network's logits.
        num_clients: number of clients sharing the one server (default 1). With ``N > 1`` a training
            batch is a sequence of N ``(inputs, labels)`` pairs (or ``None``), one per client in client
            order, as Lightning's ``CombinedLoader`` yields for N loaders (the data modules serve that with
            their ``num_clients`` argument; see :func:`lightning_dsl.data.client_loaders`).
        client_schedule: ``"parallel"`` (SplitFed: each client has its own client half, auxiliary head and
            client optimizer; the server takes one step per client batch, in client order; the halves and
            heads are averaged by FedAvg every ``aggregate_every`` epochs and at the end of fit) or
            ``"sequential"`` (one client half and head handed from client to client; client ``i`` trains on
            its whole shard, then hands over to client ``i + 1``). Each client keeps its own optimizer
            state in both schedules; only the model travels.
        aggregate_every: ``"parallel"`` only: FedAvg every this many epochs (default 1); 0 averages only at
            the end of fit.
        evaluate_clients: ``"parallel"`` only: between a FedAvg upload and download (and between rounds),
            evaluate each client's own half and head too (``val/aux_acc/client<i>``). Costs one client
            forward per client and evaluation batch (with 10 clients at ResNet-20's shallow cut about as
            much as the epoch's training), so it grows with the clients: ``None`` (default) does it with up
            to 10 clients and not above; ``True`` always; ``False`` evaluates the aggregate only.
        privacy: a :class:`~lightning_dsl.privacy.CutPrivacy`: the client clips each sample's activation and
            adds Gaussian noise to what it sends up (``privacy/epsilon`` logged every epoch), randomizes the
            labels it sends (``privacy/label_epsilon``) and/or adds NoPeek's ``α · dCor(x, z)`` to its objective;
            applied on the client before the codec, to every batch sent up. ``None`` (default): none of it.
            From the CLI: ``--model.init_args.privacy.noise_multiplier=1.0``; a dict of its fields works too.

    Example::

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> model = DecoupledSplitModule(net, split_index=3, num_classes=10, input_shape=(1, 8, 8))
        >>> model.aux_head
        Sequential(
          (0): PoolFlatten(pool=1)
          (1): Linear(in_features=32, out_features=10, bias=True)
        )
    """

    def __init__(
        self,
        network: nn.Module | str | None = None,
        split_index: int | str | None = None,
        mode: str = "dsl",
        num_classes: int = 10,
        aux_head: str | nn.Module = "linear",
        aux_head_kwargs: dict[str, Any] | None = None,
        aux_head_lr: float | None = None,
        client_optimizer: OptimizerCallable = default_optimizer,
        server_optimizer: OptimizerCallable = default_optimizer,
        client_lr_scheduler: LRSchedulerCallable | None = None,
        server_lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        feedback_weight: float | None = None,
        feedback_every: int | None = None,
        codec: str | Codec = "none",
        grad_codec: str | Codec = "none",
        input_shape: Sequence[int] | None = None,
        num_clients: int = 1,
        client_schedule: str = "parallel",
        aggregate_every: int = 1,
        evaluate_clients: bool | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        accumulate_grad_batches: int = 1,
        predict_aux_logits: bool = False,
        privacy: CutPrivacy | None = None,
    ) -> None:
        super().__init__()
        ignore = [n for n, v in (("network", network), ("aux_head", aux_head)) if isinstance(v, nn.Module)]
        ignore += [n for n, v in (("codec", codec), ("grad_codec", grad_codec)) if isinstance(v, Codec)]
        # Optimizer and scheduler callables are code, not hyperparameters: pickled into a checkpoint they
        # make it unloadable with torch.load(weights_only=True), the default since torch 2.6. The CLI's
        # config.yaml records them; load_from_checkpoint() takes them as keyword arguments.
        ignore += ["client_optimizer", "server_optimizer", "client_lr_scheduler", "server_lr_scheduler"]
        self.save_hyperparameters(ignore=ignore + glue.fixed_by_subclass(self, inspect.currentframe()))
        self.privacy = CutPrivacy.coerce(privacy)
        if "privacy" in self.hparams and self.privacy is not None:  # plain values: checkpoints load weights_only
            self.hparams["privacy"] = self.privacy.as_dict()
        self.automatic_optimization = False

        self.config = config = RunConfig.check(
            mode=mode,
            num_classes=num_classes,
            scheduler_interval=scheduler_interval,
            num_clients=num_clients,
            client_schedule=client_schedule,
            aggregate_every=aggregate_every,
            evaluate_clients=evaluate_clients,
            feedback_weight=feedback_weight,
            feedback_every=feedback_every,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            accumulate_grad_batches=accumulate_grad_batches,
            predict_aux_logits=predict_aux_logits,
        )
        optimizers.check_factories(
            client_optimizer=client_optimizer,
            server_optimizer=server_optimizer,
            client_lr_scheduler=client_lr_scheduler,
            server_lr_scheduler=server_lr_scheduler,
        )
        self.mode, self.num_classes, self.scheduler_interval = (
            config.mode,
            config.num_classes,
            config.scheduler_interval,
        )
        self.feedback_weight, self.feedback_every = config.feedback_weight, config.feedback_every
        self.gradient_clip_val, self.gradient_clip_algorithm = config.gradient_clip_val, config.gradient_clip_algorithm
        self.accumulate_grad_batches, self.evaluate_clients = config.accumulate_grad_batches, config.evaluate_clients
        self.predict_aux_logits = config.predict_aux_logits
        self.client_optimizer, self.server_optimizer = client_optimizer, server_optimizer
        self.client_lr_scheduler, self.server_lr_scheduler = client_lr_scheduler, server_lr_scheduler
        # The clients' own halves and heads (parallel, N > 1) and their rounds; self.client / self.aux_head are
        # the aggregate (or the one shared half and head).
        self.clients = ClientPool(num_clients, client_schedule, aggregate_every)
        transform = self.privacy.mechanism(num_classes) if self.privacy is not None else None
        self.client_regularizer = self.privacy.regularizer() if self.privacy is not None else None  # NoPeek's term
        self.cut = Cut(get_codec(codec, "codec"), get_codec(grad_codec, "grad_codec"), client_transform=transform)

        if split_index is None:
            raise ValueError(
                "Argument `split_index` is required: the number of cut units on the client, or a cut name."
            )
        network = self.build_network() if network is None else resolve_network(network, num_classes)
        self.cut_names = named_cuts(network)  # {"shallow": 19, ...}: what `lightning-dsl cuts` marks
        halves = split_network(network, split_index)
        # The whole network (in a tuple: not a second registration of its modules) and its halves, to check at
        # `_build_aux_head` that the halves chained compute the network's own forward.
        self._split = halves
        self._unsplit: tuple[nn.Module, ...] = (network,)
        self.client, self.server = halves.client, halves.server
        self.split_index, self.num_units = halves.split_index, halves.num_units

        self.head_options = assembly.HeadOptions.check(aux_head, aux_head_kwargs, aux_head_lr)
        self.aux_head_lr = aux_head_lr
        # A built-in head is built by `_build_aux_head` before any optimizer exists; a user's module is the head
        # at once (its parameters exist) and is checked against the cut activation as soon as the input shape is
        # known, at the latest on the first batch. (Registered under this name too, as checkpoints always had it.)
        self._aux_head_spec = aux_head
        self.aux_head: nn.Module = aux_head if isinstance(aux_head, nn.Module) else nn.Identity()
        self._aux_head_built = False
        self._inputs_checked = False  # the first batch's inputs were checked against the head
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        if self.input_shape is not None:
            self._build_aux_head(self.input_shape)

        self._phase_hooks = PhaseHooks()  # wrapped around each side's work in a training step
        self.batches_trained = 0  # drives the hybrid feedback schedule; saved in checkpoints
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc, self.val_aux_acc = MulticlassAccuracy(num_classes), MulticlassAccuracy(num_classes)
        self.test_acc, self.test_aux_acc = MulticlassAccuracy(num_classes), MulticlassAccuracy(num_classes)
        # Each client's own half + head on the evaluation data, while the clients differ from their average.
        replicas = num_clients if self.clients.has_replicas else 0
        self.val_client_aux_acc = nn.ModuleList(MulticlassAccuracy(num_classes) for _ in range(replicas))
        self.test_client_aux_acc = nn.ModuleList(MulticlassAccuracy(num_classes) for _ in range(replicas))

    # ------------------------------------------------------------------ construction
    def build_network(self) -> nn.Module:
        """Return the network to cut when none is passed in. Override this in a subclass."""
        raise ValueError(
            "Argument `network` is None and build_network() is not overridden: pass `network=` (an nn.Sequential,"
            " a module with `cut_units()`, or a registered model name) or subclass and override build_network()."
        )

    def _build_aux_head(self, input_shape: Sequence[int]) -> None:
        """Build (or check) the auxiliary head for the cut activation of inputs of ``input_shape``."""
        z = assembly.probe_cut_activation(self.client, self.split_index, input_shape)
        if self._unsplit:
            assembly.check_halves(self._unsplit[0], self._split, input_shape)
            self._unsplit = ()  # checked once; the halves own the network's modules from here on
        assembly.check_cut_codecs(self.cut, values_of(z).dtype, self.mode)
        head = self.head_options.build(z, self.num_classes)
        assembly.check_network_output(self.server, z, self.num_classes)
        self.aux_head = head
        self.input_shape = tuple(int(s) for s in input_shape)
        if "input_shape" in self.hparams:  # so load_from_checkpoint builds the same head (unless a subclass fixes it)
            self.hparams["input_shape"] = self.input_shape
        self._aux_head_built = True
        self.clients.build((self.client, self.aux_head))

    @property
    def num_clients(self) -> int:
        """Number of clients sharing the server (the pool's)."""
        return self.clients.num_clients

    @property
    def client_schedule(self) -> str:
        """``"parallel"`` or ``"sequential"`` (the pool's; the package's data modules read it)."""
        return self.clients.schedule

    @property
    def aggregate_every(self) -> int:
        """Parallel: a FedAvg round closes every this many epochs (the pool's)."""
        return self.clients.aggregate_every

    def client_pair(self, index: int) -> ClientPair:
        """Client ``index``'s half and auxiliary head (the shared ones with one client or the sequential schedule)."""
        return self.clients.pair(index, (self.client, self.aux_head))

    def feedback_weight_at(self, batch: int) -> float | None:
        """λ for the ``batch``-th training batch (0-based), or ``None`` for a decoupled step."""
        return self.config.feedback_weight_at(batch)

    def setup(self, stage: str) -> None:
        """Build the auxiliary head from the data when ``input_shape`` was not given; check the data fits."""
        if self._trainer is not None:
            glue.check_trainer_fits(
                self.trainer, self.num_classes, self.mode, lambda d: assembly.check_cut_codecs(self.cut, d, self.mode)
            )
        if not self._aux_head_built:
            # A user's head waits for a batch; a server in its own process has no data (a client tells it the shape).
            may_peek = not self.head_options.is_module and "client" in self.cut.sides
            shape = glue.input_shape_from_data(self._trainer, stage, may_peek)
            if shape is not None:
                self._build_aux_head(shape)
        if self._trainer is not None and stage == "fit":
            glue.refuse_cycled_client_loaders(self.trainer, self.num_clients)
            glue.allow_partial_backward(self.trainer)

    def configure_callbacks(self) -> list[Any]:
        """No callbacks of its own; the earliest hook of a Trainer run refuses the Trainer flags it cannot honour."""
        glue.refuse_trainer_flags(self.trainer)
        return []

    def _check_aux_head_on(self, batch: Any) -> None:
        """Build or check the head on the first batch's inputs: a user's head waits for them; a built one must fit."""
        if self._inputs_checked:
            return
        inputs = batch_inputs(batch)
        if inputs is None:
            return
        if not self._aux_head_built:
            self._build_aux_head(inputs.shape[1:])
        elif isinstance(inputs, Tensor) and tuple(inputs.shape[1:]) != self.input_shape:
            assembly.check_head_fits_inputs(
                self.client, self.aux_head, self.split_index, inputs.shape[1:], self.input_shape, self.num_classes
            )
        self._inputs_checked = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._check_aux_head_on(batch)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        self._check_aux_head_on(batch)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        self._check_aux_head_on(batch)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        self._check_aux_head_on(batch)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        """The optimizers, in this fixed order (checkpoints restore them by position): client + aux head, server.

        With ``num_clients = N``: one client optimizer per client (clients 0 .. N-1), then the server's. The
        parameter groups are named by side (``client``, ``aux_head``, ``server``; ``client<i>``, ``aux_head<i>``
        with several clients), so ``LearningRateMonitor`` logs ``lr/client``, ``lr/server``, ...
        """
        pairs = [self.client_pair(i) for i in range(self.num_clients)]
        built = optimizers.build_optimizers(
            pairs, self.server, self.client_optimizer, self.server_optimizer, self.aux_head_lr
        )
        interval = self.scheduler_interval
        return built, optimizers.build_schedulers(built, self.client_lr_scheduler, self.server_lr_scheduler, interval)

    def _step_schedulers(self) -> None:
        found = self.lr_schedulers()
        schedulers = [] if found is None else found if isinstance(found, list) else [found]
        optimizers.step_schedulers(schedulers, self.trainer.callback_metrics.get("val/loss"))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping side's gradients (after AMP's unscaling, which Lightning does before this hook)."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    # ------------------------------------------------------------------ phases (memory accounting hooks in here)
    def add_phase_hook(self, hook: PhaseHook) -> None:
        """Register ``hook(side)``, a context-manager factory wrapped around each side's work in a training step."""
        self._phase_hooks.append(hook)

    def remove_phase_hook(self, hook: PhaseHook) -> None:
        """Unregister a hook added with :meth:`add_phase_hook`."""
        if hook in self._phase_hooks:
            self._phase_hooks.remove(hook)

    # ------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        """The split network's prediction: ``server(client(x))``."""
        return self.server(self.client(x))

    def criterion(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss of both sides (cross-entropy). Override for another task."""
        return nn.functional.cross_entropy(logits, labels)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """One split step per client batch, in client order (see :func:`lightning_dsl.loops.train_batch`)."""
        return loops.train_batch(self, batch, batch_idx)

    def validation_step(self, batch: Sequence[Tensor] | Arrival, batch_idx: int) -> None:  # noqa: D102
        loops.evaluate_batch(self, batch, "val")

    def test_step(self, batch: Sequence[Tensor] | Arrival, batch_idx: int) -> None:  # noqa: D102
        loops.evaluate_batch(self, batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor | dict[str, Tensor]:
        """The split network's logits (see :func:`lightning_dsl.loops.predict_batch`)."""
        return loops.predict_batch(self, batch)

    # ------------------------------------------------------------------ many clients
    def on_train_epoch_start(self) -> None:  # noqa: D102
        self.clients.start_of_epoch((self.client, self.aux_head), self.cut)  # a pending average goes down

    def on_train_epoch_end(self) -> None:  # noqa: D102
        if self.scheduler_interval == "epoch":
            self._step_schedulers()

    def on_train_end(self) -> None:  # noqa: D102
        self.clients.finish((self.client, self.aux_head), self.cut, loops.trained_shard_sizes(self))

    def aggregate_clients(self) -> None:
        """FedAvg of the clients' halves and heads (BatchNorm statistics included), weighted by shard size.

        The average becomes ``self.client`` / ``self.aux_head`` and is copied back to every client. The
        weights are the sizes of the clients' training datasets when the trainer's training loaders tell
        them (N loaders over sized datasets), else the samples each client trained on since the last
        aggregation. Each client's optimizer state stays as it is.
        """
        self.clients.average((self.client, self.aux_head), self.cut, loops.trained_shard_sizes(self))
        self.clients.broadcast((self.client, self.aux_head), self.cut)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        checkpoint["lightning_dsl"] = {
            "batches_trained": self.batches_trained,
            "input_shape": self.input_shape,
            **self.clients.state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        state = checkpoint.get("lightning_dsl", {})
        if self._trainer is not None and self.trainer.state.fn == "fit" and "optimizer_states" in checkpoint:
            factories = [("client_optimizer", self.client_optimizer)] * self.num_clients
            optimizers.check_saved_optimizers(
                checkpoint["optimizer_states"], [*factories, ("server_optimizer", self.server_optimizer)]
            )
        self.batches_trained = int(state.get("batches_trained", 0))
        self.clients.load_state(state)
        if not self._aux_head_built and state.get("input_shape") is not None:
            self._build_aux_head(state["input_shape"])
