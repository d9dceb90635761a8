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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from torch import Tensor

from lightning_dsl.core.codecs import Codec, Payload, get_codec


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


@dataclass
class Cut:
    """What crosses between client and server, encoded and counted.

    Args:
        codec: codec for the activations going up (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``,
            ``"int8-channel"`` or a :class:`~lightning_dsl.core.codecs.Codec`).
        grad_codec: codec for the gradient coming down.

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

    def __post_init__(self) -> None:
        self.codec = get_codec(self.codec, "codec")
        self.grad_codec = get_codec(self.grad_codec, "grad_codec")

    def send_up(self, activations: Tensor, labels: Tensor, client: int = 0) -> tuple[Tensor, Tensor]:
        """Client to server: the cut activations (detached from the client's graph) and the labels."""
        assert isinstance(self.codec, Codec)
        payload = self.codec.encode(activations.detach())
        label_payload = Payload((labels,), labels.dtype, labels.shape)
        self._count(client, bytes_up=payload.nbytes + label_payload.nbytes, messages_up=1)
        payload, label_payload = self.transmit(payload, client), self.transmit(label_payload, client)
        return self.codec.decode(payload), label_payload.tensors[0]

    def send_down(self, gradient: Tensor, client: int = 0) -> Tensor:
        """Server to client: the gradient of the server loss with respect to the cut activations."""
        assert isinstance(self.grad_codec, Codec)
        payload = self.grad_codec.encode(gradient)
        self._count(client, bytes_down=payload.nbytes, messages_down=1)
        return self.grad_codec.decode(self.transmit(payload, client))

    def send_state_up(self, state: Mapping[str, Tensor], client: int = 0) -> dict[str, Tensor]:
        """Client to server: a model's state (a client half and its head), uncompressed, counted as sync traffic."""
        return self._send_state(state, client, "up")

    def send_state_down(self, state: Mapping[str, Tensor], client: int = 0) -> dict[str, Tensor]:
        """Server to client: a model's state (the average, or the next client's hand-over), counted as sync traffic."""
        return self._send_state(state, client, "down")

    def _send_state(self, state: Mapping[str, Tensor], client: int, direction: str) -> dict[str, Tensor]:
        arrived = {}
        for key, tensor in state.items():
            payload = Payload((tensor.detach(),), tensor.dtype, tensor.shape)
            self._count(client, **{f"sync_bytes_{direction}": payload.nbytes})
            arrived[key] = self.transmit(payload, client).tensors[0]
        return arrived

    def _count(self, client: int, **amounts: int) -> None:
        link = self.client_traffic.setdefault(client, Traffic())
        for name, amount in amounts.items():
            setattr(self.traffic, name, getattr(self.traffic, name) + amount)
            setattr(link, name, getattr(link, name) + amount)

    def transmit(self, payload: Payload, client: int = 0) -> Payload:
        """Deliver a payload between the server and ``client``. In-process: nothing to do; transports override it."""
        return payload
