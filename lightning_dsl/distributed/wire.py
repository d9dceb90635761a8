"""Message framing: what one message between a client and the server looks like on the wire.

A :class:`Message` is a kind (:class:`Kind`), a step number, and zero or more
:class:`~lightning_dsl.core.codecs.Payload` s (a codec's output, a label tensor, one entry of a
state dict), with optional names (a state dict's keys) and a short text (the JSON of a hand-shake).
:func:`encode` turns it into a :class:`Frame`, the tensors that are actually sent, in this order:

1. **header**: ``int64[6]`` = ``[MAGIC, kind, step, descriptor_len, text_len, body_bytes]``. Fixed
   size, so a receiver can always post the first receive before it knows anything.
2. **meta** (only when the message has payloads or text): one ``uint8`` tensor holding the
   descriptor (``int64`` values: for each payload its dtype, shape and tensor count, then each
   tensor's dtype and shape) followed by the UTF-8 text. Its length comes from the header.
3. **body**: every tensor, flattened and viewed as ``uint8`` (no copy for a contiguous tensor), one
   send each; empty tensors are not sent at all.

Why a small fixed header followed by a variable descriptor rather than one fixed-size header: a
fixed header large enough for any state dict (hundreds of tensors, each with its shape) would cost
kilobytes on every activation message and still cap the tensor count and rank; the two-step form
costs 48 bytes for a marker and grows only with what the message describes. Sending each tensor as
raw bytes keeps the transport independent of what a backend supports per dtype (``bool``,
``bfloat16``): the receiver allocates ``uint8`` buffers of the announced sizes and views them back.

Example::

    >>> import torch
    >>> message = Message.from_state({"w": torch.ones(2, 3), "b": torch.zeros(3)}, step=4)
    >>> frame = encode(message)
    >>> frame.payload_nbytes, frame.nbytes - frame.payload_nbytes  # tensor bytes, framing bytes
    (36, 216)
    >>> received = decode(frame.header, frame.meta, frame.body)
    >>> received.kind, received.step, sorted(received.state_dict())
    (<Kind.STATE: 3>, 4, ['b', 'w'])
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_dsl.core.codecs import Payload

MAGIC = 0x44534C31  # "DSL1": a receiver that reads anything else is out of step with its peer
HEADER_LEN = 6
HEADER_NBYTES = HEADER_LEN * 8

# Stable codes for the dtypes that may cross the wire (the order must never change).
DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.complex128,
)
_DTYPE_CODE = {dtype: code for code, dtype in enumerate(DTYPES)}


class Kind(enum.IntEnum):
    """What a message is for. The transport itself uses only ``CLOSE`` (its last message to a peer)."""

    HELLO = 1  #: start-up check: a JSON config, and the server's answer
    BATCH = 2  #: client to server: the cut activations' payload and the labels' payload
    STATE = 3  #: a model's state dict (FedAvg upload/download, sequential hand-over)
    GRADIENT = 4  #: server to client: the gradient at the cut (sl only)
    EPOCH_END = 5  #: a client has sent its last batch of the epoch
    EVAL_BEGIN = 6  #: evaluation batches follow (no gradient will come back); JSON: how many
    EVAL_END = 7  #: evaluation is over
    STOP = 8  #: training is over; the receiver should stop asking for messages
    CLOSE = 9  #: sent by ``Transport.close``; never returned by ``recv``
    EPOCH_BEGIN = 10  #: a client starts a training epoch; JSON: how many batches it will send


@dataclass(frozen=True)
class Message:
    """One message between a client and the server.

    Args:
        kind: what the message is for.
        step: a small sequence number (the batch index, the epoch), carried as-is.
        payloads: the tensors, grouped as payloads (each keeps what its codec needs to decode it).
        keys: a name per payload (a state dict's keys), or empty.
        text: a short text (JSON), e.g. the configuration of a hand-shake.
    """

    kind: Kind
    step: int = 0
    payloads: tuple[Payload, ...] = ()
    keys: tuple[str, ...] = ()
    text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            raise ValueError(f"Expected argument `kind` to be a Kind, got {self.kind!r}.")
        if self.keys and len(self.keys) != len(self.payloads):
            raise ValueError(
                f"Expected argument `keys` to name every payload ({len(self.payloads)}), got {len(self.keys)} keys."
            )

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], step: int = 0) -> Message:
        """A ``STATE`` message: each entry one payload, as :meth:`Cut.send_state_up` counts it."""
        payloads = tuple(Payload((t.detach(),), t.dtype, t.shape) for t in state.values())
        return cls(Kind.STATE, step, payloads, tuple(state))

    @classmethod
    def from_json(cls, kind: Kind, obj: Any, step: int = 0) -> Message:
        """A message whose content is ``obj`` as JSON (``HELLO``)."""
        return cls(kind, step, text=json.dumps(obj, sort_keys=True))

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """Every tensor of every payload, in wire order."""
        return tuple(t for p in self.payloads for t in p.tensors)

    @property
    def payload_nbytes(self) -> int:
        """Bytes of the tensors alone (what :class:`~lightning_dsl.core.cut.Cut` counts)."""
        return sum(p.nbytes for p in self.payloads)

    def state_dict(self) -> dict[str, Tensor]:
        """The state dict of a ``STATE`` message."""
        if not self.keys and self.payloads:
            raise ValueError(f"a {self.kind.name} message without keys is not a state dict")
        return {key: p.tensors[0] for key, p in zip(self.keys, self.payloads, strict=True)}

    def json(self) -> Any:
        """The text, parsed as JSON."""
        return json.loads(self.text)


@dataclass(frozen=True)
class Frame:
    """The tensors that carry one message: ``header`` always, ``meta`` when not empty, then ``body``."""

    header: Tensor
    meta: Tensor
    body: tuple[Tensor, ...]

    @property
    def payload_nbytes(self) -> int:
        """Bytes of the message's tensors."""
        return sum(t.numel() for t in self.body)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: header, meta and body."""
        return HEADER_NBYTES + self.meta.numel() + self.payload_nbytes


def dtype_code(dtype: torch.dtype) -> int:
    """The wire code of ``dtype``; a ``ValueError`` names the dtypes that can be sent."""
    if dtype not in _DTYPE_CODE:
        raise ValueError(f"Expected a tensor of one of {[str(d) for d in DTYPES]} to send, got {dtype}.")
    return _DTYPE_CODE[dtype]


def _as_bytes(tensor: Tensor) -> Tensor:
    # reshape(-1) makes 0-d tensors 1-d, which view(uint8) needs; contiguous() copies only when needed.
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def encode(message: Message, device: torch.device | str = "cpu", copy: bool = False) -> Frame:
    """The frame of ``message``, its tensors on ``device`` (the process group's).

    With ``copy=True`` the body never shares memory with the message's tensors, so their owner may
    change them (an optimizer step on a state just sent) while the frame waits to be sent.
    """
    descriptor: list[int] = [len(message.payloads)] if message.payloads else []
    for payload in message.payloads:
        descriptor += [dtype_code(payload.dtype), len(payload.shape), *payload.shape, len(payload.tensors)]
        for tensor in payload.tensors:
            descriptor += [dtype_code(tensor.dtype), tensor.dim(), *tensor.shape]
    text = json.dumps({"keys": list(message.keys), "text": message.text}) if message.keys or message.text else ""
    text_bytes = text.encode("utf-8")
    meta = torch.cat(
        [
            torch.tensor(descriptor, dtype=torch.int64).view(torch.uint8),
            torch.tensor(list(text_bytes), dtype=torch.uint8),
        ]
    )
    body = tuple(_as_bytes(t).to(device, copy=copy) for t in message.tensors if t.numel() > 0)
    header = torch.tensor(
        [MAGIC, int(message.kind), message.step, len(descriptor), len(text_bytes), sum(b.numel() for b in body)],
        dtype=torch.int64,
    )
    return Frame(header.to(device), meta.to(device), body)


@dataclass(frozen=True)
class Header:
    """A received header, read: enough to allocate the rest of the message."""

    kind: Kind
    step: int
    descriptor_len: int
    text_len: int
    body_nbytes: int

    @property
    def meta_nbytes(self) -> int:
        """Bytes of the meta tensor that follows the header (0: none follows)."""
        return 8 * self.descriptor_len + self.text_len


def read_header(header: Tensor) -> Header:
    """Check and read a received header; a ``ValueError`` when it is not one of ours."""
    values = header.cpu().tolist()
    if len(values) != HEADER_LEN or values[0] != MAGIC:
        raise ValueError(f"received a header that is not a lightning_dsl message: {values[:HEADER_LEN]}")
    try:
        kind = Kind(values[1])
    except ValueError:
        raise ValueError(f"received a header of unknown message kind {values[1]}") from None
    return Header(kind, values[2], values[3], values[4], values[5])


def body_specs(header: Header, meta: Tensor) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    """The dtype and shape of each body tensor, from the meta that followed ``header``."""
    descriptor = _descriptor(header, meta)
    specs = []
    for payload in _parse(descriptor):
        specs += payload[2]
    return specs


def body_buffers(header: Header, meta: Tensor, device: torch.device | str = "cpu") -> list[Tensor]:
    """Empty ``uint8`` buffers for the body tensors that are sent (the non-empty ones)."""
    sizes = [_numel(shape) * _itemsize(dtype) for dtype, shape in body_specs(header, meta)]
    return [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes if n > 0]


def decode(header: Tensor, meta: Tensor, body: Sequence[Tensor]) -> Message:
    """Rebuild the message from its frame's tensors (the receiver's buffers)."""
    head = read_header(header)
    descriptor = _descriptor(head, meta)
    received = iter(body)
    payloads = []
    for dtype, shape, specs in _parse(descriptor):
        tensors = []
        for t_dtype, t_shape in specs:
            if _numel(t_shape) == 0:
                tensors.append(torch.empty(t_shape, dtype=t_dtype, device=meta.device))
            else:
                tensors.append(next(received).view(t_dtype).reshape(t_shape))
        payloads.append(Payload(tuple(tensors), dtype, torch.Size(shape)))
    keys: tuple[str, ...] = ()
    text = ""
    if head.text_len:
        parsed = json.loads(bytes(meta[8 * head.descriptor_len :].cpu().tolist()).decode("utf-8"))
        keys, text = tuple(parsed["keys"]), parsed["text"]
    return Message(head.kind, head.step, tuple(payloads), keys, text)


def _descriptor(header: Header, meta: Tensor) -> list[int]:
    if meta.numel() != header.meta_nbytes:
        raise ValueError(f"received {meta.numel()} bytes of message meta, the header announced {header.meta_nbytes}")
    raw = meta[: 8 * header.descriptor_len].cpu()
    return raw.view(torch.int64).tolist() if header.descriptor_len else []


def _parse(
    descriptor: list[int],
) -> list[tuple[torch.dtype, tuple[int, ...], list[tuple[torch.dtype, tuple[int, ...]]]]]:
    """(payload dtype, payload shape, [(tensor dtype, tensor shape), ...]) for each payload."""
    if not descriptor:
        return []
    values = iter(descriptor[1:])

    def shape() -> tuple[int, ...]:
        ndim = next(values)
        return tuple(next(values) for _ in range(ndim))

    payloads = []
    for _ in range(descriptor[0]):
        dtype, p_shape = DTYPES[next(values)], shape()
        specs = [(DTYPES[next(values)], shape()) for _ in range(next(values))]
        payloads.append((dtype, p_shape, specs))
    return payloads


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
