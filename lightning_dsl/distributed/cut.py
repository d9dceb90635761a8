"""The cut between processes: :class:`WireCut` sends and receives at the one seam, :meth:`Cut.transmit`.

A process runs one side of the cut. On a client, what the step sends up (``"batch"``,
``"state_up"``) is queued on the :class:`~lightning_dsl.distributed.Transport` and the client goes
on (it waits only while ``max_in_flight`` messages are not yet taken by the server); what comes down
(``"gradient"``, ``"state_down"``) is waited for. On the server it is the other way round. A batch
that the server's loader has already received (to know which client's comes next, or whether the
client waits for a gradient) is handed to the cut with :meth:`WireCut.deliver` and taken from there.

Both sides count the same bytes as the in-process :class:`~lightning_dsl.core.cut.Cut` (each side
counts what crossed when it crossed); the transport counts the framing on top
(:attr:`Transport.sent`, :attr:`Transport.received`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_dsl.core.cut import Cut, Parcel
from lightning_dsl.distributed.transport import SERVER, Transport
from lightning_dsl.distributed.wire import Kind, Message

_KINDS = {"batch": Kind.BATCH, "gradient": Kind.GRADIENT, "state_up": Kind.STATE, "state_down": Kind.STATE}
_SENT_BY_CLIENT = ("batch", "state_up")


@dataclass
class WireCut(Cut):
    """A :class:`~lightning_dsl.core.cut.Cut` for one side, whose :meth:`transmit` goes over a transport.

    Args:
        is_server: whether this process holds the server's side (rank 0).
        evaluator: on a client, whether its evaluation batches go up to the server (one client
            evaluates the split network; the others evaluate their own half and head alone).
        transport: this process's transport (set when the process group exists).

    Client ``i`` of the cut is rank ``i + 1``; on a client process the cut has one link, counted as
    client 0.
    """

    is_server: bool = False
    evaluator: bool = True
    transport: Transport | None = None
    _delivered: dict[int, Message] = field(default_factory=dict, repr=False)

    @property
    def sides(self) -> frozenset[str]:
        """``{"server"}`` on rank 0, ``{"client"}`` elsewhere."""
        return frozenset({"server"}) if self.is_server else frozenset({"client"})

    @property
    def sends_evaluation(self) -> bool:
        """A client's evaluation batches go up only if it is the evaluator; the server receives."""
        return self.evaluator

    @classmethod
    def replacing(cls, cut: Cut, is_server: bool, evaluator: bool = True) -> WireCut:
        """A wire cut with ``cut``'s codecs, byte counts, taps and client transform; its transport is set later."""
        return cls(
            codec=cut.codec,
            grad_codec=cut.grad_codec,
            traffic=cut.traffic,
            client_traffic=cut.client_traffic,
            taps=cut.taps,
            client_transform=cut.client_transform,
            is_server=is_server,
            evaluator=evaluator,
        )

    def deliver(self, client: int, message: Message) -> None:
        """Server: a ``BATCH`` from ``client`` that was received already; the next :meth:`receive_up` takes it."""
        self._delivered[client] = message

    def transmit(self, parcel: Parcel, client: int = 0) -> Parcel:
        """Send ``parcel`` if this side sends its kind, else receive one of that kind from the other side."""
        if self.transport is None:
            raise RuntimeError("WireCut.transport is not set: the split strategy sets it when the processes have met")
        peer = client + 1 if self.is_server else SERVER
        sends = (parcel.kind in _SENT_BY_CLIENT) != self.is_server
        if sends:
            self.transport.send(_message(parcel), peer)
            return parcel
        message = self._delivered.pop(client, None) if parcel.kind == "batch" else None
        if message is None:
            message = self.transport.recv(peer, expect=_KINDS[parcel.kind])
        return _parcel(parcel.kind, message)


def _message(parcel: Parcel) -> Message:
    """The wire message of a parcel: a batch's ``step`` says whether a gradient is awaited, a state's its weight."""
    step = int(parcel.reply) if parcel.kind == "batch" else parcel.weight
    return Message(_KINDS[parcel.kind], step, parcel.payloads, parcel.keys)


def _parcel(kind: str, message: Message) -> Parcel:
    if kind == "batch":
        return Parcel(kind, message.payloads, message.keys, reply=bool(message.step))  # keys: several tensors
    return Parcel(kind, message.payloads, message.keys, weight=message.step if kind == "state_up" else 0)
