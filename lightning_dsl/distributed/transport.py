"""Point-to-point messages between the server (rank 0) and its clients (ranks 1..N) of one process group.

One :class:`Transport` per process. For each peer (a client talks only to the server, the server to
every client) it runs two daemon threads:

* a **sender**, which takes the messages :meth:`Transport.send` queued, waits until the emulated
  link delivers them (:mod:`~lightning_dsl.distributed.link`) and sends their frames in order with
  ``dist.batch_isend_irecv``. ``send`` returns at once, so compute overlaps communication, but at
  most ``max_in_flight`` messages per peer may be sent and not yet received: the next ``send`` waits
  for one of them (bounded memory), up to the timeout.
* a **listener**, which receives a peer's message headers as they come and records their arrival
  order, so that the server can take its clients' messages in client order (``recv(peer)``) or in
  arrival order (:meth:`Transport.recv_any`). It receives a message's body only once ``recv`` asks
  for it, and gloo completes a send only when the matching receive is posted: so a message counts
  as in flight until the receiving *application* takes it, which makes ``max_in_flight`` exact.

The threads never wait with a short timeout of their own: after a gloo timeout the pair to that
peer is closed for good, so they wait as long as the process group's timeout allows. The caller's
waits (``send`` on a full window, ``recv``) are on queues with a deadline, and their
:class:`TransportTimeout` names who was waited for, for what and how long; the pair stays usable.
A failure in a thread (a peer that died closes its sockets, and gloo raises at once) is kept and
raised as a :class:`TransportError` naming the peer by the next call that concerns that peer.

Counted per peer and direction (:attr:`Transport.sent`, :attr:`Transport.received`): every message
and every byte put on the wire, split into the tensors' bytes (what
:class:`~lightning_dsl.core.cut.Cut` counts) and the framing (header and meta).

The sender thread is :class:`~lightning_dsl.distributed.sender.Sender`; names, errors, deadlines and
counters are in :mod:`~lightning_dsl.distributed.peers` (importable from here too). This module keeps
the :class:`Transport` and its listeners: receiving in client or arrival order, and closing.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_dsl.distributed.link import LinkSpec
from lightning_dsl.distributed.peers import (
    SERVER,
    Deadline,
    TransportError,
    TransportTimeout,
    WireCounter,
    check_timeout,
    peer_name,
    process_group_timeout,
    wait_all,
)
from lightning_dsl.distributed.sender import Sender
from lightning_dsl.distributed.wire import (
    HEADER_LEN,
    Frame,
    Header,
    Kind,
    Message,
    body_buffers,
    decode,
    encode,
    read_header,
)


class _Inbox:
    """What the listener of one peer has received and the application has not yet taken."""

    def __init__(self) -> None:
        # A message announced by its header (arrival number, header, meta), until the application takes it;
        # the listener reads the next header only then.
        self.header: tuple[int, Header, Tensor] | None = None
        self.claimed = False  # the application asked for it: the listener may receive its body
        self.message: Message | None = None  # the body has arrived
        self.closed = False  # the peer sent CLOSE
        self.error: BaseException | None = None
        self.reported = False
        self.discarded = 0


class Transport:
    """Messages between this process and its peers over the default process group.

    Rank 0 is the server, ranks ``1..N`` the clients; the process group must be initialized
    (``dist.init_process_group``, e.g. from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Args:
        max_in_flight: messages per peer that may be sent and not yet received by the peer's
            application; :meth:`send` waits when that many are.
        timeout: seconds any wait of :meth:`send`, :meth:`recv` and :meth:`close` may last by default.
        uplink: emulated client-to-server link (one for every client, or a mapping from client index to
            link); ``None``: no emulation. Applied by the clients' senders.
        downlink: emulated server-to-client link, applied by the server's senders.
        device: where frames are sent from and received into; by default ``cuda`` for NCCL, else ``cpu``.

    Example::

        transport = Transport(max_in_flight=2, timeout=60)
        if transport.is_server:
            client, message = transport.recv_any()
        else:
            transport.send(Message(Kind.EPOCH_END, step=3), SERVER)
        transport.close()
    """

    def __init__(
        self,
        max_in_flight: int = 2,
        timeout: float = 60.0,
        uplink: LinkSpec | Mapping[int, LinkSpec] | None = None,
        downlink: LinkSpec | Mapping[int, LinkSpec] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"Expected argument `max_in_flight` to be an integer >= 1, got {max_in_flight!r}.")
        check_timeout(timeout)
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("Transport needs an initialized default process group (dist.init_process_group)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.world_size < 2:
            raise ValueError(
                f"Expected a process group of a server and at least one client, got WORLD_SIZE={self.world_size}."
            )
        self.max_in_flight, self.timeout = max_in_flight, float(timeout)
        self.device = torch.device(device) if device is not None else _group_device()
        self.peers: tuple[int, ...] = tuple(range(1, self.world_size)) if self.is_server else (SERVER,)
        self.sent = {peer: WireCounter() for peer in self.peers}
        self.received = {peer: WireCounter() for peer in self.peers}
        self._count_lock = threading.Lock()
        self._cond = threading.Condition()  # guards every _Inbox
        self._inbox = {peer: _Inbox() for peer in self.peers}
        self._arrivals = 0
        self._closing = self._closed = False
        # A link is named by its client: the server sends on each client's downlink, a client on its uplink.
        self._senders = {
            peer: Sender(
                self.name,
                peer,
                _link_for(downlink, peer - 1) if self.is_server else _link_for(uplink, self.rank - 1),
                max_in_flight,
                functools.partial(self.count, self.sent, peer),
            )
            for peer in self.peers
        }
        self._listeners = [
            threading.Thread(target=self._listen, args=(peer,), name=f"dsl-recv-{peer}", daemon=True)
            for peer in self.peers
        ]
        for thread in self._listeners:
            thread.start()

    @property
    def is_server(self) -> bool:
        """Whether this process is the server (rank 0)."""
        return self.rank == SERVER

    @property
    def name(self) -> str:
        """This process, as errors name it."""
        return peer_name(self.rank)

    def send(self, message: Message, peer: int, timeout: float | None = None) -> None:
        """Queue ``message`` for ``peer`` and return; wait (up to ``timeout`` s) while the window is full.

        The tensors are copied (one copy each), so the caller may change them right after.
        """
        self._check_open()
        if message.kind == Kind.CLOSE:
            raise ValueError("Kind.CLOSE is sent by Transport.close, not by send")
        sender = self._senders[self._check_peer(peer)]
        sender.raise_error()
        with self._cond:
            if self._inbox[peer].closed:
                raise TransportError(f"{self.name} cannot send to {peer_name(peer)}: it has closed")
        frame = encode(message, self.device, copy=True)
        sender.put(frame, self._deadline(timeout), f"a {message.kind.name} message (step {message.step})")

    def recv(self, peer: int, timeout: float | None = None, expect: Kind | None = None) -> Message:
        """The next message from ``peer``, waiting up to ``timeout`` s; ``expect``: raise unless it is of this kind."""
        self._check_peer(peer)
        return self._take((peer,), timeout, expect)[1]

    def recv_any(
        self, timeout: float | None = None, expect: Kind | None = None, peers: tuple[int, ...] | None = None
    ) -> tuple[int, Message]:
        """``(peer, message)``: the message that arrived first among ``peers`` (default: all), in arrival order."""
        peers = self.peers if peers is None else tuple(self._check_peer(p) for p in peers)
        if not peers:
            raise ValueError(f"Expected argument `peers` to name at least one of {list(self.peers)}, got ().")
        return self._take(peers, timeout, expect)

    def pending(self) -> dict[int, int]:
        """Messages each peer has sent that are waiting to be taken (0 or 1: the listener reads one ahead)."""
        with self._cond:
            return {peer: int(box.header is not None) for peer, box in self._inbox.items()}

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, tell every peer, wait for them to do the same; at most ``timeout`` s in all.

        Messages a peer sent that were never taken are received and dropped (with a warning). Raises a
        :class:`TransportError` for failures not yet raised by another call, and when a peer did not
        close in time (its threads are then left behind, as daemons).
        """
        if self._closed:
            return
        deadline = self._deadline(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for peer, sender in self._senders.items():
            if self._inbox[peer].error is not None:
                sender.stop()  # receiving from it failed (it died, most likely): it will not read a CLOSE
            elif sender.error is None:
                sender.put(encode(Message(Kind.CLOSE)), deadline, "CLOSE", window=False)
        problems = []
        for peer, sender in self._senders.items():
            sender.thread.join(max(0.0, deadline.remaining()))
            if sender.error is not None and not sender.reported:
                problems.append(f"sending to {peer_name(peer)} failed: {sender.error}")
            elif sender.thread.is_alive():
                problems.append(
                    f"{len(sender.queue)} messages to {peer_name(peer)} were not received"
                    f" within {deadline.seconds:.1f} s"
                )
        for peer, thread in zip(self.peers, self._listeners, strict=True):
            thread.join(max(0.0, deadline.remaining()))
            box = self._inbox[peer]
            if box.error is not None and not box.reported:
                problems.append(f"receiving from {peer_name(peer)} failed: {box.error}")
            elif thread.is_alive() and box.error is None:
                problems.append(f"{peer_name(peer)} did not close its side within {deadline.seconds:.1f} s")
            if box.discarded:
                warnings.warn(
                    f"{self.name} dropped {box.discarded} messages from {peer_name(peer)} that were never received",
                    stacklevel=2,
                )
        self._closed = True
        if problems:
            raise TransportError(f"{self.name} could not close cleanly: " + "; ".join(problems))

    # -- receiving ------------------------------------------------------------------------------

    def _listen(self, peer: int) -> None:
        box = self._inbox[peer]
        try:
            while True:
                header_tensor = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.device)
                wait_all([dist.P2POp(dist.irecv, header_tensor, peer)])
                header = read_header(header_tensor)
                meta = torch.empty(header.meta_nbytes, dtype=torch.uint8, device=self.device)
                if header.meta_nbytes:
                    wait_all([dist.P2POp(dist.irecv, meta, peer)])
                if header.kind == Kind.CLOSE:
                    self.count(self.received, peer, Frame(header_tensor, meta, ()))
                    with self._cond:
                        box.closed = True
                        self._cond.notify_all()
                    return
                with self._cond:
                    self._arrivals += 1
                    box.header = (self._arrivals, header, meta)
                    self._cond.notify_all()
                    while not (box.claimed or self._closing):
                        self._cond.wait()
                    keep = box.claimed
                buffers = body_buffers(header, meta, self.device)
                if buffers:
                    wait_all([dist.P2POp(dist.irecv, b, peer) for b in buffers])
                message = decode(header_tensor, meta, buffers)
                self.count(self.received, peer, Frame(header_tensor, meta, tuple(buffers)))
                with self._cond:
                    if keep:  # the header stays until the application takes the message
                        box.message = message
                    else:
                        box.header = None
                        box.discarded += 1
                    self._cond.notify_all()
                    while box.header is not None and not self._closing:
                        self._cond.wait()
        except BaseException as err:  # noqa: BLE001 - kept and raised by the caller's next recv
            with self._cond:
                box.error = err
                self._cond.notify_all()

    def _take(self, peers: tuple[int, ...], timeout: float | None, expect: Kind | None) -> tuple[int, Message]:
        self._check_open()
        deadline = self._deadline(timeout)
        waited_for = " or ".join(peer_name(p) for p in peers)
        what = f"a {expect.name} message" if expect is not None else "a message"
        with self._cond:
            while True:  # wait for a header, the first to arrive among `peers`
                ready = [
                    (box.header[0], p) for p, box in ((p, self._inbox[p]) for p in peers) if box.header is not None
                ]
                if ready:
                    peer = min(ready)[1]
                    break
                self._raise_dead(peers, what)
                self._wait(
                    deadline, f"{self.name} waited {deadline.seconds:.1f} s for {what} from {waited_for}; none arrived"
                )
            box = self._inbox[peer]
            box.claimed = True
            self._cond.notify_all()
            while box.message is None:
                self._raise_dead((peer,), what)
                self._wait(
                    deadline,
                    f"{self.name} waited {deadline.seconds:.1f} s for the rest of a message from {peer_name(peer)}",
                )
            message, box.message, box.header, box.claimed = box.message, None, None, False
            self._cond.notify_all()
        if expect is not None and message.kind != expect:
            raise TransportError(
                f"{self.name} expected a {expect.name} message from {peer_name(peer)}, got {message.kind.name}"
                f" (step {message.step})"
            )
        return peer, message

    def _raise_dead(self, peers: tuple[int, ...], what: str) -> None:
        """Raise when one of ``peers`` failed, or all have closed (call with ``_cond`` held)."""
        for peer in peers:
            box = self._inbox[peer]
            if box.error is not None:
                box.reported = True
                raise TransportError(
                    f"{self.name} waited for {what} from {peer_name(peer)}, but receiving from it failed: {box.error}"
                ) from box.error
        if all(self._inbox[peer].closed for peer in peers):
            names = " and ".join(peer_name(p) for p in peers)
            raise TransportError(
                f"{self.name} waited for {what} from {names}, but {'it has' if len(peers) == 1 else 'all have'} closed"
            )

    def _wait(self, deadline: Deadline, message: str) -> None:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise TransportTimeout(message)
        self._cond.wait(remaining)

    # -- helpers --------------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        return Deadline.after(seconds)

    def count(self, counters: dict[int, WireCounter], peer: int, frame: Frame) -> None:
        """Count a frame that crossed the wire to or from ``peer``."""
        with self._count_lock:
            counters[peer].add(frame)

    def _check_peer(self, peer: int) -> int:
        if peer not in self.peers:
            raise ValueError(f"Expected argument `peer` to be one of {list(self.peers)} for {self.name}, got {peer!r}.")
        return peer

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise TransportError(f"the transport of {self.name} is closed")


def _link_for(link: LinkSpec | Mapping[int, LinkSpec] | None, client: int) -> LinkSpec | None:
    if link is None or isinstance(link, LinkSpec):
        return link
    return link.get(client)


def _group_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = [
    "SERVER",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "WireCounter",
    "peer_name",
    "process_group_timeout",
]
