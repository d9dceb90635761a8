from __future__ import annotations

import doctest

import pytest
import torch

from lightning_dsl.core.codecs import Payload, get_codec
from lightning_dsl.distributed import wire
from lightning_dsl.distributed.wire import HEADER_NBYTES, Kind, Message, body_buffers, decode, encode, read_header


def round_trip(message: Message) -> Message:
    """Encode, copy into fresh buffers as a receiver would allocate them, decode."""
    frame = encode(message)
    header = read_header(frame.header.clone())
    meta = frame.meta.clone()
    buffers = body_buffers(header, meta)
    assert [b.numel() for b in buffers] == [b.numel() for b in frame.body]
    for buffer, sent in zip(buffers, frame.body, strict=True):
        buffer.copy_(sent)
    return decode(frame.header.clone(), meta, buffers)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.uint8, torch.float64, torch.bool]


def example(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)])
def test_every_dtype_and_shape_round_trips_bit_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = example(dtype, shape)
    received = round_trip(Message(Kind.BATCH, 5, (Payload((tensor,), dtype, tensor.shape),)))
    (payload,) = received.payloads
    assert (received.kind, received.step, payload.dtype, payload.shape) == (Kind.BATCH, 5, dtype, tensor.shape)
    assert same_bits(payload.tensors[0], tensor)


def test_nan_inf_and_negative_zero_keep_their_bits() -> None:
    tensor = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])
    assert same_bits(
        round_trip(Message(Kind.GRADIENT, payloads=(Payload((tensor,), tensor.dtype, tensor.shape),)))
        .payloads[0]
        .tensors[0],
        tensor,
    )


@pytest.mark.parametrize(
    "make", [lambda x: x.t(), lambda x: x[:, ::2], lambda x: x.expand(3, 4, 5)[1], lambda x: x.unsqueeze(0)[..., 1:]]
)
def test_non_contiguous_tensors_arrive_with_their_values(make: object) -> None:
    base = torch.arange(20.0).reshape(4, 5)
    tensor = make(base)  # type: ignore[operator]
    (payload,) = round_trip(Message(Kind.BATCH, payloads=(Payload((tensor,), tensor.dtype, tensor.shape),))).payloads
    assert payload.tensors[0].is_contiguous() and torch.equal(payload.tensors[0], tensor)


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16", "int8", "int8-channel"])
def test_codec_payloads_decode_after_the_trip(codec: str) -> None:
    x = torch.randn(4, 3, 5, 5)
    payload = get_codec(codec).encode(x)
    labels = torch.tensor([1, 0, 3, 2])
    message = Message(Kind.BATCH, 1, (payload, Payload((labels,), labels.dtype, labels.shape)))
    received = round_trip(message)
    assert torch.equal(get_codec(codec).decode(received.payloads[0]), get_codec(codec).decode(payload))
    assert torch.equal(received.payloads[1].tensors[0], labels)
    assert received.payload_nbytes == message.payload_nbytes == payload.nbytes + labels.numel() * 8


def test_state_dict_keeps_keys_order_and_values() -> None:
    state = {
        "layer1.0.conv1.weight": torch.randn(4, 3, 3, 3),
        "bn.num_batches_tracked": torch.tensor(7),
        "ü-key": torch.ones(2, dtype=torch.bfloat16),
    }
    received = round_trip(Message.from_state(state, step=2)).state_dict()
    assert list(received) == list(state)
    assert all(same_bits(received[k], v) for k, v in state.items())


def test_hello_json_round_trips() -> None:
    config = {"mode": "dsl", "split": 3, "codec": "fp16", "links": [1.5, None]}
    assert round_trip(Message.from_json(Kind.HELLO, config)).json() == config


def test_frame_bytes_are_header_meta_and_tensors() -> None:
    marker = encode(Message(Kind.EPOCH_END, step=3))
    assert (marker.nbytes, marker.payload_nbytes, marker.meta.numel()) == (HEADER_NBYTES, 0, 0) == (48, 0, 0)
    x = torch.randn(2, 3)
    frame = encode(Message(Kind.BATCH, payloads=(Payload((x,), x.dtype, x.shape),)))
    # descriptor: [1 payload, dtype, ndim=2, 2, 3, 1 tensor, dtype, ndim=2, 2, 3] = 10 int64
    assert (frame.payload_nbytes, frame.meta.numel(), frame.nbytes) == (24, 80, 48 + 80 + 24)


def test_copy_detaches_the_frame_from_the_tensors() -> None:
    x = torch.zeros(3)
    message = Message(Kind.BATCH, payloads=(Payload((x,), x.dtype, x.shape),))
    shared, copied = encode(message), encode(message, copy=True)
    x.add_(1)
    assert shared.body[0].view(torch.float32).tolist() == [1, 1, 1]
    assert copied.body[0].view(torch.float32).tolist() == [0, 0, 0]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="`keys` to name every payload"):
        Message(Kind.STATE, payloads=(Payload((torch.ones(1),), torch.float32, torch.Size([1])),), keys=("a", "b"))
    with pytest.raises(ValueError, match="got torch.uint16"):
        encode(
            Message(
                Kind.BATCH, payloads=(Payload((torch.ones(1, dtype=torch.uint16),), torch.float32, torch.Size([1])),)
            )
        )
    with pytest.raises(ValueError, match="not a lightning_dsl message"):
        read_header(torch.zeros(6, dtype=torch.int64))
    header = encode(Message(Kind.STOP)).header.clone()
    header[1] = 77
    with pytest.raises(ValueError, match="unknown message kind 77"):
        read_header(header)


def test_doctests() -> None:
    assert doctest.testmod(wire).failed == 0
