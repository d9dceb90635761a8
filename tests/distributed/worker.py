"""One process of a transport test world; run as a script by ``launch.run_world``.

    python tests/distributed/worker.py SCENARIO OUT_DIR

``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` come from the environment. Each
scenario returns a JSON-able dict of what it observed (timings, error texts, checks), written to
``OUT_DIR/rank<r>.json``; the test asserts on it. An unexpected exception ends the process with a
traceback and a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightning_dsl.core.codecs import Payload
from lightning_dsl.core.cut import Cut, Parcel
from lightning_dsl.distributed import (
    SERVER,
    Kind,
    LinkSpec,
    Message,
    Transport,
    encode,
    handshake,
    process_group_timeout,
)

CONFIG = {"model": "resnet20", "split": 3, "mode": "dsl", "codec": "fp16", "num_clients": 2}
TIMEOUT = 20.0  # the transports' default; every scenario that expects a timeout sets a short one


def STATE() -> dict[str, torch.Tensor]:  # noqa: N802 - a constant, fresh each call
    return {"a.weight": torch.ones(2, 2), "b.bias": torch.arange(3.0)}


def sample_payloads(seed: int) -> tuple[Payload, ...]:
    """Payloads of every dtype the codecs use, plus 0-d, empty and non-contiguous tensors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, generator=g)
    codes = torch.randint(0, 256, (2, 3, 4), generator=g, dtype=torch.uint8)
    return (
        Payload((x,), x.dtype, x.shape),
        Payload((x.half(),), torch.float32, x.shape),
        Payload((x.bfloat16(),), torch.float32, x.shape),
        Payload((codes, torch.rand(1, generator=g), torch.rand(1, generator=g)), torch.float32, codes.shape),
        Payload((x.double(), (x > 0)), torch.float64, x.shape),
        Payload((torch.randint(-128, 128, (7,), generator=g, dtype=torch.int8),), torch.int8, torch.Size([7])),
        Payload((torch.randint(0, 10, (4,), generator=g),), torch.int64, torch.Size([4])),
        Payload((torch.tensor(2.5), torch.empty(0, 3)), torch.float32, torch.Size([])),
        Payload((x.t(), x[:, ::2]), torch.float32, x.shape),  # non-contiguous
    )


def same_bits(a: Payload, b: Payload) -> bool:
    if (a.dtype, a.shape, len(a.tensors)) != (b.dtype, b.shape, len(b.tensors)):
        return False
    for s, t in zip(a.tensors, b.tensors, strict=True):
        if s.dtype != t.dtype or s.shape != t.shape:
            return False
        if s.numel() and not torch.equal(s.contiguous().reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)):
            return False
    return True


def frame_bytes(message: Message) -> int:
    return encode(message).nbytes


def counters(transport: Transport) -> dict[str, Any]:
    return {
        f"{direction}_{peer}": [c.messages, c.payload_bytes, c.frame_bytes]
        for direction, table in (("sent", transport.sent), ("received", transport.received))
        for peer, c in table.items()
    }


