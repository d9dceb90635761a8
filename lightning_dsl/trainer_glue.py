"""What ``DecoupledSplitModule`` needs from the Trainer beyond the hooks a LightningModule gets.

Three habits of Lightning users meet the module's manual optimization here:

* **plain loaders** (``trainer.fit(model, loader)``): the auxiliary head is built before the
  optimizers exist, at ``setup``, when the Trainer has not yet asked for any loader. Lightning has
  no public accessor for the loader before its loop's ``setup_data`` (``trainer.train_dataloader``
  is ``None`` until then, and calling ``fit_loop.setup_data()`` early would run before the
  checkpoint is restored and create the epoch's iterator). :func:`stage_loader` therefore reads the
  loop's ``_data_source``, the object the loop itself asks for the loader, and asks it the same way;
  it is the only private attribute read here, and its absence (a future Lightning) falls back to
  the "pass ``input_shape``" error.
* **plain DDP** (``strategy="ddp"``): a step runs two backward passes over disjoint parameter
  sets (the client's, then the server's), and DDP's reducer, by default, waits for every
  parameter in every backward. :func:`allow_partial_backward` turns on ``find_unused_parameters``
  for DDP strategies that left it unset (``"ddp"``, ``"ddp_spawn"``, ``DDPStrategy()``).
* **the Trainer's clipping and accumulation flags**, which Lightning refuses under manual
  optimization: :func:`refuse_trainer_flags` says to use the module's arguments instead.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import CombinedLoader

from lightning_dsl.core.peek import peek_inputs

_STAGE_LOOPS = {"fit": "fit_loop", "validate": "validate_loop", "test": "test_loop", "predict": "predict_loop"}


def stage_loader(trainer: Trainer, stage: str) -> Any:
    """The loader given to ``trainer.<stage>`` (the first, when several), or ``None``.

    For ``fit`` the training loader, for the others their own; a data module's or the model's
    ``*_dataloader()`` hook is called when that is the source (the loop calls it again later).
    """
    source = getattr(getattr(trainer, _STAGE_LOOPS.get(stage, ""), None), "_data_source", None)
    if source is None or not hasattr(source, "dataloader") or not source.is_defined():
        return None
    loaders = source.dataloader()
    if isinstance(loaders, (list, tuple, dict)):  # several loaders, as Lightning reads them
        loaders = CombinedLoader(loaders)
    if isinstance(loaders, CombinedLoader):
        return loaders.flattened[0] if loaders.flattened else None
    return loaders


def allow_partial_backward(trainer: Trainer) -> None:
    """Let DDP's reducer accept backward passes that reach only part of the parameters.

    Called at ``setup``, before the strategy wraps the module. Each backward then all-reduces every
    bucket (those of the other side are zeros and leave its gradients untouched), and DDP keeps its
    own guarantees: identical initial parameters, BatchNorm buffers broadcast from rank 0.

    Raises:
        ValueError: if the strategy was explicitly told ``find_unused_parameters=False`` (or
            ``static_graph=True``), with which a split step cannot run.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(kwargs, dict):
        return
    if kwargs.get("find_unused_parameters") is False or kwargs.get("static_graph"):
        given = {k: kwargs[k] for k in ("find_unused_parameters", "static_graph") if k in kwargs}
        raise ValueError(
            f"The DDP strategy was given {given}: a split step runs two backward passes per batch over disjoint"
            " parameter sets (client, server), which DDP accepts only with find_unused_parameters=True and no"
            " static graph. Use strategy='ddp' (the module turns the option on) or"
            " DDPStrategy(find_unused_parameters=True)."
        )
    kwargs["find_unused_parameters"] = True


def refuse_trainer_flags(trainer: Trainer) -> None:
    """Refuse ``Trainer(gradient_clip_val=...)`` and ``Trainer(accumulate_grad_batches=...)``, naming the module's.

    Lightning refuses both under manual optimization with a message that suggests switching to
    automatic optimization, which this module cannot do; this runs first (from
    ``configure_callbacks``, the earliest module hook of a Trainer run) and names the way that works.
    """
    clip = getattr(trainer, "gradient_clip_val", None)
    if clip is not None and clip > 0:
        raise ValueError(
            f"Trainer(gradient_clip_val={clip!r}) is not available with DecoupledSplitModule (manual optimization,"
            f" two optimizers): pass DecoupledSplitModule(..., gradient_clip_val={clip!r}) instead, and"
            " gradient_clip_algorithm there if needed; each side is clipped before its optimizer steps."
        )
    accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    if accumulate != 1:
        raise ValueError(
            f"Trainer(accumulate_grad_batches={accumulate!r}) is not available with DecoupledSplitModule (manual"
            f" optimization, two optimizers): pass DecoupledSplitModule(..., accumulate_grad_batches={accumulate!r})"
            " instead."
        )


