"""vlm_core/eval/distributed.py under torchrun (2 processes, gloo): ranks, gather and broadcast
through accelerate. A state that is not "distributed" would make every rank rank 0 and answer
every question itself, which the scores alone cannot show."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, sys
from vlm_core.eval import distributed
rank = int(os.environ["RANK"])
report = {"world": distributed.world(), "gather": distributed.all_gather({"rank": rank}),
          "broadcast": distributed.broadcast(f"from {rank}"), "device": distributed.device()}
distributed.barrier()
open(os.path.join(sys.argv[1], f"{rank}.json"), "w").write(json.dumps(report))
distributed.shutdown()  # as `vlm eval run` ends: without it 2 runs in 24 aborted at exit
"""


def test_one_process_is_the_identity():
    from vlm_core.eval import distributed

    assert distributed.world() == (0, 1)
    assert distributed.all_gather("x") == ["x"] and distributed.broadcast("y") == "y"


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_two_processes_know_their_rank_gather_in_order_and_broadcast_rank_0(tmp_path):
    script = tmp_path / "report.py"
    script.write_text(SCRIPT)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), str(tmp_path)],
        check=True, capture_output=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    reports = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert [r["world"] for r in reports] == [[0, 2], [1, 2]]
    assert all(r["gather"] == [{"rank": 0}, {"rank": 1}] for r in reports)
    assert all(r["broadcast"] == "from 0" for r in reports)
    assert all(r["device"] == "cpu" for r in reports)
