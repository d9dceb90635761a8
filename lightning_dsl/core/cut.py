"""The cut: the one seam through which everything passes between client and server.

Activations and labels go *up* (client to server), the gradient at the cut comes *down*
(server to client, only when the server gives feedback). Every such tensor goes through
:meth:`Cut.send_up` or :meth:`Cut.send_down`, which encode it with a codec, count its bytes
at their real dtype and size, hand the payload to :meth:`Cut.transmit` and decode what
arrives. In one process ``transmit`` hands the payload over as it is; a transport between
processes or machines overrides that one method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from lightning_dsl.core.codecs import Codec, Payload, get_codec


@dataclass
class Traffic:
    """Bytes and messages that crossed the cut, by direction (cumulative since creation)."""

    bytes_up: int = 0
    bytes_down: int = 0
    messages_up: int = 0
    messages_down: int = 0

    def copy(self) -> Traffic:
        """Return a snapshot."""
        return Traffic(self.bytes_up, self.bytes_down, self.messages_up, self.messages_down)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.bytes_up - other.bytes_up,
            self.bytes_down - other.bytes_down,
            self.messages_up - other.messages_up,
            self.messages_down - other.messages_down,
        )


@dataclass
class Cut:
    """What crosses between client and server, encoded and counted.

    Args:
        codec: codec for the activations going up (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``,
            ``"int8-channel"`` or a :class:`~lightning_dsl.core.codecs.Codec`).
        grad_codec: codec for the gradient coming down.

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

    def __post_init__(self) -> None:
        self.codec = get_codec(self.codec, "codec")
        self.grad_codec = get_codec(self.grad_codec, "grad_codec")

    def send_up(self, activations: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Client to server: the cut activations (detached from the client's graph) and the labels."""
        assert isinstance(self.codec, Codec)
        payload = self.codec.encode(activations.detach())
        label_payload = Payload((labels,), labels.dtype, labels.shape)
        self.traffic.bytes_up += payload.nbytes + label_payload.nbytes
        self.traffic.messages_up += 1
        payload, label_payload = self.transmit(payload), self.transmit(label_payload)
        return self.codec.decode(payload), label_payload.tensors[0]

    def send_down(self, gradient: Tensor) -> Tensor:
        """Server to client: the gradient of the server loss with respect to the cut activations."""
        assert isinstance(self.grad_codec, Codec)
        payload = self.grad_codec.encode(gradient)
        self.traffic.bytes_down += payload.nbytes
        self.traffic.messages_down += 1
        return self.grad_codec.decode(self.transmit(payload))

    def transmit(self, payload: Payload) -> Payload:
        """Deliver a payload to the other side. In-process: nothing to do; a transport overrides this."""
        return payload