def error_text(call: Callable[[], object]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the test asserts on the type and text
        return {"type": type(err).__name__, "text": str(err), "elapsed": time.monotonic() - start}
    return {"type": None, "text": "", "elapsed": time.monotonic() - start}


# -- scenarios ----------------------------------------------------------------------------------


def basic(rank: int) -> dict[str, Any]:
    """World of 3: order and bits, counters against Cut, arrival and client order, hand-shake, close."""
    transport = Transport(max_in_flight=2, timeout=TIMEOUT)
    out: dict[str, Any] = {}
    config = CONFIG
    handshake(transport, config)  # all agree
    wrong = dict(config, mode="sl", codec="none") if rank == 2 else config
    out["mismatch"] = error_text(lambda: handshake(transport, wrong))
    out["world_size"] = error_text(lambda: handshake(transport, dict(config, num_clients=3)))
    if rank == SERVER:
        # In order and bit-exact: 6 messages from client 0, each every dtype.
        out["exact"] = []
        for step in range(6):
            message = transport.recv(1, expect=Kind.BATCH)
            expected = sample_payloads(step)
            out["exact"].append(
                message.step == step and all(same_bits(a, b) for a, b in zip(message.payloads, expected, strict=True))
            )
        state = transport.recv(1, expect=Kind.STATE).state_dict()
        out["state"] = sorted(state) == ["a.weight", "b.bias"] and torch.equal(state["b.bias"], torch.arange(3.0))
        # The seam: what a Cut counted on client 1, as received here.
        before = transport.received[2].payload_bytes
        for _ in range(2):  # one parcel per crossing: activations + labels, then the state
            transport.recv(2, expect=Kind.BATCH)
        out["cut_bytes_received"] = transport.received[2].payload_bytes - before
        # Arrival order, then client order while the other client's message is already waiting.
        for peer in transport.peers:
            transport.send(Message(Kind.EVAL_BEGIN), peer)
        out["arrival"] = [transport.recv_any(expect=Kind.EVAL_END) for _ in range(3)]
        out["arrival"] = [(peer, m.step) for peer, m in out["arrival"]]
        out["client_order"] = [(p, transport.recv(p).step) for p in (1, 2)]
        out["expect"] = error_text(lambda: transport.recv(1, expect=Kind.GRADIENT))
        for peer in transport.peers:
            transport.send(Message(Kind.STOP), peer)
    else:
        if rank == 1:
            for step in range(6):
                transport.send(Message(Kind.BATCH, step, sample_payloads(step)), SERVER)
            state = STATE()
            transport.send(Message.from_state(state), SERVER)
            state["b.bias"].add_(100)  # send copied it: the server must see arange(3)
        else:

            class SendingCut(Cut):
                def transmit(self, parcel: Parcel, client: int = 0) -> Parcel:
                    transport.send(Message(Kind.BATCH, payloads=parcel.payloads), SERVER)
                    return parcel

            cut = SendingCut(codec="int8")
            before = transport.sent[SERVER].payload_bytes
            cut.send_up(torch.randn(4, 6), torch.arange(4))  # two payloads: activations, labels
            cut.send_state_up({"w": torch.randn(3, 3), "b": torch.zeros(3)})  # two payloads
            out["cut_traffic"] = cut.traffic.bytes_up + cut.traffic.sync_bytes_up
        transport.recv(SERVER, expect=Kind.EVAL_BEGIN)
        delays = {1: [0.5], 2: [0.0, 1.0]}[rank]  # arrival: client 1 (rank 2), client 0 (rank 1), rank 2
        start = time.monotonic()
        for step, delay in enumerate(delays):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            transport.send(Message(Kind.EVAL_END, step=10 * rank + step), SERVER)
        time.sleep(1.5 if rank == 1 else 0.0)  # client order: rank 2's message waits while the server asks rank 1
        transport.send(Message(Kind.EPOCH_END, step=rank), SERVER)
        if rank == 1:
            transport.send(Message(Kind.EPOCH_END, step=99), SERVER)  # the server expects a GRADIENT
        transport.recv(SERVER, expect=Kind.STOP)
        if rank == 2:
            out["cut_bytes_sent"] = transport.sent[SERVER].payload_bytes - before
    transport.close()
    out["counters"] = counters(transport)
    return out


def window(rank: int) -> dict[str, Any]:
    """World of 2: with max_in_flight=2 and a server that does not read, the third send waits."""
    transport = Transport(max_in_flight=2, timeout=TIMEOUT)
    out: dict[str, Any] = {}
    if rank == SERVER:
        time.sleep(1.5)
        out["pending"] = transport.pending()[1]
        out["read_at"] = time.monotonic()
        steps = [transport.recv(1).step]
        time.sleep(1.5)  # the client's fourth send times out meanwhile
        steps += [transport.recv(1).step for _ in range(2)]
        out["steps"] = steps
        transport.send(Message(Kind.STOP), 1)
    else:
        durations = []
        for step in range(3):
            start = time.monotonic()
            transport.send(
                Message(Kind.BATCH, step, (Payload((torch.ones(1000),), torch.float32, torch.Size([1000])),)), SERVER
            )
            durations.append(time.monotonic() - start)
        out["durations"], out["returned_at"] = durations, time.monotonic()
        out["full"] = error_text(lambda: transport.send(Message(Kind.BATCH, 3), SERVER, timeout=0.5))
        transport.recv(SERVER, expect=Kind.STOP)
    transport.close()
    return out


def link(rank: int) -> dict[str, Any]:
    """World of 2: K messages of B bytes over an emulated uplink of W Mbit/s and L ms."""
    spec = LinkSpec(bandwidth_mbps=16.0, latency_ms=300.0)
    k, n = 8, 25_000  # float32 values: 100 kB a message, 50 ms at 16 Mbit/s
    transport = Transport(max_in_flight=k + 1, timeout=TIMEOUT, uplink=spec)
    out: dict[str, Any] = {}
    message = Message(Kind.BATCH, 0, (Payload((torch.ones(n),), torch.float32, torch.Size([n])),))
    if rank == SERVER:
        transport.send(Message(Kind.EVAL_BEGIN), 1)  # no link emulation downwards: the go signal is prompt
        out["arrivals"] = []
        for _ in range(k):
            transport.recv(1)
            out["arrivals"].append(time.monotonic())
        transport.send(Message(Kind.STOP), 1)
    else:
        transport.recv(SERVER)
        out["start"] = time.monotonic()
        for _ in range(k):
            transport.send(message, SERVER)
        out["queued"] = time.monotonic() - out["start"]
        transport.recv(SERVER, expect=Kind.STOP)
    out.update(k=k, nbytes=frame_bytes(message), bandwidth_mbps=spec.bandwidth_mbps, latency_ms=spec.latency_ms)
    transport.close()
    return out


def dead(rank: int) -> dict[str, Any]:
    """World of 2: the client sends one message and dies; the server's next recv must fail, naming it."""
    transport = Transport(timeout=TIMEOUT)
    out: dict[str, Any] = {}
    if rank == SERVER:
        transport.recv(1)
        out["recv"] = error_text(lambda: transport.recv(1))
        out["close"] = error_text(transport.close)
    else:
        transport.send(Message(Kind.EPOCH_END), SERVER)
        time.sleep(0.5)
        os._exit(3)
    return out


def silent(rank: int) -> dict[str, Any]:
    """World of 2: the client stays silent for 2 s; the server's recv times out, and the pair still works.

    Then the client does not close: the server's close gives up after its timeout, and the client's
    later close finds the server gone; neither hangs.
    """
    transport = Transport(timeout=TIMEOUT)
    out: dict[str, Any] = {}
    if rank == SERVER:
        out["recv"] = error_text(lambda: transport.recv(1, timeout=1.0, expect=Kind.GRADIENT))
        out["later"] = transport.recv(1).step
        out["close"] = error_text(lambda: transport.close(timeout=0.5))
    else:
        time.sleep(2.0)
        transport.send(Message(Kind.GRADIENT, step=7), SERVER)
        time.sleep(2.0)
        out["close"] = error_text(transport.close)
    return out


SCENARIOS = {f.__name__: f for f in (basic, window, link, dead, silent)}


def main() -> None:
    torch.set_num_threads(1)
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=process_group_timeout(TIMEOUT))
    rank = dist.get_rank()
    try:
        result = SCENARIOS[scenario](rank)
    finally:
        dist.destroy_process_group()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    # A listener thread may still be blocked in gloo's receive from a peer that never closed (the silent
    # scenario): the interpreter's normal exit then aborts in C++ ("terminate called without an active
    # exception"). The results are written; leave at once, as a process whose peer vanished must.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
