"""The cut: the one seam through which everything passes between client and server.

Activations and labels go *up* (client to server), the gradient at the cut comes *down*
(server to client, only when the server gives feedback). Every such tensor goes through
:meth:`Cut.send_up` or :meth:`Cut.send_down`, which encode it with a codec, count its bytes
at their real dtype and size, hand the payload to :meth:`Cut.transmit` and decode what
arrives. In one process ``transmit`` hands the payload over as it is; a transport between
processes or machines overrides that one method.

With many clients, each client has its own link to the one server: every call names the
client (``client=i``), and the traffic is counted per client as well as in total. The models
that clients hand over (FedAvg's uploads and downloads, the sequential hand-over) cross the
same seam through :meth:`Cut.send_state_up` and :meth:`Cut.send_state_down`, counted apart as
*sync* traffic.

When client and server are separate processes, each holds a ``Cut`` for its own side only
(:attr:`Cut.sides`): the client sends what the server receives with :meth:`Cut.receive_up`, the
server sends what the client receives with :meth:`Cut.receive_down` and
:meth:`Cut.receive_state_down` (and the other way round for states). Both sides count the same
bytes. Everything that crosses is one :class:`Parcel` handed to :meth:`Cut.transmit`.

A :class:`CutTap` in :attr:`Cut.taps` sits on the server's side of the seam: it sees every training
batch of activations the server trains on and may replace every gradient before it is sent down (an
attack by a malicious server, a defense, a probe), without any change to the training step.
A :class:`ClientTransform` in :attr:`Cut.client_transform` sits on the client's side of the seam: it
shapes every batch the client sends up before the codec encodes it (a privacy defense: clipping and
noise on the activations, randomized labels), without any change to the training step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields

from torch import Tensor

from lightning_dsl.core.codecs import Codec, Payload, get_codec
from lightning_dsl.core.cut_tensors import CutTensors
from lightning_dsl.core.sequence import Activation, MaskedSequence, values_of

Gradient = Tensor | tuple[Tensor, ...]
"""The gradient at the cut: one tensor, or one per floating-point tensor of :class:`CutTensors`."""


@dataclass
class Traffic:
    """Bytes and messages that crossed the cut, by direction (cumulative since creation).

    ``bytes_*``: activations, labels and gradients; ``sync_bytes_*``: models handed over (client
    halves and auxiliary heads, for FedAvg or the sequential hand-over).
    """

    bytes_up: int = 0
    bytes_down: int = 0
    messages_up: int = 0
    messages_down: int = 0
    sync_bytes_up: int = 0
    sync_bytes_down: int = 0

    def copy(self) -> Traffic:
        """Return a snapshot."""
        return Traffic(**{f.name: getattr(self, f.name) for f in fields(self)})

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


BOTH_SIDES = frozenset({"client", "server"})


@dataclass(frozen=True)
class Arrival:
    """On a server whose clients run in other processes: client ``client``'s batch is at the cut.

    What the server's step gets in place of ``(inputs, labels)``; :meth:`Cut.receive_up` takes the
    batch itself. ``reply``: the client waits for this batch's gradient; ``samples``: its size.
    """

    client: int
    reply: bool = False
    samples: int = 0


class Arrivals:
    """A server's training batch across processes: the clients' batches of one step, taken as they are reached.

    Iterating receives them one by one (in client order, or as they arrive), so the server computes on
    one while the next is still on its way.
    """

    def __init__(self, arrivals: Iterator[Arrival]) -> None:
        self._arrivals = arrivals
        self.samples = 0  # of the arrivals taken so far

    def __iter__(self) -> Iterator[Arrival]:
        for arrival in self._arrivals:
            self.samples += arrival.samples
            yield arrival


class CutTap:
    """The server's side of the seam, observed: what arrives there and what is sent down from there.

    Subclass it and override either method (the defaults do nothing), then put an instance in
    :attr:`Cut.taps`. Taps run in the order of :attr:`Cut.taps`, only where the server runs, in the
    server's phase of a training step (so their time and memory count as the server's): each training
    batch that arrives (:meth:`Cut.tap_arrival`, called by the step before the server's forward) and
    each gradient sent down (:meth:`Cut.send_down`). Evaluation and prediction batches are not tapped.

    Example::

        >>> import torch
        >>> class Zero(CutTap):
        ...     def sending_down(self, gradient, client=0):
        ...         return torch.zeros_like(gradient)
        >>> cut = Cut(taps=[Zero()])
        >>> cut.send_down(torch.ones(2, 3))
        tensor([[0., 0., 0.],
                [0., 0., 0.]])
    """

    def arrived(self, activations: Activation, labels: Tensor, client: int = 0, reply: bool = False) -> None:
        """A training batch from ``client`` arrived at the server, decoded: what the server trains on next.

        ``reply``: the client waits for this batch's gradient (sl, hybrid's feedback batches).
        """

    def sending_down(self, gradient: Gradient, client: int = 0) -> Gradient:
        """The gradient the server is about to send ``client``; return what is sent instead (same shape)."""
        return gradient


class ClientTransform:
    """The client's side of the seam: what becomes of a batch after it leaves the client and before it is encoded.

    Subclass it and override either method (the defaults do nothing), then pass an instance as
    :attr:`Cut.client_transform`. :meth:`Cut.send_up` applies ``release(bound(activations), labels)`` to
    every batch it sends (training, evaluation and prediction alike); the bytes are counted after it, so a
    transform that keeps shapes and dtypes changes none.

    * :meth:`bound` is the deterministic part, applied with autograd: where the server's gradient comes
      back (sl, hybrid), the client's update flows through it (:meth:`Cut.bound_up`), so a clip is
      differentiated exactly.
    * :meth:`release` is the randomized part (noise, randomized labels), outside any graph: what it adds
      does not depend on the client's parameters.

    Example::

        >>> import torch
        >>> class Halve(ClientTransform):
        ...     def bound(self, activations):
        ...         return activations / 2
        >>> cut = Cut(client_transform=Halve())
        >>> cut.send_up(torch.ones(1, 2), torch.tensor([0]))[0]
        tensor([[0.5000, 0.5000]])
    """

    def bound(self, activations: Activation) -> Activation:
        """The deterministic, differentiable part (a clip); applied before :meth:`release`."""
        return activations

    def release(self, activations: Activation, labels: Tensor, client: int = 0) -> tuple[Activation, Tensor]:
        """The randomized part: what ``client`` sends of its bounded ``activations`` and its ``labels``."""
        return activations, labels

    def check_labels(self, labels: Tensor) -> None:
        """Refuse labels the transform cannot send, naming its own option (called for labels found invalid)."""


PARCEL_KINDS = ("batch", "gradient", "state_up", "state_down")


@dataclass(frozen=True)
class Parcel:
    """One crossing of the cut: what a message between the two sides carries.

    Args:
        kind: ``"batch"`` (activations and labels, up; with several tensors at the cut, ``keys`` names them
            and the labels), ``"gradient"`` (down), ``"state_up"`` or
            ``"state_down"`` (a model's state dict, with ``keys``).
        payloads: the encoded tensors.
        keys: a name per payload (a state dict's keys), or empty.
        reply: ``"batch"`` only: the client waits for the gradient of this batch (sl, hybrid feedback).
        weight: ``"state_up"`` only: the sender's weight in an average (its shard size).
    """

    kind: str
    payloads: tuple[Payload, ...] = ()
    keys: tuple[str, ...] = ()
    reply: bool = False
    weight: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of every payload, at their real dtype and size."""
        return sum(p.nbytes for p in self.payloads)


@dataclass
class Cut:
    """What crosses between client and server, encoded and counted.

    Args:
        codec: codec for the activations going up (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``,
            ``"int8-channel"`` or a :class:`~lightning_dsl.core.codecs.Codec`).
        grad_codec: codec for the gradient coming down.
        taps: :class:`CutTap` instances on the server's side of the seam, run in this order.
        client_transform: a :class:`ClientTransform` applied to every batch sent up, before its codec
            (keyword only).

    Attributes:
        traffic: everything that crossed, all clients together.
        client_traffic: what crossed on each client's link, by client index (created on first use).

    Example::

        >>> import torch
        >>> cut = Cut(codec="fp16")
        >>> z, y = cut.send_up(torch.ones(2, 3), torch.tensor([0, 1]))
        >>> cut.traffic.bytes_up  # 6 float16 values + 2 int64 labels
        28
    """

    codec: Codec | str = "none"
    grad_codec: Codec | str = "none"
    traffic: Traffic = field(default_factory=Traffic)
    client_traffic: dict[int, Traffic] = field(default_factory=dict)
    taps: list[CutTap] = field(default_factory=list)
    client_transform: ClientTransform | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        self.codec = get_codec(self.codec, "codec")
        self.grad_codec = get_codec(self.grad_codec, "grad_codec")

    @property
    def sides(self) -> frozenset[str]:
        """The sides this process runs: both in one process; ``{"client"}`` or ``{"server"}`` across processes."""
        return BOTH_SIDES

    @property
    def sends_evaluation(self) -> bool:
        """Whether this side's evaluation batches go up to a server (one client of many does so across processes)."""
        return True

    # ------------------------------------------------------------------ up: activations and labels
    def send_up(
        self, activations: Activation, labels: Tensor, client: int = 0, reply: bool = False
    ) -> tuple[Activation, Tensor]:
        """Client to server: the cut activations (detached from the client's graph) and the labels.

        A :class:`~lightning_dsl.core.sequence.MaskedSequence` sends its values through the codec and its
        padding mask exact (``bool``), counted with the rest. :class:`~lightning_dsl.core.cut_tensors.CutTensors`
        (a cut inside a skip connection) sends each tensor as its own payload, named in the parcel's ``keys``:
        the floating-point ones through the codec, the others exact. ``reply``: the client will wait for this
        batch's gradient (:meth:`receive_down`). The :attr:`client_transform`, if any, shapes the batch first.
        Returns what the server receives.
        """
        assert isinstance(self.codec, Codec)
        if self.client_transform is not None:
            bounded = self.client_transform.bound(activations.detach())
            activations, labels = self.client_transform.release(bounded, labels, client)
        keys: tuple[str, ...] = ()
        if isinstance(activations, CutTensors):
            payloads = [self._encoded(t.detach()) for t in activations]
            keys = (*_tensor_names(activations), "labels")
        else:
            payloads = [self.codec.encode(values_of(activations).detach())]
            if isinstance(activations, MaskedSequence):
                payloads.append(_exact(activations.mask))
        payloads.append(_exact(labels))
        parcel = self.transmit(Parcel("batch", tuple(payloads), keys, reply=reply), client)
        return self._arrived_up(parcel, client)

    def bound_up(self, activations: Activation) -> Activation:
        """The deterministic part of what :meth:`send_up` sends of ``activations``, with their graph.

        The client's update in sl and hybrid is differentiated through this: the gradient that comes
        down is the server loss's gradient at what was sent, whose noise does not depend on the client.
        Without a :attr:`client_transform`, ``activations`` themselves.
        """
        return activations if self.client_transform is None else self.client_transform.bound(activations)

    def receive_up(self, client: int = 0) -> tuple[Activation, Tensor]:
        """Server of a client in another process: the activations and labels that client sent up."""
        return self._arrived_up(self.transmit(Parcel("batch"), client), client)

    def _encoded(self, tensor: Tensor) -> Payload:
        """One of several tensors: a floating-point one through the codec, any other exact."""
        assert isinstance(self.codec, Codec)
        return self.codec.encode(tensor) if tensor.is_floating_point() else _exact(tensor)

    def _arrived_up(self, parcel: Parcel, client: int) -> tuple[Activation, Tensor]:
        assert isinstance(self.codec, Codec)
        self._count(client, bytes_up=parcel.nbytes, messages_up=1)
        *activation_payloads, label_payload = parcel.payloads
        if parcel.keys:  # several tensors, named: each decoded by the rule it was encoded by
            tensors = tuple(
                self.codec.decode(p) if p.dtype.is_floating_point else p.tensors[0] for p in activation_payloads
            )
            return CutTensors(tensors, parcel.keys[:-1]), label_payload.tensors[0]
        payload, *mask = activation_payloads  # a sequence's mask sits between values and labels
        values = self.codec.decode(payload)
        activations = MaskedSequence(values, mask[0].tensors[0]) if mask else values
        return activations, label_payload.tensors[0]

    def tap_arrival(self, activations: Activation, labels: Tensor, client: int = 0, reply: bool = False) -> None:
        """The server is about to train on a batch from ``client``: tell each of :attr:`taps`.

        The training step calls this on the server's side, inside the server's phase, with what arrived
        (decoded); ``reply``: a gradient goes down for this batch. Evaluation batches are not tapped.
        """
        for tap in self.taps:
            tap.arrived(activations, labels, client, reply)

    # ------------------------------------------------------------------ down: the gradient at the cut
    def send_down(self, gradient: Gradient, client: int = 0) -> Gradient:
        """Server to client: the gradient of the server loss with respect to the cut activations.

        With several tensors at the cut, a tuple: the gradient of each floating-point tensor, in order, each
        through the gradient codec. Each of :attr:`taps` may replace it first (:meth:`CutTap.sending_down`,
        which returns the same structure and shapes); what it returns is encoded, counted and sent.
        """
        assert isinstance(self.grad_codec, Codec)
        for tap in self.taps:
            replaced = tap.sending_down(gradient, client)
            given = (gradient,) if isinstance(gradient, Tensor) else tuple(gradient)
            got = (replaced,) if isinstance(replaced, Tensor) else tuple(replaced)
            shapes = [tuple(g.shape) for g in given], [tuple(g.shape) for g in got]
            if shapes[0] != shapes[1]:
                given_shape, got_shape = (s[0] if len(s) == 1 else s for s in shapes)
                raise ValueError(
                    f"Expected {type(tap).__name__}.sending_down to return a gradient of the shape it was given,"
                    f" {given_shape}, but got {got_shape}."
                )
            gradient = replaced
        gradients = (gradient,) if isinstance(gradient, Tensor) else gradient
        payloads = tuple(self.grad_codec.encode(g) for g in gradients)
        return self._arrived_down(self.transmit(Parcel("gradient", payloads), client), client)

    def receive_down(self, client: int = 0) -> Gradient:
        """Client of a server in another process: the gradient the server sent down for the last batch."""
        return self._arrived_down(self.transmit(Parcel("gradient"), client), client)

    def _arrived_down(self, parcel: Parcel, client: int) -> Gradient:
        assert isinstance(self.grad_codec, Codec)
        self._count(client, bytes_down=parcel.nbytes, messages_down=1)
        gradients = tuple(self.grad_codec.decode(p) for p in parcel.payloads)
        return gradients[0] if len(gradients) == 1 else gradients

    # ------------------------------------------------------------------ models handed over (sync traffic)
    def send_state_up(self, state: Mapping[str, Tensor], client: int = 0, weight: int = 0) -> dict[str, Tensor]:
        """Client to server: a model's state (a client half and its head), uncompressed, counted as sync traffic.

        ``weight``: the client's weight in the server's average (its shard size), carried along.
        """
        return self._arrived_state(self.transmit(_state_parcel("state_up", state, weight), client), client)

    def send_state_down(self, state: Mapping[str, Tensor], client: int = 0) -> dict[str, Tensor]:
        """Server to client: a model's state (the average, or the next client's hand-over), counted as sync traffic."""
        return self._arrived_state(self.transmit(_state_parcel("state_down", state), client), client)

    def receive_state_up(self, client: int = 0) -> tuple[dict[str, Tensor], int]:
        """Server of a client in another process: the state that client sent up, and its weight."""
        parcel = self.transmit(Parcel("state_up"), client)
        return self._arrived_state(parcel, client), parcel.weight

    def receive_state_down(self, client: int = 0) -> dict[str, Tensor]:
        """Client of a server in another process: the state the server sent down."""
        return self._arrived_state(self.transmit(Parcel("state_down"), client), client)

    def _arrived_state(self, parcel: Parcel, client: int) -> dict[str, Tensor]:
        direction = parcel.kind.removeprefix("state_")
        self._count(client, **{f"sync_bytes_{direction}": parcel.nbytes})
        return {key: payload.tensors[0] for key, payload in zip(parcel.keys, parcel.payloads, strict=True)}

    def _count(self, client: int, **amounts: int) -> None:
        link = self.client_traffic.setdefault(client, Traffic())
        for name, amount in amounts.items():
            setattr(self.traffic, name, getattr(self.traffic, name) + amount)
            setattr(link, name, getattr(link, name) + amount)

    def transmit(self, parcel: Parcel, client: int = 0) -> Parcel:
        """Deliver ``parcel`` between the server and ``client`` and return what arrives.

        In one process the parcel arrives as it is. A transport between processes overrides this one
        method: the sending side sends ``parcel`` (and returns it); the receiving side gets an empty
        parcel of the kind it waits for and returns the one that arrived.
        """
        return parcel


def _exact(tensor: Tensor) -> Payload:
    """A tensor that crosses as it is (labels, a padding mask, a state's entry): no codec."""
    return Payload((tensor.detach(),), tensor.dtype, tensor.shape)


def _tensor_names(activations: CutTensors) -> tuple[str, ...]:
    """A key per tensor: the names it carries, else its position (a key names each payload of the parcel)."""
    return activations.names or tuple(f"cut{i}" for i in range(len(activations)))


def _state_parcel(kind: str, state: Mapping[str, Tensor], weight: int = 0) -> Parcel:
    payloads = tuple(_exact(t) for t in state.values())
    return Parcel(kind, payloads, tuple(state), weight=weight)
