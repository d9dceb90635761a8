"""Activation and gradient codecs applied at the cut.

A codec turns a tensor into the payload that crosses the cut (one or more tensors, whose
bytes are what the communication accounting counts) and back. Everything is plain,
vectorised torch, so a codec runs on the device that produced the tensor.

========================  =======================================  =============================
name                      payload                                  bytes for ``n`` float32 values
========================  =======================================  =============================
``"none"``                the tensor as it is                      ``4 n``
``"fp16"`` / ``"bf16"``   the tensor cast to 16 bits               ``2 n``
``"int8"``                uint8 codes + float32 scale and offset   ``n + 8``
``"int8-channel"``        uint8 codes + a scale/offset per channel ``n + 8 C``
========================  =======================================  =============================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Payload:
    """What crosses the cut for one tensor: the encoded tensors and what decoding needs."""

    tensors: tuple[Tensor, ...]
    dtype: torch.dtype
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: every tensor at its real dtype and size."""
        return sum(t.numel() * t.element_size() for t in self.tensors)


class Codec(ABC):
    """Encodes a floating-point tensor for the cut and decodes it on the other side."""

    name: str = "codec"

    @abstractmethod
    def encode(self, tensor: Tensor) -> Payload:
        """Return the payload for ``tensor``."""

    @abstractmethod
    def decode(self, payload: Payload) -> Tensor:
        """Return a tensor of the original dtype and shape."""

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Raise a ``ValueError`` saying why this codec cannot carry tensors of ``dtype``."""
        if not dtype.is_floating_point:
            raise ValueError(f"codec {self.name!r} encodes only real floating-point tensors; use 'none'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IdentityCodec(Codec):
    """Sends the tensor as it is (``"none"``)."""

    name = "none"

    def encode(self, tensor: Tensor) -> Payload:  # noqa: D102
        return Payload((tensor,), tensor.dtype, tensor.shape)

    def decode(self, payload: Payload) -> Tensor:  # noqa: D102
        return payload.tensors[0]

    def check_dtype(self, dtype: torch.dtype) -> None:  # noqa: D102
        pass  # anything can be sent as it is


class CastCodec(Codec):
    """Casts to a 16-bit float for the wire and back to the original dtype (``"fp16"``, ``"bf16"``)."""

    def __init__(self, wire_dtype: torch.dtype) -> None:
        if wire_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"Expected argument `wire_dtype` to be torch.float16 or torch.bfloat16, got {wire_dtype}.")
        self.wire_dtype = wire_dtype
        self.name = "fp16" if wire_dtype == torch.float16 else "bf16"

    def encode(self, tensor: Tensor) -> Payload:  # noqa: D102
        return Payload((tensor.to(self.wire_dtype),), tensor.dtype, tensor.shape)

    def decode(self, payload: Payload) -> Tensor:  # noqa: D102
        return payload.tensors[0].to(payload.dtype)

    def check_dtype(self, dtype: torch.dtype) -> None:  # noqa: D102
        super().check_dtype(dtype)
        # float16 cannot hold bfloat16's exponent range: values past 65504 would become inf.
        if self.wire_dtype == torch.float16 and dtype == torch.bfloat16:
            raise ValueError(
                "codec 'fp16' cannot represent bfloat16 values (range up to 3.4e38 vs 65504); use 'bf16' or 'none'"
            )

    def __repr__(self) -> str:
        return f"CastCodec({self.wire_dtype})"


class Int8Codec(Codec):
    """Affine 8-bit quantization with a scale and an offset (the zero point, as a float).

    ``code = round((x - offset) / scale)`` in ``[0, 255]``, ``x ≈ code * scale + offset``; the error
    per element is at most ``scale / 2`` with ``scale = (max - min) / 255``.

    Args:
        per_channel: one scale and offset per channel (dim 1) instead of one per tensor.
    """

    def __init__(self, per_channel: bool = False) -> None:
        self.per_channel = per_channel
        self.name = "int8-channel" if per_channel else "int8"

    def encode(self, tensor: Tensor) -> Payload:  # noqa: D102
        x = tensor.detach().float()
        if self.per_channel and x.dim() >= 2:
            dims = [d for d in range(x.dim()) if d != 1]
            low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        else:
            low, high = x.min(), x.max()
        scale = ((high - low) / 255.0).clamp_min(torch.finfo(torch.float32).tiny)
        codes = ((x - low) / scale).round_().clamp_(0, 255).to(torch.uint8)
        return Payload((codes, scale.reshape(-1), low.reshape(-1)), tensor.dtype, tensor.shape)

    def decode(self, payload: Payload) -> Tensor:  # noqa: D102
        codes, scale, low = payload.tensors
        if scale.numel() > 1:
            view = [1] * codes.dim()
            view[1] = -1
            scale, low = scale.view(view), low.view(view)
        return (codes.float() * scale + low).to(payload.dtype)

    def __repr__(self) -> str:
        return f"Int8Codec(per_channel={self.per_channel})"


def available_codecs() -> list[str]:
    """Names accepted by :func:`get_codec`."""
    return ["none", "fp16", "bf16", "int8", "int8-channel"]


def check_codec_dtype(codec: Codec, dtype: torch.dtype, argument: str = "codec") -> None:
    """Raise a ``ValueError`` naming ``argument`` when ``codec`` cannot carry tensors of ``dtype``.

    Example::

        >>> check_codec_dtype(get_codec("fp16"), torch.bfloat16, "grad_codec")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `grad_codec` to be a codec that can carry torch.bfloat16 tensors, got 'fp16': ...
    """
    try:
        codec.check_dtype(dtype)
    except ValueError as err:
        reason = str(err).rstrip(".")
        raise ValueError(
            f"Expected argument `{argument}` to be a codec that can carry {dtype} tensors, got {codec.name!r}:"
            f" {reason}."
        ) from err


def get_codec(spec: str | Codec, argument: str = "codec") -> Codec:
    """Return the codec named by ``spec`` (or ``spec`` itself when it is a :class:`Codec`)."""
    if isinstance(spec, Codec):
        return spec
    factories = {
        "none": IdentityCodec,
        "fp16": lambda: CastCodec(torch.float16),
        "bf16": lambda: CastCodec(torch.bfloat16),
        "int8": lambda: Int8Codec(per_channel=False),
        "int8-channel": lambda: Int8Codec(per_channel=True),
    }
    if spec not in factories:
        raise ValueError(f"Expected argument `{argument}` to be one of {available_codecs()} or a Codec, got {spec!r}.")
    return factories[spec]()
