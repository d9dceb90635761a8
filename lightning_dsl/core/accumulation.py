"""Gradient accumulation windows, in plain torch terms: when to zero, when to step, how to scale.

Lightning accumulates gradients only in automatic optimization; the split step is manual (two
optimizers, two backward passes per batch), so the window is decided here and the step obeys it
(:func:`lightning_dsl.core.step.split_step`'s ``zero_grad``, ``step_optimizers`` and ``loss_scale``).
The rules are Lightning's own: windows of ``every`` batches counted from the start of each epoch,
the last window of an epoch is stepped even when it is shorter, and every loss is scaled by
``1 / every`` (the losses are means, so ``every`` batches of ``n`` give the gradient of one batch
of ``every * n``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """What one batch does with the optimizers.

    Attributes:
        zero_grad: the batch opens a window: zero the gradients before its backward.
        step: the batch closes a window: step the optimizers after its backward.
        loss_scale: factor on every loss before its backward (``1 / every``).
    """

    zero_grad: bool
    step: bool
    loss_scale: float


def accumulation_window(batch_idx: int, every: int, is_last_batch: bool = False) -> Window:
    """The accumulation window of the ``batch_idx``-th batch of an epoch (0-based).

    Args:
        batch_idx: index of the batch in its epoch.
        every: batches per optimizer step (``accumulate_grad_batches``), ``>= 1``.
        is_last_batch: the batch is the epoch's last: its (possibly shorter) window is stepped.

    Example::

        >>> [accumulation_window(i, 2, is_last_batch=i == 2) for i in range(3)]  # doctest: +NORMALIZE_WHITESPACE
        [Window(zero_grad=True, step=False, loss_scale=0.5),
         Window(zero_grad=False, step=True, loss_scale=0.5),
         Window(zero_grad=True, step=True, loss_scale=0.5)]
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Expected argument `accumulate_grad_batches` to be an int >= 1, but got {every!r}.")
    return Window(
        zero_grad=batch_idx % every == 0,
        step=(batch_idx + 1) % every == 0 or is_last_batch,
        loss_scale=1.0 / every,
    )
