"""Transport between a split-learning server and its clients in separate processes (torch-only).

The foundation of the multi-process split strategy, not yet wired into the Lightning module: rank 0
of the default process group is the server, ranks ``1..N`` are clients (client ``i`` is rank
``i + 1``). Everything that crosses the cut travels as a :class:`Message` (:mod:`.wire`): a kind, a
step number and payloads, framed by a fixed 48-byte header so that the receiver can allocate before
it receives.

Design (:mod:`.transport`): per peer, a sender thread sends queued messages in order, so compute
overlaps communication, with at most ``max_in_flight`` messages not yet taken by the peer (``send``
waits beyond that, bounding memory); a listener thread takes headers as they come, so the server can
receive in client order or in arrival order. Threads wait as long as the process group's timeout
(a gloo timeout closes the pair for good); every wait of the caller has its own timeout whose error
names the peer, what was awaited and for how long; a thread's failure (a dead peer) is raised by the
next call that concerns that peer. Bytes are counted per peer and direction, tensors and framing
apart, as they go on the wire. :class:`LinkSpec` emulates a client's slower link by sleeping
(:mod:`.link`), and :func:`handshake` checks at start-up that all processes run the same
configuration.
"""

from lightning_dsl.distributed.handshake import check_world_size, config_mismatches, handshake
from lightning_dsl.distributed.link import LinkSpec
from lightning_dsl.distributed.transport import (
    SERVER,
    Transport,
    TransportError,
    TransportTimeout,
    WireCounter,
    peer_name,
    process_group_timeout,
)
from lightning_dsl.distributed.wire import Kind, Message, decode, encode

__all__ = [
    "SERVER",
    "Kind",
    "LinkSpec",
    "Message",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "WireCounter",
    "check_world_size",
    "config_mismatches",
    "decode",
    "encode",
    "handshake",
    "peer_name",
    "process_group_timeout",
]
