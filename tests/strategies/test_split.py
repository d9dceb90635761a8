"""strategy="split": real processes over gloo on 127.0.0.1, against the same run in one process.

Each test starts its processes as torchrun would (``tests.distributed.launch``), waits with a cap
and leaves none behind. The worker (``split_worker.py``) trains small_cnn cut after unit 2 on the
8x8 digits and saves each process's halves, head and byte counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed.launch import REPO, launch, needs_gloo

pytestmark = needs_gloo
WORKER = Path(__file__).with_name("split_worker.py")
CAP = 120.0


def run_split(tmp_path: Path, world_size: int, **options: Any) -> tuple[list[int | None], dict[int, str]]:
    return launch([sys.executable, str(WORKER), json.dumps(options)], world_size, tmp_path, cap=CAP)


def run_in_process(tmp_path: Path, **options: Any) -> dict[str, Any]:
    """The same run in one process, one thread (as the split processes): the reference."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, str(WORKER), json.dumps({**options, "in_process": True})],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CAP,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "inprocess.pt")


def load(tmp_path: Path, role: str) -> dict[str, Any]:
    return torch.load(tmp_path / f"{role}.pt")


def assert_same(reference: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    assert reference.keys() == state.keys()
    for key in reference:
        assert torch.allclose(reference[key].double(), state[key].double(), rtol=0, atol=1e-6), key


@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_one_client_ends_with_the_parameters_of_the_same_run_in_one_process(tmp_path: Path, mode: str) -> None:
    (tmp_path / "split").mkdir()
    codes, output = run_split(tmp_path / "split", 2, mode=mode)
    assert codes == [0, 0], output
    reference = run_in_process(tmp_path, mode=mode)
    server, client = load(tmp_path / "split", "server"), load(tmp_path / "split", "client0")
    assert_same(reference["server"], server["server"])
    assert_same(reference["client"], client["client"])
    assert_same(reference["aux_head"], client["aux_head"])
    assert client["loaded_data"] and not server["loaded_data"]  # the server never loads a dataset
    # Bytes: both sides count what crossed, equal to the one-process count (sl: gradients come down).
    assert server["traffic"] == client["traffic"] == reference["traffic"]
    assert (reference["traffic"]["bytes_down"] > 0) == (mode == "sl")
    # On the wire: exactly the cut's payloads, plus the framing.
    assert client["summary"]["split/wire_payload_bytes_sent"] == reference["traffic"]["bytes_up"]
    assert server["summary"]["split/wire_payload_bytes_sent"] == reference["traffic"]["bytes_down"]


def test_a_text_transformer_across_processes_equals_one_process(tmp_path: Path) -> None:
    """Padded sequences and their mask cross the wire (sl: up and down); the run equals the one in one process."""
    (tmp_path / "split").mkdir()
    codes, output = run_split(tmp_path / "split", 2, mode="sl", text=True, batches=4)
    assert codes == [0, 0], output
    reference = run_in_process(tmp_path, mode="sl", text=True, batches=4)
    server, client = load(tmp_path / "split", "server"), load(tmp_path / "split", "client0")
    assert_same(reference["server"], server["server"])
    assert_same(reference["client"], client["client"])
    assert_same(reference["aux_head"], client["aux_head"])
    assert server["traffic"] == client["traffic"] == reference["traffic"]  # the masks counted on both sides
    assert client["summary"]["split/wire_payload_bytes_sent"] == reference["traffic"]["bytes_up"]


def test_a_skip_connection_cut_by_name_crosses_the_wire_as_in_one_process(tmp_path: Path) -> None:
    """Two tensors cross the cut, each with its gradient in sl; the run equals the one in one process."""
    (tmp_path / "split").mkdir()
    codes, output = run_split(tmp_path / "split", 2, mode="sl", skip=True, batches=4)
    assert codes == [0, 0], output
    reference = run_in_process(tmp_path, mode="sl", skip=True, batches=4)
    server, client = load(tmp_path / "split", "server"), load(tmp_path / "split", "client0")
    assert_same(reference["server"], server["server"])
    assert_same(reference["client"], client["client"])
    assert_same(reference["aux_head"], client["aux_head"])
    assert server["traffic"] == client["traffic"] == reference["traffic"]
    # 2 epochs of 4 training batches of 32: the encoder's two outputs (8x4x4 and 4x8x8 float32) went up, and
    # both gradients came down.
    assert reference["traffic"]["bytes_down"] == 2 * 4 * 32 * (8 * 4 * 4 + 4 * 8 * 8) * 4
    assert client["summary"]["split/wire_payload_bytes_sent"] == reference["traffic"]["bytes_up"]


def test_two_clients_equal_the_one_process_parallel_schedule_with_fedavg(tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    codes, output = run_split(tmp_path / "split", 3, clients=2)
    assert codes == [0, 0, 0], output
    reference = run_in_process(tmp_path, clients=2)
    server = load(tmp_path / "split", "server")
    assert_same(reference["server"], server["server"])
    for role in ("client0", "client1"):  # after the last round every client holds the average
        client = load(tmp_path / "split", role)
        assert_same(reference["client"], client["client"])
        assert_same(reference["aux_head"], client["aux_head"])
    assert_same(reference["client"], server["client"])  # the server keeps the aggregate
    assert server["traffic"] == reference["traffic"]
    assert reference["traffic"]["sync_bytes_up"] > 0
    reports = server["summary"]["split/clients"]
    assert [r["run"] for r in reports] == ["client0", "client1"]
    assert sum(r["split/cut_bytes_up"] for r in reports) == server["traffic"]["bytes_up"]


def test_arrival_order_trains_every_clients_batches(tmp_path: Path) -> None:
    codes, output = run_split(tmp_path, 3, server_order="arrival", sleep={"client0": 0.2})
    assert codes == [0, 0, 0], output
    server = load(tmp_path, "server")
    clients = [load(tmp_path, f"client{i}") for i in range(2)]
    assert server["traffic"]["bytes_up"] == sum(c["traffic"]["bytes_up"] for c in clients)
    assert server["traffic"]["messages_up"] == sum(c["traffic"]["messages_up"] for c in clients)


def test_max_in_flight_bounds_how_far_a_dsl_client_runs_ahead_of_a_slow_server(tmp_path: Path) -> None:
    sleep = 0.4
    codes, output = run_split(tmp_path, 2, max_in_flight=1, sleep={"server": sleep}, batches=8, epochs=1)
    assert codes == [0, 0], output
    client, server = load(tmp_path, "client0")["ends"], load(tmp_path, "server")["ends"]
    # With a window of one message the client's batch k + 2 cannot end before the server has taken batch k
    # (its own batch k + 1 waits in the window until then): the client is at most 2 batches ahead.
    for k in range(len(server) - 2):
        assert client[k + 2] >= server[k] - 0.05, (k, client, server)
    assert client[-1] - client[0] >= (len(client) - 3) * sleep * 0.9  # throttled to the server's pace


def test_a_client_killed_mid_epoch_stops_the_server_with_a_checkpoint_and_an_error_naming_it(tmp_path: Path) -> None:
    codes, output = run_split(tmp_path, 2, kill={"rank": 1, "batch": 3}, timeout=10)
    assert codes[1] == -9  # killed
    assert codes[0] not in (0, None), output[0][-3000:]  # not 0, and within the cap: no hang
    assert "client 0 (rank 1)" in output[0]
    assert (tmp_path / "ckpt-server" / "split-server-fault.ckpt").exists()


def test_a_killed_server_stops_its_client_with_an_error_naming_it(tmp_path: Path) -> None:
    codes, output = run_split(tmp_path, 2, kill={"rank": 0, "batch": 3}, timeout=10, mode="sl")
    assert codes[0] == -9
    assert codes[1] not in (0, None), output[1][-3000:]
    assert "server (rank 0)" in output[1]
    assert (tmp_path / "ckpt-client0" / "split-client0-fault.ckpt").exists()


def test_a_mismatched_start_up_is_refused_by_every_process_naming_both_values(tmp_path: Path) -> None:
    codes, output = run_split(tmp_path, 2, mode_by_rank={"1": "sl"})
    assert codes == [1, 1], output
    for rank in (0, 1):
        assert "mode: server 'dsl', client 'sl'" in output[rank]
    assert not list(tmp_path.glob("*.pt"))  # nothing trained


def test_resuming_every_process_from_its_checkpoint_continues_the_run_with_its_byte_totals(tmp_path: Path) -> None:
    # The reference is the same interruption in one process (the digits' shuffling restarts at a resume,
    # in one process as across processes, so an uninterrupted run is not the reference for the weights).
    (tmp_path / "split").mkdir()
    assert run_split(tmp_path / "split", 2, epochs=1)[0] == [0, 0]
    ckpt = {role: str(tmp_path / "split" / f"ckpt-{role}" / "last.ckpt") for role in ("server", "client0")}
    codes, output = run_split(tmp_path / "split", 2, epochs=2, ckpt=ckpt)  # each process from its own
    assert codes == [0, 0], output
    run_in_process(tmp_path, epochs=1)
    reference = run_in_process(tmp_path, epochs=2, ckpt={"inprocess": str(tmp_path / "ckpt-inprocess" / "last.ckpt")})
    server, client = load(tmp_path / "split", "server"), load(tmp_path / "split", "client0")
    assert_same(reference["server"], server["server"])
    assert_same(reference["client"], client["client"])
    # The byte totals go on from the checkpoint: two epochs' worth, as an uninterrupted run counts.
    assert server["total_bytes_up"] == client["total_bytes_up"] == reference["total_bytes_up"] > 0


@pytest.mark.parametrize("launcher", ["devices", "torchrun"])
def test_the_two_launch_commands_run_the_quickstart_as_a_server_and_two_clients(tmp_path: Path, launcher: str) -> None:
    config = REPO / "configs" / "quickstart.yaml"
    args = [
        "fit",
        f"--config={config}",
        "--trainer.strategy=split",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
    ]
    if launcher == "devices":
        command = [sys.executable, "-m", "lightning_dsl", *args, "--trainer.devices=3"]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=3",
            "-m",
            "lightning_dsl",
            *args,
        ]
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_SILENT="true")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "LIGHTNING_DSL_RUN_GROUP"):
        env.pop(key, None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CAP)
    assert done.returncode == 0, done.stderr[-4000:]
    summaries = {
        role: json.loads((tmp_path / "runs" / "csv" / role / "version_0" / "summary.json").read_text())
        for role in ("server", "client0", "client1")
    }
    server = summaries["server"]
    assert server["split/num_clients"] == 2 and "val/acc" in server
    assert [r["run"] for r in server["split/clients"]] == ["client0", "client1"]
    assert server["split/cut_bytes_up"] == sum(s["split/cut_bytes_up"] for r, s in summaries.items() if r != "server")
    assert "val/aux_acc" in summaries["client1"] and "val/acc" not in summaries["client1"]
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # one W&B run per process
