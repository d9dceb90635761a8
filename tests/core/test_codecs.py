"""Codecs at the cut: exact bytes on the wire, round-trip error bounds, dtypes, and what each refuses."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_dsl.core.codecs import (
    CastCodec,
    Codec,
    IdentityCodec,
    Int8Codec,
    Payload,
    available_codecs,
    check_codec_dtype,
    get_codec,
)
from lightning_dsl.core.cut import Cut

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SHAPES = ((4, 6, 5, 5), (3, 7), (10,), (2, 3, 4))


def sample(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    return (3 * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1).to(dtype)


# ---------------------------------------------------------------------------------------------- bytes
def expected_bytes(codec: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = torch.Size(shape).numel()
    channels = shape[1] if len(shape) >= 2 else 1
    return {
        "none": n * dtype.itemsize,
        "fp16": 2 * n,
        "bf16": 2 * n,
        "int8": n + 4 + 4,  # uint8 codes, a float32 scale and a float32 offset
        "int8-channel": n + 2 * channels * 4,  # uint8 codes, a float32 scale and offset per channel (dim 1)
    }[codec]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("codec", available_codecs())
def test_payload_bytes_are_exact(codec: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    payload = get_codec(codec).encode(sample(shape, dtype))
    assert payload.nbytes == expected_bytes(codec, shape, dtype)
    assert (payload.dtype, payload.shape) == (dtype, torch.Size(shape))


def test_payload_bytes_by_hand() -> None:
    """The table of the codecs module, for a cut activation of shape (32, 16, 16, 16): n = 131,072."""
    z = torch.zeros(32, 16, 16, 16)
    assert [get_codec(name).encode(z).nbytes for name in available_codecs()] == [
        524_288,  # none: 4 n
        262_144,  # fp16: 2 n
        262_144,  # bf16: 2 n
        131_080,  # int8: n + 8
        131_200,  # int8-channel: n + 8 * 16
    ]


def test_payload_counts_every_tensor_at_its_own_dtype() -> None:
    payload = Payload(
        (torch.zeros(3, dtype=torch.uint8), torch.zeros(2), torch.zeros(1, dtype=torch.float64)),
        torch.float32,
        torch.Size([3]),
    )
    assert payload.nbytes == 3 + 8 + 8


def test_int8_payload_holds_uint8_codes_and_float32_scale_and_offset() -> None:
    codes, scale, offset = Int8Codec(per_channel=True).encode(sample((4, 6, 5, 5), torch.float64)).tensors
    assert (codes.dtype, codes.shape) == (torch.uint8, torch.Size([4, 6, 5, 5]))
    assert (scale.dtype, scale.shape, offset.dtype, offset.shape) == (torch.float32, (6,), torch.float32, (6,))


def test_cut_counts_the_encoded_bytes_and_the_labels() -> None:
    cut = Cut(codec="int8-channel", grad_codec="fp16")
    z, labels = sample((4, 6, 5, 5)), torch.tensor([0, 1, 2, 3])
    cut.send_up(z, labels)
    cut.send_down(z)
    cut.send_down(z)
    traffic = cut.traffic
    assert traffic.bytes_up == 600 + 2 * 6 * 4 + 4 * 8  # codes + scales/offsets + int64 labels
    assert traffic.bytes_down == 2 * 600 * 2
    assert (traffic.messages_up, traffic.messages_down) == (1, 2)


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_per_tensor_error_is_at_most_half_a_step(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = sample(shape, dtype)
    codec = Int8Codec()
    payload = codec.encode(x)
    scale = (x.max() - x.min()).item() / 255
    assert payload.tensors[1].item() == pytest.approx(scale, rel=1e-6)
    error = (codec.decode(payload) - x).abs()
    assert error.max().item() <= scale / 2 * (1 + 1e-4)
    assert error.max().item() > scale / 4  # the bound is nearly reached: the values really were quantized
    assert torch.unique(payload.tensors[0]).numel() > 1


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (3, 7), (2, 3, 4)])
def test_int8_per_channel_error_is_at_most_half_a_step_of_each_channel(shape: tuple[int, ...]) -> None:
    x = sample(shape, torch.float64)
    scales = torch.logspace(-3, 2, shape[1], dtype=torch.float64)  # channels of very different ranges
    x = x * scales.view(1, -1, *[1] * (len(shape) - 2))
    codec = Int8Codec(per_channel=True)
    payload = codec.encode(x)
    dims = [d for d in range(len(shape)) if d != 1]
    step = (x.amax(dim=dims) - x.amin(dim=dims)) / 255
    assert torch.allclose(payload.tensors[1].double(), step, rtol=1e-6, atol=0)
    error = (codec.decode(payload) - x).abs().amax(dim=dims)
    assert torch.all(error <= step / 2 * (1 + 1e-4))
    # per tensor, the smallest channel would be lost in one step of the largest
    per_tensor_error = (Int8Codec().decode(Int8Codec().encode(x)) - x).abs().amax(dim=dims)
    assert per_tensor_error[0] > 100 * error[0]


def test_int8_reproduces_the_extremes_and_a_constant_tensor() -> None:
    x = sample((5, 9))
    decoded = Int8Codec().decode(Int8Codec().encode(x))
    assert decoded.min().item() == pytest.approx(x.min().item(), abs=1e-5)
    assert decoded.max().item() == pytest.approx(x.max().item(), abs=1e-5)
    constant = torch.full((3, 4), -2.5)
    for codec in (Int8Codec(), Int8Codec(per_channel=True)):
        assert torch.equal(codec.decode(codec.encode(constant)), constant)  # no division by a zero scale


@pytest.mark.parametrize(("codec", "mantissa_bits"), [("fp16", 10), ("bf16", 7)])
def test_16_bit_casts_round_to_nearest(codec: str, mantissa_bits: int) -> None:
    x = sample((64, 32), torch.float64)
    decoded = get_codec(codec).decode(get_codec(codec).encode(x))
    relative = ((decoded - x).abs() / x.abs()).max().item()
    assert 2.0 ** -(mantissa_bits + 2) < relative <= 2.0 ** -(mantissa_bits + 1)


@pytest.mark.parametrize("codec", available_codecs())
@pytest.mark.parametrize("dtype", FLOATS)
def test_decode_gives_the_input_dtype_and_shape(codec: str, dtype: torch.dtype) -> None:
    x = sample((2, 3, 4), dtype)
    decoded = get_codec(codec).decode(get_codec(codec).encode(x))
    assert (decoded.dtype, decoded.shape) == (dtype, x.shape)


def test_encoding_detaches_from_the_graph() -> None:
    x = sample((2, 3)).requires_grad_()
    for name in ("fp16", "bf16", "int8", "int8-channel"):
        codec = get_codec(name)
        decoded = codec.decode(codec.encode(x.detach()))
        assert not decoded.requires_grad


# ---------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("dtype", [*FLOATS, torch.int64])
def test_identity_is_lossless_and_zero_copy(dtype: torch.dtype) -> None:
    x = sample((4, 5), dtype) if dtype.is_floating_point else torch.arange(20).view(4, 5)
    codec = IdentityCodec()
    payload = codec.encode(x)
    assert payload.tensors[0] is x and codec.decode(payload) is x
    assert payload.nbytes == x.numel() * x.element_size()


def test_identity_cut_hands_over_the_same_storage() -> None:
    z = sample((3, 4)).requires_grad_()
    received, labels = Cut().send_up(z, torch.tensor([0, 1, 2]))
    assert received.data_ptr() == z.data_ptr() and not received.requires_grad  # detached, not copied
    gradient = torch.ones(3, 4)
    assert Cut().send_down(gradient) is gradient


# ---------------------------------------------------------------------------------------------- names and dtypes
def test_names_build_the_documented_codecs() -> None:
    codecs = {name: get_codec(name) for name in available_codecs()}
    assert {name: codec.name for name, codec in codecs.items()} == {name: name for name in available_codecs()}
    assert isinstance(codecs["none"], IdentityCodec)
    assert isinstance(codecs["fp16"], CastCodec) and codecs["fp16"].wire_dtype == torch.float16
    assert isinstance(codecs["bf16"], CastCodec) and codecs["bf16"].wire_dtype == torch.bfloat16
    assert isinstance(codecs["int8"], Int8Codec) and not codecs["int8"].per_channel
    assert isinstance(codecs["int8-channel"], Int8Codec) and codecs["int8-channel"].per_channel
    mine = Int8Codec()
    assert get_codec(mine) is mine


def test_cast_codec_refuses_other_wire_dtypes() -> None:
    with pytest.raises(ValueError, match=r"`wire_dtype` to be torch.float16 or torch.bfloat16, got torch.float32"):
        CastCodec(torch.float32)


@pytest.mark.parametrize(
    ("codec", "refused"),
    [
        ("none", []),
        ("fp16", [torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.complex64]),
        ("bf16", [torch.int64, torch.uint8, torch.bool, torch.complex64]),
        ("int8", [torch.int64, torch.uint8, torch.bool, torch.complex64]),
        ("int8-channel", [torch.int64, torch.uint8, torch.bool, torch.complex64]),
    ],
)
def test_which_dtypes_each_codec_refuses(codec: str, refused: list[torch.dtype]) -> None:
    for dtype in [*FLOATS, torch.int64, torch.uint8, torch.bool, torch.complex64]:
        if dtype in refused:
            with pytest.raises(
                ValueError, match=rf"`grad_codec` to be a codec that can carry {dtype} tensors, got '{codec}'"
            ):
                check_codec_dtype(get_codec(codec), dtype, "grad_codec")
        else:
            check_codec_dtype(get_codec(codec), dtype, "grad_codec")


def test_a_users_codec_refusal_names_the_argument() -> None:
    class OnlyFloat32(IdentityCodec):
        name = "mine"

        def check_dtype(self, dtype: torch.dtype) -> None:
            if dtype != torch.float32:
                raise ValueError("float32 only.")  # its own full stop is not doubled

    with pytest.raises(
        ValueError,
        match=r"^Expected argument `codec` to be a codec that can carry torch\.float64 tensors,"
        r" got 'mine': float32 only\.$",
    ):
        check_codec_dtype(OnlyFloat32(), torch.float64)
    assert isinstance(OnlyFloat32(), Codec)