def check_trainer_fits(
    trainer: Trainer, num_classes: int, mode: str, check_codecs: Callable[[torch.dtype], None]
) -> None:
    """Refuse, at ``setup``, a data module or a precision the run cannot train with.

    Args:
        trainer: the Trainer being set up.
        num_classes: the module's ``num_classes``; a data module's ``num_classes`` must equal it.
        mode: the module's mode: ``precision="16-mixed"`` is refused outside ``dsl`` (the gradient sent down
            would be loss-scaled twice).
        check_codecs: refuses codecs that cannot carry a dtype; called with ``bfloat16`` under bf16 precision.
    """
    data_classes = getattr(getattr(trainer, "datamodule", None), "num_classes", None)
    if data_classes is not None and data_classes != num_classes:
        raise ValueError(f"Argument `num_classes` is {num_classes}, but the data module has {data_classes} classes.")
    if mode != "dsl" and str(trainer.precision) == "16-mixed":
        raise ValueError(
            f"precision='16-mixed' is supported in mode 'dsl' only (the gradient sent down in mode {mode!r}"
            " would be loss-scaled twice): use precision='bf16-mixed' or 32."
        )
    if str(trainer.precision).startswith("bf16"):
        check_codecs(torch.bfloat16)  # bf16 weights or autocast put bfloat16 activations on the cut


def refuse_cycled_client_loaders(trainer: Trainer, num_clients: int) -> None:
    """Refuse a plain list (or dict) of client loaders, which Lightning would cycle.

    ``trainer.fit(model, [loader_0, ..., loader_N-1])`` (or a ``train_dataloader()`` returning such a list) is
    combined by Lightning in its default ``"max_size_cycle"`` mode: the shorter clients' loaders start again
    until the longest ends, so a client with 55 samples trains on 110 in an epoch of a client with 110.
    """
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    if num_clients < 2 or source is None or not hasattr(source, "dataloader") or not source.is_defined():
        return
    loaders = source.dataloader()
    if isinstance(loaders, (list, tuple, dict)) and len(loaders) > 1:
        raise ValueError(
            f"The training data is a plain {type(loaders).__name__} of {len(loaders)} loaders, one per client"
            f" (`num_clients`={num_clients}): Lightning combines it in mode 'max_size_cycle', which starts the"
            " shorter clients' loaders again until the longest ends (their samples are seen twice in an epoch)."
            " Serve it with lightning_dsl.data.client_loaders(loaders) (each client's batches once per epoch), or"
            " wrap it in CombinedLoader(loaders, mode=...) to choose the mode yourself."
        )


def fixed_by_subclass(module: Any, frame: types.FrameType | None) -> list[str]:
    """The module's arguments that a subclass's ``__init__`` set itself: they are not hyperparameters.

    ``save_hyperparameters`` records every argument of every ``__init__`` in the chain, and
    ``load_from_checkpoint`` passes them all to the outermost class. A subclass that calls
    ``super().__init__(network=None, ...)`` without taking ``network`` itself would then get ``network`` twice
    (``__init__() got multiple values for keyword argument 'network'``). What the outermost ``__init__`` did not
    receive (as a named argument or in its ``**kwargs``) is left out.

    Args:
        module: the module being constructed.
        frame: the frame of ``DecoupledSplitModule.__init__``.
    """
    if frame is None:
        return []
    outer, caller = frame, frame.f_back
    while caller is not None and caller.f_code.co_name == "__init__" and caller.f_locals.get("self") is module:
        outer, caller = caller, caller.f_back
    if outer is frame:
        return []
    received = inspect.getargvalues(outer)
    names = set(received.args)
    if received.keywords:
        names |= set(received.locals.get(received.keywords) or {})
    return [name for name in inspect.getargvalues(frame).args[1:] if name not in names]


def input_shape_from_data(trainer: Trainer | None, stage: str, may_peek: bool) -> tuple[int, ...] | None:
    """One input's shape: the data module's ``input_shape``, else (when ``may_peek``) one sample of the loader.

    Taking the sample consumes nothing of the epoch (:func:`~lightning_dsl.core.peek.peek_inputs`).

    Raises:
        ValueError: if ``may_peek`` and neither tells the shape (saying how to give it).
    """
    shape = getattr(getattr(trainer, "datamodule", None), "input_shape", None)
    if shape is not None or not may_peek:
        return shape
    loader = stage_loader(trainer, stage) if trainer is not None else None
    inputs = peek_inputs(loader) if loader is not None else None
    if inputs is None:
        raise ValueError(
            "Cannot build the auxiliary head: pass `input_shape` (one sample's shape, e.g. (3, 32, 32)) to"
            " DecoupledSplitModule, use a data module with an `input_shape` attribute, or a loader whose batches"
            " are a tensor or (inputs, labels) and can be read again (not a one-shot iterator)."
        )
    return tuple(inputs.shape[1:])
