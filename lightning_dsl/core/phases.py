"""The phases of a training step: hooks wrapped around each side's work (memory and time accounting)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

PhaseHook = Callable[[str], contextlib.AbstractContextManager[Any]]
"""``hook(side)``: a context-manager factory wrapped around the work of ``side`` (``"client"`` or ``"server"``)."""


class PhaseHooks(list[PhaseHook]):
    """The registered hooks; calling it with a side enters every hook's context, in registration order.

    Example::

        >>> seen = []
        >>> @contextlib.contextmanager
        ... def record(side):
        ...     seen.append(side)
        ...     yield
        >>> hooks = PhaseHooks([record])
        >>> with hooks("client"):
        ...     pass
        >>> seen
        ['client']
    """

    @contextlib.contextmanager
    def __call__(self, side: str) -> Iterator[None]:  # noqa: D102
        with contextlib.ExitStack() as stack:
            for hook in self:
                stack.enter_context(hook(side))
            yield
