from __future__ import annotations

import doctest
import math

import pytest

from lightning_dsl.distributed import link
from lightning_dsl.distributed.link import LinkClock, LinkSpec


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("bandwidth_mbps", 0),
        ("bandwidth_mbps", -1.0),
        ("bandwidth_mbps", math.inf),
        ("bandwidth_mbps", "10"),
        ("latency_ms", -0.5),
        ("latency_ms", math.nan),
        ("latency_ms", None),
        ("latency_ms", True),
    ],
)
def test_bad_arguments_are_named(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`.*got {value!r}"):
        LinkSpec(**{argument: value})  # type: ignore[arg-type]


def test_serialization_is_bytes_over_bandwidth() -> None:
    assert LinkSpec(bandwidth_mbps=100).serialization_s(1_250_000) == pytest.approx(0.1)
    assert LinkSpec(bandwidth_mbps=None, latency_ms=5).serialization_s(10**9) == 0.0


def test_clock_serializes_back_to_back_and_pipelines_latency() -> None:
    clock = LinkClock(LinkSpec(bandwidth_mbps=8, latency_ms=500))  # 1 MB a second, half a second away
    # three 100 kB messages sent at once: serialized one after another, latency paid once
    assert [clock.schedule(100_000, now=10.0) for _ in range(3)] == pytest.approx([10.6, 10.7, 10.8])
    # the link idles until the next send: no credit for the idle time
    assert clock.schedule(100_000, now=20.0) == pytest.approx(20.6)


def test_doctests() -> None:
    assert doctest.testmod(link).failed == 0
