"""The sending half of a transport's pair with one peer: a queue, a window, an emulated link, a thread.

:meth:`Sender.put` queues a frame and returns at once, so compute overlaps communication, but at most
``max_in_flight`` messages may be queued or sent and not yet taken by the peer's application: the next
``put`` waits for one of them (bounded memory), up to its deadline. The thread waits until the emulated
link (:mod:`~lightning_dsl.distributed.link`) delivers each frame and sends it with
``dist.batch_isend_irecv``; gloo completes a send only when the matching receive is posted, and the peer
posts it only when its application asks for the message, which makes ``max_in_flight`` exact. A failure
of the thread (a peer that died) is kept and raised by the caller's next call (:meth:`Sender.raise_error`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import torch.distributed as dist

from lightning_dsl.distributed.link import LinkClock, LinkSpec
from lightning_dsl.distributed.peers import Deadline, TransportError, TransportTimeout, peer_name
from lightning_dsl.distributed.wire import Frame, Kind


class Sender:
    """The queue of messages to one peer, its window, its link clock and the thread that sends them.

    Args:
        name: the sending process, as errors name it.
        peer: the receiving rank.
        link: the emulated link (``None``: the real one as it is).
        max_in_flight: messages that may be queued or sent and not yet taken by the peer's application;
            :meth:`put` waits while that many are.
        on_sent: called with each frame once the peer has received it (the transport counts it).
    """

    def __init__(
        self, name: str, peer: int, link: LinkSpec | None, max_in_flight: int, on_sent: Callable[[Frame], None]
    ) -> None:
        self.name, self.peer, self.max_in_flight, self.on_sent = name, peer, max_in_flight, on_sent
        self.clock = LinkClock(link) if link is not None else None
        self.cond = threading.Condition()
        self.queue: deque[tuple[Frame, float]] = deque()
        self.stopping = False
        self.in_flight = 0  # queued, or sent and not yet taken by the peer's application
        self.error: BaseException | None = None
        self.reported = False
        self.thread = threading.Thread(target=self._run, name=f"dsl-send-{peer}", daemon=True)
        self.thread.start()

    def put(self, frame: Frame, deadline: Deadline, what: str, window: bool = True) -> None:
        """Queue ``frame`` (``what`` names it in errors); wait until the window has room, up to ``deadline``."""
        with self.cond:
            while window and self.in_flight >= self.max_in_flight and self.error is None:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise TransportTimeout(
                        f"{self.name} waited {deadline.seconds:.1f} s to send {what} to"
                        f" {peer_name(self.peer)}: {self.in_flight} messages already in flight"
                        f" (max_in_flight={self.max_in_flight}) and none received by the peer since"
                    )
                self.cond.wait(remaining)
            self.raise_error()
            now = time.monotonic()
            due = self.clock.schedule(frame.nbytes, now) if self.clock is not None else now
            self.in_flight += 1
            self.queue.append((frame, due))
            self.cond.notify_all()

    def stop(self) -> None:
        """End the thread after what it is sending now, dropping the rest (the peer is gone)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def raise_error(self) -> None:
        """Raise the thread's failure, if any, as a :class:`TransportError` naming the peer."""
        if self.error is not None:
            self.reported = True
            raise TransportError(f"sending to {peer_name(self.peer)} failed: {self.error}") from self.error

    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.stopping:
                        self.cond.wait()
                    if self.stopping:
                        return
                    frame, due = self.queue[0]
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the emulated link: the message arrives now
                tensors = [frame.header, *([frame.meta] if frame.meta.numel() else []), *frame.body]
                works = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, self.peer) for t in tensors])
                for work in works:
                    work.wait()  # done when the peer has posted the matching receive
                self.on_sent(frame)
                kind = int(frame.header[1])
                with self.cond:
                    self.queue.popleft()
                    self.in_flight -= 1
                    self.cond.notify_all()
                if kind == Kind.CLOSE:
                    return
        except BaseException as err:  # noqa: BLE001 - kept and raised by the caller's next call
            with self.cond:
                self.error = err
                self.cond.notify_all()


__all__ = ["Sender"]
