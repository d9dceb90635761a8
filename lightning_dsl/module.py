"""``DecoupledSplitModule``: split learning, decoupled or conventional, as a LightningModule.

The algorithm of one step lives in :mod:`lightning_dsl.core.step`; this module wires it to
Lightning: manual optimization with two optimizers, logging, schedulers and checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics.classification import MulticlassAccuracy

from lightning_dsl.core.accumulation import Window, accumulation_window
from lightning_dsl.core.clients import ClientPair, ClientPool, client_batches, shard_sizes
from lightning_dsl.core.codecs import Codec, check_codec_dtype, get_codec
from lightning_dsl.core.cut import Arrival, Arrivals, Cut
from lightning_dsl.core.heads import HEAD_OPTIONS, HEADS, build_aux_head, check_aux_head
from lightning_dsl.core.peek import batch_inputs, peek_inputs
from lightning_dsl.core.sequence import Activation, MaskedSequence, example_inputs, values_of
from lightning_dsl.core.split import named_cuts, split_network
from lightning_dsl.core.step import StepOutput, split_step
from lightning_dsl.strategies import SplitStrategy  # noqa: F401 (registers strategy="split")
from lightning_dsl.trainer_glue import allow_partial_backward, refuse_trainer_flags, stage_loader

MODES = ("dsl", "sl", "hybrid")
CLIP_ALGORITHMS = ("norm", "value")
PhaseHook = Callable[[str], contextlib.AbstractContextManager[Any]]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The default for both sides: SGD, lr 0.1, momentum 0.9, weight decay 5e-4 (the CIFAR-ResNet recipe)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


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
            much as the epoch's training); ``False`` evaluates the aggregate only.

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
        evaluate_clients: bool = True,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        accumulate_grad_batches: int = 1,
        predict_aux_logits: bool = False,
    ) -> None:
        super().__init__()
        ignore = [n for n, v in (("network", network), ("aux_head", aux_head)) if isinstance(v, nn.Module)]
        ignore += [n for n, v in (("codec", codec), ("grad_codec", grad_codec)) if isinstance(v, Codec)]
        # Optimizer and scheduler callables are code, not hyperparameters: pickled into a checkpoint they
        # make it unloadable with torch.load(weights_only=True), the default since torch 2.6. The CLI's
        # config.yaml records them; load_from_checkpoint() takes them as keyword arguments.
        ignore += ["client_optimizer", "server_optimizer", "client_lr_scheduler", "server_lr_scheduler"]
        self.save_hyperparameters(ignore=ignore)
        self.automatic_optimization = False

        if mode not in MODES:
            raise ValueError(f"Expected argument `mode` to be one of {list(MODES)}, but got {mode!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Expected argument `num_classes` to be an int >= 2, but got {num_classes!r}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"Expected argument `scheduler_interval` to be 'epoch' or 'step', got {scheduler_interval!r}."
            )
        # The clients' own halves and heads (parallel, N > 1) and their rounds; self.client / self.aux_head are
        # the aggregate (or the one shared half and head).
        self.clients = ClientPool(num_clients, client_schedule, aggregate_every)
        if not isinstance(evaluate_clients, bool):
            raise ValueError(f"Expected argument `evaluate_clients` to be True or False, but got {evaluate_clients!r}.")
        self.evaluate_clients = evaluate_clients
        self.mode = mode
        self.num_classes = num_classes
        self.feedback_weight, self.feedback_every = _check_feedback(mode, feedback_weight, feedback_every)
        self.client_optimizer = client_optimizer
        self.server_optimizer = server_optimizer
        self.client_lr_scheduler = client_lr_scheduler
        self.server_lr_scheduler = server_lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.gradient_clip_val, self.gradient_clip_algorithm = _check_clipping(
            gradient_clip_val, gradient_clip_algorithm
        )
        accumulation_window(0, accumulate_grad_batches)  # checks the argument (an int >= 1)
        if accumulate_grad_batches > 1 and num_clients > 1:
            # Each side would accumulate its own batches: a client k of its batches, the server k client batches.
            # Until that is defined and tested against a reference, it is refused rather than guessed.
            raise ValueError(
                f"Argument `accumulate_grad_batches`={accumulate_grad_batches} is supported with one client only, but"
                f" `num_clients`={num_clients}: use accumulate_grad_batches=1 with several clients."
            )
        self.accumulate_grad_batches = accumulate_grad_batches
        self.predict_aux_logits = bool(predict_aux_logits)
        self.cut = Cut(get_codec(codec, "codec"), get_codec(grad_codec, "grad_codec"))

        if split_index is None:
            raise ValueError(
                "Argument `split_index` is required: the number of cut units on the client, or a cut name."
            )
        if network is None:
            network = self.build_network()
        elif isinstance(network, str):
            from lightning_dsl.models import create_model, list_models

            if network not in list_models():
                raise ValueError(
                    f"Expected argument `network` to be an nn.Module or a registered model name, one of"
                    f" {list_models()}, but got {network!r}."
                )
            network = create_model(network, num_classes=num_classes)
        self.cut_names = named_cuts(network)  # {"shallow": 19, ...}: what `lightning-dsl cuts` marks
        halves = split_network(network, split_index)
        self.client, self.server = halves.client, halves.server
        self.split_index, self.num_units = halves.split_index, halves.num_units

        if not isinstance(aux_head, nn.Module) and aux_head not in HEADS:
            raise ValueError(
                f"Expected argument `aux_head` to be one of {list(HEADS)} or an nn.Module, got {aux_head!r}."
            )
        if aux_head_lr is not None and (isinstance(aux_head_lr, bool) or not aux_head_lr > 0):
            raise ValueError(f"Expected argument `aux_head_lr` to be a float > 0 or None, got {aux_head_lr!r}.")
        self.aux_head_lr = aux_head_lr
        self._aux_head_spec = aux_head
        self._aux_head_kwargs = dict(aux_head_kwargs or {})
        unknown = sorted(set(self._aux_head_kwargs) - set(HEAD_OPTIONS))
        if unknown:
            raise ValueError(f"Unknown keys {unknown} in argument `aux_head_kwargs`: allowed are {list(HEAD_OPTIONS)}.")
        # A built-in head is built by `_build_aux_head` before any optimizer exists; a user's module is the head
        # at once (its parameters exist) and is checked against the cut activation by `_build_aux_head` as soon
        # as the input shape is known, at the latest on the first batch.
        self.aux_head: nn.Module = aux_head if isinstance(aux_head, nn.Module) else nn.Identity()
        self._aux_head_built = False
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        if self.input_shape is not None:
            self._build_aux_head(self.input_shape)

        self._phase_hooks: list[PhaseHook] = []
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
        z = self._probe_cut_activation(input_shape)
        values = values_of(z)
        self._check_codecs(values.dtype)
        sequence = isinstance(z, MaskedSequence)
        head = build_aux_head(
            self._aux_head_spec, values.shape[1:], self.num_classes, **self._aux_head_kwargs, sequence=sequence
        )
        if isinstance(self._aux_head_spec, str):  # a built-in head follows the network's device and dtype
            head = head.to(device=values.device, dtype=values.dtype if values.is_floating_point() else None)
        check_aux_head(head, z, self.num_classes)
        self._check_network_output(z)
        self.aux_head = head.to(values.device)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.hparams["input_shape"] = self.input_shape  # so load_from_checkpoint builds the same head
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

    def _check_codecs(self, dtype: torch.dtype) -> None:
        """Refuse a codec that cannot carry the cut's ``dtype`` (the gradient sent down has the same dtype)."""
        assert isinstance(self.cut.codec, Codec) and isinstance(self.cut.grad_codec, Codec)
        check_codec_dtype(self.cut.codec, dtype, "codec")
        if self.mode != "dsl":  # in dsl nothing is sent down
            check_codec_dtype(self.cut.grad_codec, dtype, "grad_codec")

    @torch.no_grad()
    def _probe_cut_activation(self, input_shape: Sequence[int]) -> Activation:
        """Run the client on a dummy batch of 2 in eval mode: no BatchNorm statistic moves."""
        parameter = next(self.client.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        was_training = self.client.training
        self.client.eval()
        try:
            return self.client(example_inputs(self.client[0], input_shape, 2, device, dtype))
        except Exception as err:
            raise ValueError(
                f"The client (units [0, {self.split_index}) of the network) cannot run on inputs of shape"
                f" {tuple(input_shape)} (argument `input_shape`): {err}"
            ) from err
        finally:
            self.client.train(was_training)

    @torch.no_grad()
    def _check_network_output(self, z: Activation) -> None:
        """Refuse a network whose logits have another number of classes than ``num_classes`` (before training)."""
        was_training = self.server.training
        self.server.eval()
        try:
            logits = self.server(z)
        finally:
            self.server.train(was_training)
        if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The network's output has {logits.shape[1]} classes, but argument `num_classes` is {self.num_classes}:"
                f" build the network for {self.num_classes} classes (its own `num_classes` argument)."
            )

    def setup(self, stage: str) -> None:
        """Build the auxiliary head from the data when ``input_shape`` was not given; check the data fits."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"Argument `num_classes` is {self.num_classes}, but the data module has {data_classes} classes."
            )
        if self._trainer is not None and self.mode != "dsl" and str(self.trainer.precision) == "16-mixed":
            raise ValueError(
                f"precision='16-mixed' is supported in mode 'dsl' only (the gradient sent down in mode {self.mode!r}"
                " would be loss-scaled twice): use precision='bf16-mixed' or 32."
            )
        if self._trainer is not None and str(self.trainer.precision).startswith("bf16"):
            self._check_codecs(torch.bfloat16)  # bf16 weights or autocast put bfloat16 activations on the cut
        if not self._aux_head_built:
            shape = getattr(datamodule, "input_shape", None)
            # A user's head waits for a batch; a server in its own process has no data (a client tells it the shape).
            if shape is None and not isinstance(self._aux_head_spec, nn.Module) and "client" in self.cut.sides:
                shape = self._input_shape_from_loader(stage)
            if shape is not None:
                self._build_aux_head(shape)
        if self._trainer is not None and stage == "fit":
            allow_partial_backward(self.trainer)

    def _input_shape_from_loader(self, stage: str) -> tuple[int, ...]:
        """One input's shape, from one sample of the stage's loader (nothing of the epoch is consumed)."""
        loader = stage_loader(self.trainer, stage) if self._trainer is not None else None
        inputs = peek_inputs(loader) if loader is not None else None
        if inputs is None:
            raise ValueError(
                "Cannot build the auxiliary head: pass `input_shape` (one sample's shape, e.g. (3, 32, 32)) to"
                " DecoupledSplitModule, use a data module with an `input_shape` attribute, or a loader whose batches"
                " are a tensor or (inputs, labels) and can be read again (not a one-shot iterator)."
            )
        return tuple(inputs.shape[1:])

    def configure_callbacks(self) -> list[Any]:
        """No callbacks of its own; the earliest hook of a Trainer run refuses the Trainer flags it cannot honour."""
        refuse_trainer_flags(self.trainer)
        return []

    def _check_aux_head_on(self, batch: Any) -> None:
        """A head passed as a module and no shape known before: check it on the first batch's inputs."""
        if not self._aux_head_built:
            inputs = batch_inputs(batch)
            if inputs is not None:
                self._build_aux_head(inputs.shape[1:])

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
        optimizers = [self.client_optimizer(self._client_parameters(i)) for i in range(self.num_clients)]
        optimizers.append(self.server_optimizer(self.server.parameters()))
        for index, optimizer in enumerate(optimizers[:-1]):
            suffix = str(index) if self.num_clients > 1 else ""
            _name_param_groups(optimizer, (f"client{suffix}", f"aux_head{suffix}"))
        _name_param_groups(optimizers[-1], ("server",))
        factories = [self.client_lr_scheduler] * self.num_clients + [self.server_lr_scheduler]
        # LearningRateMonitor logs "<name>/<param group name>": lr/client, lr/server (lr/aux_head).
        schedulers = [
            {"scheduler": factory(optimizer), "interval": self.scheduler_interval, "name": "lr"}
            for factory, optimizer in zip(factories, optimizers, strict=True)
            if factory is not None
        ]
        return optimizers, schedulers

    def _client_parameters(self, index: int) -> Any:
        client, head = self.client_pair(index)
        if self.aux_head_lr is None:
            return list(client.parameters()) + list(head.parameters())
        # The head in its own parameter group, with its own learning rate.
        return [{"params": list(client.parameters())}, {"params": list(head.parameters()), "lr": self.aux_head_lr}]

    def _schedulers(self) -> list[Any]:
        found = self.lr_schedulers()
        if found is None:
            return []
        return list(found) if isinstance(found, list) else [found]

    def _step_schedulers(self) -> None:
        for scheduler in self._schedulers():
            if isinstance(scheduler, ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get("val/loss")
                if metric is not None:
                    scheduler.step(metric)
            else:
                scheduler.step()

    # ------------------------------------------------------------------ phases (memory accounting hooks in here)
    def add_phase_hook(self, hook: PhaseHook) -> None:
        """Register ``hook(side)``, a context-manager factory wrapped around each side's work in a training step."""
        self._phase_hooks.append(hook)

    def remove_phase_hook(self, hook: PhaseHook) -> None:
        """Unregister a hook added with :meth:`add_phase_hook`."""
        if hook in self._phase_hooks:
            self._phase_hooks.remove(hook)

    @contextlib.contextmanager
    def _phase(self, side: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for hook in self._phase_hooks:
                stack.enter_context(hook(side))
            yield

    # ------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        """The split network's prediction: ``server(client(x))``."""
        return self.server(self.client(x))

    def feedback_weight_at(self, batch: int) -> float | None:
        """λ for the ``batch``-th training batch (0-based), or ``None`` for a decoupled step."""
        if self.mode == "dsl":
            return None
        if self.mode == "sl":
            return 1.0
        assert self.feedback_weight is not None and self.feedback_every is not None
        if self.feedback_weight == 0.0 or (batch + 1) % self.feedback_every != 0:
            return None
        return self.feedback_weight

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """One split step per client batch, in client order (see :func:`lightning_dsl.core.step.split_step`)."""
        *client_optimizers, server_optimizer = self.optimizers()  # type: ignore[misc,attr-defined]
        window = self._accumulation_window(batch_idx)
        outs: list[StepOutput] = []
        for index, inputs, labels, feedback in self._step_entries(batch):
            client, aux_head = self.clients.enter(index, (self.client, self.aux_head), self.cut)
            out = split_step(
                client,
                self.server,
                aux_head,
                inputs,
                labels,
                cut=self.cut,
                # A server in its own process has one (unused) client optimizer, whatever client a batch came from.
                client_optimizer=client_optimizers[min(index, len(client_optimizers) - 1)],
                server_optimizer=server_optimizer,
                criterion=self.criterion,
                backward=self.manual_backward,
                feedback_weight=feedback,
                phase=self._phase,
                client_index=index,
                zero_grad=window.zero_grad,
                step_optimizers=window.step,
                loss_scale=window.loss_scale,
            )
            self.clients.trained(index, len(out.labels))
            if out.logits is not None:
                self.train_acc(out.logits, out.labels)
            if self.num_clients > 1 and out.aux_loss is not None:
                self.log(f"train/aux_loss/client{index}", out.aux_loss, batch_size=len(out.labels))
            outs.append(out)
        self.batches_trained += 1
        samples = sum(len(out.labels) for out in outs)
        logged = {}
        for name in ("loss", "aux_loss"):  # a process that runs one side has only that side's loss
            values = [getattr(out, name) for out in outs if getattr(out, name) is not None]
            if values:
                logged[name] = torch.stack(values).mean()
                self.log(f"train/{name}", logged[name], prog_bar=True, batch_size=samples)
        if "server" in self.cut.sides:
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=samples)
        if self.scheduler_interval == "step" and window.step:
            self._step_schedulers()
        if self._trainer is not None and self.trainer.is_last_batch:
            # Before validation: the clients' upload and the average, when this epoch closes a FedAvg round.
            self.clients.end_of_epoch(self.current_epoch, (self.client, self.aux_head), self.cut, self._shard_sizes())
        loss = logged.get("loss", logged.get("aux_loss"))
        return {**logged, "loss": loss, "feedback": any(out.feedback for out in outs)}

    def _step_entries(self, batch: Any) -> Iterator[tuple[int, Activation | None, Tensor | None, float | None]]:
        """``(client, inputs, labels, feedback weight)`` per client batch of a training step.

        On a server whose clients are other processes the batch is :class:`~lightning_dsl.core.cut.Arrivals`:
        each client batch is received when it is reached, and it says whether its client waits for a gradient.
        """
        if isinstance(batch, Arrivals):
            for arrival in batch:
                yield arrival.client, None, None, 1.0 if arrival.reply else None
            return
        batches = client_batches(batch, self.num_clients, self.client_schedule)
        for _, _, labels in batches:  # every client's labels, before any parameter changes
            self._check_labels(labels)
        feedback = self.feedback_weight_at(self.batches_trained)
        for index, inputs, labels in batches:
            yield index, inputs, labels, feedback

    # ------------------------------------------------------------------ many clients
    def on_train_epoch_start(self) -> None:  # noqa: D102
        self.clients.start_of_epoch((self.client, self.aux_head), self.cut)  # a pending average goes down

    def on_train_end(self) -> None:  # noqa: D102
        self.clients.finish((self.client, self.aux_head), self.cut, self._shard_sizes())

    def aggregate_clients(self) -> None:
        """FedAvg of the clients' halves and heads (BatchNorm statistics included), weighted by shard size.

        The average becomes ``self.client`` / ``self.aux_head`` and is copied back to every client. The
        weights are the sizes of the clients' training datasets when the trainer's training loaders tell
        them (N loaders over sized datasets), else the samples each client trained on since the last
        aggregation. Each client's optimizer state stays as it is.
        """
        self.clients.average((self.client, self.aux_head), self.cut, self._shard_sizes())
        self.clients.broadcast((self.client, self.aux_head), self.cut)

    def _shard_sizes(self) -> list[int] | None:
        return shard_sizes(self.trainer.train_dataloader if self._trainer is not None else None, self.num_clients)

    def _accumulation_window(self, batch_idx: int) -> Window:
        """This batch's accumulation window; the epoch's last batch closes its window, as in Lightning."""
        last = self.trainer.is_last_batch or batch_idx + 1 == self.trainer.num_training_batches
        return accumulation_window(batch_idx, self.accumulate_grad_batches, last)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping side's gradients (after AMP's unscaling, which Lightning does before this hook)."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    def on_train_epoch_end(self) -> None:  # noqa: D102
        if self.scheduler_interval == "epoch":
            self._step_schedulers()

    def criterion(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss of both sides (cross-entropy). Override for another task."""
        return nn.functional.cross_entropy(logits, labels)

    def _evaluate(self, batch: Sequence[Tensor] | Arrival, stage: str) -> None:
        """Evaluate the (aggregated) split network and the client + head alone on a global batch.

        Across processes each side evaluates its part: a client its head alone (``aux_*``), sending its
        activations up if it is the evaluating client; the server the split network on what arrives.
        """
        acc, aux_acc = (self.val_acc, self.val_aux_acc) if stage == "val" else (self.test_acc, self.test_aux_acc)
        if isinstance(batch, Arrival):
            z_up, labels_up = self.cut.receive_up(batch.client)
        else:
            inputs, labels = batch[0], batch[1]
            self._check_labels(labels)
            z = self.client(inputs)
            aux_logits = self.aux_head(z)
            aux_acc(aux_logits, labels)
            self.log(f"{stage}/aux_loss", self.criterion(aux_logits, labels))
            self.log(f"{stage}/aux_acc", aux_acc, prog_bar=stage == "val")
            if self.cut.sends_evaluation:
                z_up, labels_up = self.cut.send_up(z, labels)  # evaluation traffic crosses the cut too
            if self.evaluate_clients and self.clients.differ:
                # Between two aggregations the clients differ from their average: each one's own head, too.
                metrics = self.val_client_aux_acc if stage == "val" else self.test_client_aux_acc
                for index, metric in enumerate(metrics):
                    assert isinstance(metric, MulticlassAccuracy)
                    client, aux_head = self.client_pair(index)
                    metric(aux_head(client(inputs)), labels)
                    self.log(f"{stage}/aux_acc/client{index}", metric)
        if "server" in self.cut.sides:
            logits = self.server(z_up)
            acc(logits, labels_up)
            size = len(labels_up)
            self.log(f"{stage}/loss", self.criterion(logits, labels_up), prog_bar=stage == "val", batch_size=size)
            self.log(f"{stage}/acc", acc, prog_bar=stage == "val", batch_size=size)

    def validation_step(self, batch: Sequence[Tensor] | Arrival, batch_idx: int) -> None:  # noqa: D102
        self._evaluate(batch, "val")

    def test_step(self, batch: Sequence[Tensor] | Arrival, batch_idx: int) -> None:  # noqa: D102
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor | dict[str, Tensor]:
        """The split network's logits for a batch that is a tensor of inputs or ``(inputs, labels, ...)``.

        With ``predict_aux_logits=True``, a dict ``{"logits": ..., "aux_logits": ...}`` (the client alone,
        through its auxiliary head). The activations cross the cut (and are counted); labels do not.
        """
        inputs = batch_inputs(batch)
        if inputs is None:
            raise ValueError(
                f"Expected a predict batch to be a tensor of inputs or a sequence (inputs, labels, ...), but got"
                f" {type(batch).__name__}."
            )
        z = self.client(inputs)
        no_labels = torch.empty(0, dtype=torch.long, device=z.device)  # the server needs none to predict
        logits = self.server(self.cut.send_up(z, no_labels)[0])
        if self.predict_aux_logits:
            return {"logits": logits, "aux_logits": self.aux_head(z)}
        return logits

    def _check_labels(self, labels: Tensor) -> None:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"Expected integer class labels, but the batch's labels have dtype {labels.dtype}.")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"Found label {bad} in a batch, outside [0, {self.num_classes - 1}] allowed by argument"
                f" `num_classes`={self.num_classes}."
            )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        checkpoint["lightning_dsl"] = {
            "batches_trained": self.batches_trained,
            "input_shape": self.input_shape,
            **self.clients.state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        state = checkpoint.get("lightning_dsl", {})
        self.batches_trained = int(state.get("batches_trained", 0))
        self.clients.load_state(state)
        if not self._aux_head_built and state.get("input_shape") is not None:
            self._build_aux_head(state["input_shape"])


def _name_param_groups(optimizer: torch.optim.Optimizer, names: Sequence[str]) -> None:
    """Name the parameter groups by side (``client``, ``aux_head``, ``server``) unless the user named them.

    ``LearningRateMonitor`` appends a group's ``name`` to its key: ``lr-SGD/client`` and ``lr-SGD-1/server``
    for optimizers without schedulers (it takes the rest from the optimizer's class), ``lr/client`` and
    ``lr/server`` with schedulers (their config's ``name``).
    """
    if len(optimizer.param_groups) <= len(names):
        for group, name in zip(optimizer.param_groups, names, strict=False):
            group.setdefault("name", name)


def _check_feedback(mode: str, weight: float | None, every: int | None) -> tuple[float | None, int | None]:
    """Validate the hybrid options; they are refused in the modes that would ignore them."""
    if mode != "hybrid":
        given = [(n, v) for n, v in (("feedback_weight", weight), ("feedback_every", every)) if v is not None]
        if given:
            names, values = " and ".join(f"argument `{n}`" for n, _ in given), ", ".join(f"{n}={v!r}" for n, v in given)
            raise ValueError(
                f"Expected {names} to be None in mode {mode!r} (the feedback options apply only to mode 'hybrid'),"
                f" but got {values}: leave them out, or set mode='hybrid'."
            )
        return None, None
    weight = 0.5 if weight is None else weight
    every = 1 if every is None else every
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"Expected argument `feedback_weight` to be a number in [0, 1], but got {weight!r}.")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Expected argument `feedback_every` to be an int >= 1, but got {every!r}.")
    return float(weight), every


def _check_clipping(value: float | None, algorithm: str) -> tuple[float | None, str]:
    """Validate the clipping options (the Trainer's names and meaning: ``None`` or 0 is no clipping)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
        raise ValueError(f"Expected argument `gradient_clip_val` to be a number >= 0 or None, but got {value!r}.")
    if not isinstance(algorithm, str) or algorithm.lower() not in CLIP_ALGORITHMS:
        raise ValueError(
            f"Expected argument `gradient_clip_algorithm` to be one of {list(CLIP_ALGORITHMS)}, but got {algorithm!r}."
        )
    return (float(value) if value else None), algorithm.lower()
