"""The transport between real processes (gloo on 127.0.0.1); the scenarios are in ``worker.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lightning_dsl.distributed import Kind, Message, Transport, encode
from tests.distributed.launch import needs_gloo, run_world
from tests.distributed.worker import CONFIG, STATE, sample_payloads

pytestmark = needs_gloo


def world(scenario: str, size: int, tmp_path: Path) -> dict[int, Any]:
    run = run_world(scenario, size, tmp_path)
    expected_codes = [0, 3] if scenario == "dead" else [0] * size
    assert run["codes"] == expected_codes, run["output"]
    return run["results"]


def test_messages_arrive_in_order_and_bit_exact(basic_world: dict[int, Any]) -> None:
    server = basic_world[0]
    assert server["exact"] == [True] * 6  # every dtype, 0-d, empty and non-contiguous, steps 0..5 in order
    assert server["state"]  # keys and values; the client changed its tensor right after send


def test_byte_counters_match_the_frames_and_the_cut(basic_world: dict[int, Any]) -> None:
    server, client0, client1 = basic_world[0], basic_world[1], basic_world[2]
    # what one side put on the wire is what the other took off it, message for message and byte for byte
    assert server["counters"]["sent_1"] == client0["counters"]["received_0"]
    assert server["counters"]["received_1"] == client0["counters"]["sent_0"]
    assert server["counters"]["received_2"] == client1["counters"]["sent_0"]
    # the tensors' bytes are exactly what a Cut that sends through the transport counted
    assert client1["cut_traffic"] == client1["cut_bytes_sent"] == server["cut_bytes_received"] == 112


def test_counters_are_the_frames_sent(basic_world: dict[int, Any]) -> None:
    server, client0 = basic_world[0], basic_world[1]
    mismatch = server["mismatch"]["text"]
    answers = [Message.from_json(Kind.HELLO, {"ok": ok, "error": e}) for ok, e in ((True, ""), (False, mismatch))]
    down = [*answers, Message(Kind.EVAL_BEGIN), Message(Kind.STOP), Message(Kind.CLOSE)]
    up = [
        *[Message.from_json(Kind.HELLO, CONFIG)] * 2,  # the third hand-shake failed before sending
        *[Message(Kind.BATCH, step, sample_payloads(step)) for step in range(6)],
        Message.from_state(STATE()),
        Message(Kind.EVAL_END, 10),
        Message(Kind.EPOCH_END, 1),
        Message(Kind.EPOCH_END, 99),
        Message(Kind.CLOSE),
    ]
    for counter, messages in ((server["counters"]["sent_1"], down), (client0["counters"]["sent_0"], up)):
        frames = [encode(m) for m in messages]
        payload = sum(f.payload_nbytes for f in frames)
        assert counter == [len(frames), payload, sum(f.nbytes for f in frames) - payload]
    assert sum(encode(m).payload_nbytes for m in up) == sum(m.payload_nbytes for m in up) > 0


def test_recv_any_takes_arrival_order_and_recv_takes_the_named_client(basic_world: dict[int, Any]) -> None:
    server = basic_world[0]
    assert server["arrival"] == [[2, 20], [1, 10], [2, 21]]  # rank 2, then rank 1, then rank 2 again
    assert server["client_order"] == [[1, 1], [2, 2]]  # rank 2's message waited while the server asked rank 1


def test_unexpected_kind_names_both_kinds_and_the_peer(basic_world: dict[int, Any]) -> None:
    error = basic_world[0]["expect"]
    assert error["type"] == "TransportError"
    assert (
        error["text"] == "server (rank 0) expected a GRADIENT message from client 0 (rank 1), got EPOCH_END (step 99)"
    )


def test_max_in_flight_bounds_the_window(tmp_path: Path) -> None:
    server, client = world("window", 2, tmp_path).values()
    durations = client["durations"]
    assert max(durations[:2]) < 0.5  # two sends return at once
    # the third waited until the server read the first (1.5 s after start)
    assert durations[2] > 1.0 and abs(client["returned_at"] - server["read_at"]) < 0.5
    assert server["pending"] == 1  # the listener read the first header ahead, not more
    full = client["full"]
    assert full["type"] == "TransportTimeout" and 0.45 < full["elapsed"] < 1.5
    assert full["text"] == (
        "client 0 (rank 1) waited 0.5 s to send a BATCH message (step 3) to server (rank 0): 2 messages already in"
        " flight (max_in_flight=2) and none received by the peer since"
    )
    assert server["steps"] == [0, 1, 2]


def test_link_emulation_pipelines_latency(tmp_path: Path) -> None:
    server, client = world("link", 2, tmp_path).values()
    serialization = client["nbytes"] * 8 / (client["bandwidth_mbps"] * 1e6)  # 50 ms
    latency, k = client["latency_ms"] / 1000, client["k"]
    arrivals = [t - client["start"] for t in server["arrivals"]]
    expected = k * serialization + latency  # 0.70 s; latency paid once
    assert client["queued"] < 0.2  # send returns before the link delivers
    assert expected * 0.6 < arrivals[-1] < expected * 1.4, (arrivals, expected)
    assert arrivals[-1] < 0.5 * k * (serialization + latency)  # not 2.8 s: latency is not per message
    assert arrivals[0] > 0.6 * (serialization + latency)  # the first message waited for the link
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert 0.6 * serialization < sum(gaps) / len(gaps) < 1.4 * serialization  # one serialization apart


def test_dead_peer_raises_naming_it(tmp_path: Path) -> None:
    server = world("dead", 2, tmp_path)[0]
    error = server["recv"]
    assert error["type"] == "TransportError" and error["elapsed"] < 5  # well within the 20 s timeout
    assert error["text"].startswith(
        "server (rank 0) waited for a message from client 0 (rank 1), but receiving from it failed:"
    )
    assert "Connection closed by peer" in error["text"]
    assert server["close"]["type"] is None  # the failure was reported once, and close does not hang


def test_silent_peer_times_out_naming_it_and_the_seconds(tmp_path: Path) -> None:
    server, client = world("silent", 2, tmp_path).values()
    error = server["recv"]
    assert error["type"] == "TransportTimeout" and 0.95 < error["elapsed"] < 2
    assert error["text"] == "server (rank 0) waited 1.0 s for a GRADIENT message from client 0 (rank 1); none arrived"
    assert server["later"] == 7  # unlike a gloo timeout, this one leaves the pair usable
    # a peer that does not close: close gives up after its timeout and says why; so does the late one
    assert server["close"]["type"] == "TransportError" and server["close"]["elapsed"] < 1.5
    assert server["close"]["text"] == (
        "server (rank 0) could not close cleanly: client 0 (rank 1) did not close its side within 0.5 s"
    )
    assert client["close"]["type"] == "TransportError" and client["close"]["elapsed"] < 5
    assert client["close"]["text"].startswith(
        "client 0 (rank 1) could not close cleanly: sending to server (rank 0) failed"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"max_in_flight": 0}, "`max_in_flight`"), ({"timeout": -1}, "`timeout`")]
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Transport(**kwargs)


def test_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="initialized default process group"):
        Transport()
