"""Link emulation: a slow client link, played on one machine by delaying sends.

This is an **emulation**, not a network: the sender sleeps until the moment a message would have
arrived over a link of the given bandwidth and latency, then hands it to the real (local, fast)
transport. It makes the bytes a codec or dsl saves visible in wall time on one machine; it models
neither congestion, nor loss, nor the receiver's own link, and sleeps are only as exact as the
operating system's timer (about a millisecond, more on a loaded machine).

The model, per direction of one client's link (uplink: client to server, downlink: server to client):

* **Serialization**: a message of ``n`` bytes (header, meta and tensors: everything on the wire)
  occupies the link for ``n * 8 / (bandwidth_mbps * 1e6)`` seconds. Messages on one link are
  serialized one after another, in the order they were sent; the link is idle until a message is
  handed to :meth:`Transport.send`, so serialization starts at ``max(send time, end of the previous
  message's serialization)``.
* **Propagation**: the message arrives ``latency_ms`` after its serialization ends. Latency does not
  hold the link: the next message is serialized while the previous one is still travelling, so
  ``K`` back-to-back messages of ``n`` bytes take ``K * n * 8 / bandwidth + latency``, not ``K``
  latencies.

The times are computed when a message is sent (a virtual clock per link) and the sender thread
sleeps until the head-of-line message is due. The transport's window (``max_in_flight``) counts
messages still travelling, so like a TCP window it caps the throughput at about ``max_in_flight``
messages per ``serialization + latency``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkSpec:
    """One direction of an emulated link.

    Args:
        bandwidth_mbps: bandwidth in Mbit/s (10**6 bits per second); ``None``: unlimited.
        latency_ms: one-way propagation delay in milliseconds.

    Example::

        >>> link = LinkSpec(bandwidth_mbps=8.0, latency_ms=20.0)
        >>> link.serialization_s(1_000_000)  # 1 MB at 8 Mbit/s
        1.0
        >>> LinkSpec(bandwidth_mbps=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `bandwidth_mbps` to be a positive number of Mbit/s or None, got 0.0.
    """

    bandwidth_mbps: float | None = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        bw = self.bandwidth_mbps
        if bw is not None and (isinstance(bw, bool) or not isinstance(bw, (int, float)) or not 0 < bw < math.inf):
            raise ValueError(
                f"Expected argument `bandwidth_mbps` to be a positive number of Mbit/s or None, got {bw!r}."
            )
        lat = self.latency_ms
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not 0 <= lat < math.inf:
            raise ValueError(f"Expected argument `latency_ms` to be a number of milliseconds >= 0, got {lat!r}.")

    def serialization_s(self, nbytes: int) -> float:
        """Seconds the link is busy sending ``nbytes``."""
        return 0.0 if self.bandwidth_mbps is None else nbytes * 8 / (self.bandwidth_mbps * 1e6)


class LinkClock:
    """The virtual clock of one emulated link direction: when each message is due at the receiver."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self._free_at = -math.inf  # when the link finishes serializing what it was given

    def schedule(self, nbytes: int, now: float) -> float:
        """Reserve the link for a message of ``nbytes`` sent at ``now``; return its arrival time."""
        start = max(now, self._free_at)
        self._free_at = start + self.spec.serialization_s(nbytes)
        return self._free_at + self.spec.latency_ms / 1000
