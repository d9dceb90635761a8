"""strategy="split" with the defenses: the client process clips, noises and randomizes before the wire."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.launch import needs_gloo
from tests.strategies.test_split import assert_same, load, run_in_process, run_split

pytestmark = needs_gloo
PRIVACY = {"clip_norm": 5.0, "noise_multiplier": 0.5, "nopeek_weight": 0.5, "label_epsilon": 2.0, "seed": 3}


@pytest.mark.parametrize("mode", ["sl"])
def test_a_defended_client_across_processes_equals_the_same_run_in_one_process(tmp_path: Path, mode: str) -> None:
    """The same noise, labels and NoPeek term, the gradient through the clip coming back over the wire."""
    (tmp_path / "split").mkdir()
    codes, output = run_split(tmp_path / "split", 2, mode=mode, privacy=PRIVACY)
    assert codes == [0, 0], output
    reference = run_in_process(tmp_path, mode=mode, privacy=PRIVACY)
    plain = run_in_process(tmp_path / "split", mode=mode)  # overwrites nothing the split run left but inprocess.pt
    server, client = load(tmp_path / "split", "server"), load(tmp_path / "split", "client0")
    assert_same(reference["server"], server["server"])
    assert_same(reference["client"], client["client"])
    assert server["traffic"] == client["traffic"] == reference["traffic"] == plain["traffic"]  # bytes unchanged
    assert any((reference["client"][k] - plain["client"][k]).abs().max() > 1e-4 for k in plain["client"])
