"""Who a peer is and what is waited for: the names, errors, deadlines and byte counters of the transport.

Rank 0 (:data:`SERVER`) is the server, rank ``i + 1`` client ``i``. Every wait of the caller has a
deadline (:class:`Deadline`) whose error (:class:`TransportTimeout`) names the peer, what was awaited and
for how long; a failed peer is a :class:`TransportError`. Bytes are counted per peer and direction
(:class:`WireCounter`), the tensors' bytes and the framing apart.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

import torch.distributed as dist

from lightning_dsl.distributed.wire import Frame

SERVER = 0


class TransportError(RuntimeError):
    """Communication with a peer failed (it died, closed, or sent something unexpected)."""


class TransportTimeout(TransportError, TimeoutError):
    """A wait on a peer ran past its timeout."""


def peer_name(rank: int) -> str:
    """``"server (rank 0)"`` or ``"client i (rank i+1)"``: clients are numbered from 0, as in :class:`Cut`."""
    return f"server (rank {rank})" if rank == SERVER else f"client {rank - 1} (rank {rank})"


@dataclass
class WireCounter:
    """Messages and bytes that crossed one direction of one pair (cumulative)."""

    messages: int = 0
    payload_bytes: int = 0  #: the tensors' bytes
    frame_bytes: int = 0  #: header and meta

    @property
    def bytes(self) -> int:
        """Everything on the wire."""
        return self.payload_bytes + self.frame_bytes

    def add(self, frame: Frame) -> None:
        """Count one frame."""
        self.messages += 1
        self.payload_bytes += frame.payload_nbytes
        self.frame_bytes += frame.nbytes - frame.payload_nbytes


@dataclass(frozen=True)
class Deadline:
    """The end of one wait: ``seconds`` allowed (for error messages), due at ``time.monotonic()`` = ``at``."""

    seconds: float  # what the caller allowed, for error messages
    at: float  # time.monotonic() by which the wait must end

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.at - time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(seconds, time.monotonic() + seconds)


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float, checked to be a positive number of seconds (argument ``timeout``)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"Expected argument `timeout` to be a positive number of seconds, got {timeout!r}.")
    return float(timeout)


def wait_all(ops: list[dist.P2POp]) -> None:
    """Run point-to-point operations together and wait for all of them."""
    for work in dist.batch_isend_irecv(ops):
        work.wait()


def process_group_timeout(timeout: float) -> datetime.timedelta:
    """The process group timeout to pair with a transport's ``timeout`` (at least 10 times longer).

    The transport's threads wait as long as the process group allows (a gloo timeout closes the pair
    for good); the transport's own deadlines, whose errors name the peer, should expire first.
    """
    return datetime.timedelta(seconds=max(10 * timeout, 300))


__all__ = [
    "SERVER",
    "Deadline",
    "TransportError",
    "TransportTimeout",
    "WireCounter",
    "check_timeout",
    "peer_name",
    "process_group_timeout",
    "wait_all",
]
