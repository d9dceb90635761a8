"""What the step hooks of :class:`~lightning_dsl.DecoupledSplitModule` do, batch by batch.

* **Training** (:func:`train_batch`): one :func:`~lightning_dsl.core.step.split_step` per client batch, in
  client order, with the accumulation window and the hybrid feedback schedule of the batch; then the
  logging, the per-step schedulers and, on the epoch's last batch, the close of a FedAvg round.
* **Evaluation** (:func:`evaluate_batch`): the split network and the client + head alone on a global batch;
  between FedAvg rounds each client's own half and head too.
* **Prediction** (:func:`predict_batch`): the split network's logits (and the client's, when asked).

Across processes (``strategy="split"``) each side runs its part: a client its half and head, the server
the rest on what arrives (:class:`~lightning_dsl.core.cut.Arrival`). The functions take the module (typed
``Any``: this file is the module's collaborator and must not import it) and use only its documented
attributes, its ``criterion`` and Lightning's ``log``, ``optimizers`` and ``manual_backward``.

With ``privacy`` (:class:`~lightning_dsl.privacy.CutPrivacy`), the cut's client transform does the clipping,
noise and randomized labels; the training step adds NoPeek's term to the client's objective
(``train/nopeek_penalty``), and each epoch's last batch logs the budgets spent so far (``privacy/epsilon``,
``privacy/label_epsilon``: the epochs trained, this one included).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_dsl.core.accumulation import Window, accumulation_window
from lightning_dsl.core.clients import client_batches, shard_sizes
from lightning_dsl.core.cut import Arrival, Arrivals
from lightning_dsl.core.peek import batch_inputs
from lightning_dsl.core.sequence import Activation, head_input
from lightning_dsl.core.step import StepOutput, split_step


def train_batch(module: Any, batch: Any, batch_idx: int) -> dict[str, Any]:
    """One split step per client batch, in client order (see :func:`lightning_dsl.core.step.split_step`)."""
    *client_optimizers, server_optimizer = module.optimizers()
    window = _accumulation_window(module, batch_idx)
    outs: list[StepOutput] = []
    for index, inputs, labels, feedback in _step_entries(module, batch):
        client, aux_head = module.clients.enter(index, (module.client, module.aux_head), module.cut)
        out = split_step(
            client,
            module.server,
            aux_head,
            inputs,
            labels,
            cut=module.cut,
            # A server in its own process has one (unused) client optimizer, whatever client a batch came from.
            client_optimizer=client_optimizers[min(index, len(client_optimizers) - 1)],
            server_optimizer=server_optimizer,
            criterion=module.criterion,
            backward=module.manual_backward,
            feedback_weight=feedback,
            phase=module._phase_hooks,
            client_index=index,
            zero_grad=window.zero_grad,
            step_optimizers=window.step,
            loss_scale=window.loss_scale,
            client_regularizer=module.client_regularizer,
        )
        module.clients.trained(index, len(out.labels))
        if out.logits is not None:
            module.train_acc(out.logits, out.labels)
        if module.num_clients > 1 and out.aux_loss is not None:
            module.log(f"train/aux_loss/client{index}", out.aux_loss, batch_size=len(out.labels))
        if out.client_penalty is not None:
            module.log("train/nopeek_penalty", out.client_penalty, batch_size=len(out.labels))
        outs.append(out)
    module.batches_trained += 1
    logged = _log_training(module, outs)
    if module.scheduler_interval == "step" and window.step:
        module._step_schedulers()
    if module._trainer is not None and module.trainer.is_last_batch:
        if module.privacy is not None:
            # Each training sample was sent once more this epoch: the budgets after current_epoch + 1 releases.
            for key, value in module.privacy.budgets(module.current_epoch + 1).items():
                module.log(key, value, on_step=False, on_epoch=True, batch_size=1)  # a figure, not a batch mean
        # Before validation: the clients' upload and the average, when this epoch closes a FedAvg round.
        pair = (module.client, module.aux_head)
        module.clients.end_of_epoch(module.current_epoch, pair, module.cut, trained_shard_sizes(module))
    loss = logged.get("loss", logged.get("aux_loss"))
    return {**logged, "loss": loss, "feedback": any(out.feedback for out in outs)}


def _log_training(module: Any, outs: Sequence[StepOutput]) -> dict[str, Tensor]:
    samples = sum(len(out.labels) for out in outs)
    logged = {}
    for name in ("loss", "aux_loss"):  # a process that runs one side has only that side's loss
        values = [getattr(out, name) for out in outs if getattr(out, name) is not None]
        if values:
            logged[name] = torch.stack(values).mean()
            module.log(f"train/{name}", logged[name], prog_bar=True, batch_size=samples)
    if "server" in module.cut.sides:
        module.log("train/acc", module.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=samples)
    return logged


def _step_entries(module: Any, batch: Any) -> Iterator[tuple[int, Activation | None, Tensor | None, float | None]]:
    """``(client, inputs, labels, feedback weight)`` per client batch of a training step.

    On a server whose clients are other processes the batch is :class:`~lightning_dsl.core.cut.Arrivals`:
    each client batch is received when it is reached, and it says whether its client waits for a gradient.
    """
    if isinstance(batch, Arrivals):
        for arrival in batch:
            yield arrival.client, None, None, 1.0 if arrival.reply else None
        return
    batches = client_batches(batch, module.num_clients, module.client_schedule)
    transform = module.cut.client_transform
    for _, _, labels in batches:  # every client's labels, before any parameter changes
        try:
            module.config.check_labels(labels)
        except ValueError:
            if transform is not None:
                transform.check_labels(labels)  # label privacy refuses them naming its own field
            raise
    feedback = module.feedback_weight_at(module.batches_trained)
    for index, inputs, labels in batches:
        yield index, inputs, labels, feedback


def _accumulation_window(module: Any, batch_idx: int) -> Window:
    """This batch's accumulation window; the epoch's last batch closes its window, as in Lightning."""
    last = module.trainer.is_last_batch or batch_idx + 1 == module.trainer.num_training_batches
    return accumulation_window(batch_idx, module.accumulate_grad_batches, last)


def trained_shard_sizes(module: Any) -> list[int] | None:
    """The clients' training-set sizes, when the trainer's training loaders tell them (FedAvg's weights)."""
    return shard_sizes(module.trainer.train_dataloader if module._trainer is not None else None, module.num_clients)


def evaluate_batch(module: Any, batch: Sequence[Tensor] | Arrival, stage: str) -> None:
    """Evaluate the (aggregated) split network and the client + head alone on a global batch.

    Across processes each side evaluates its part: a client its head alone (``aux_*``), sending its
    activations up if it is the evaluating client; the server the split network on what arrives.
    """
    acc, aux_acc = (module.val_acc, module.val_aux_acc) if stage == "val" else (module.test_acc, module.test_aux_acc)
    if isinstance(batch, Arrival):
        z_up, labels_up = module.cut.receive_up(batch.client)
    else:
        inputs, labels = batch[0], batch[1]
        module.config.check_labels(labels)
        z = module.client(inputs)
        aux_logits = module.aux_head(head_input(z))
        aux_acc(aux_logits, labels)
        module.log(f"{stage}/aux_loss", module.criterion(aux_logits, labels))
        module.log(f"{stage}/aux_acc", aux_acc, prog_bar=stage == "val")
        if module.cut.sends_evaluation:
            z_up, labels_up = module.cut.send_up(z, labels)  # evaluation traffic crosses the cut too
        if module.evaluate_clients and module.clients.differ:
            # Between two aggregations the clients differ from their average: each one's own head, too.
            metrics = module.val_client_aux_acc if stage == "val" else module.test_client_aux_acc
            for index, metric in enumerate(metrics):
                assert isinstance(metric, MulticlassAccuracy)
                client, aux_head = module.client_pair(index)
                metric(aux_head(head_input(client(inputs))), labels)
                module.log(f"{stage}/aux_acc/client{index}", metric)
    if "server" in module.cut.sides:
        logits = module.server(z_up)
        acc(logits, labels_up)
        size = len(labels_up)
        module.log(f"{stage}/loss", module.criterion(logits, labels_up), prog_bar=stage == "val", batch_size=size)
        module.log(f"{stage}/acc", acc, prog_bar=stage == "val", batch_size=size)


def predict_batch(module: Any, batch: Any) -> Tensor | dict[str, Tensor]:
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
    z = module.client(inputs)
    no_labels = torch.empty(0, dtype=torch.long, device=z.device)  # the server needs none to predict
    logits = module.server(module.cut.send_up(z, no_labels)[0])
    if module.predict_aux_logits:
        return {"logits": logits, "aux_logits": module.aux_head(head_input(z))}
    return logits
