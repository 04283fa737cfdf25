"""The quickstart's first 20 steps, recorded before the pretraining loop was restructured, still come out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pretraining_runs import QUICKSTART, records

REFERENCE = Path(__file__).resolve().parent / "reference" / "quickstart_20_steps.jsonl"
ROUNDING_STEPS = 5  # steps whose losses any CPU reproduces to rounding


@pytest.mark.slow
def test_quickstart_reproduces_the_recorded_20_losses(tmp_path):
    # The recorded run used torch's default 2 threads on 2 cores; the thread count changes how reductions
    # are split, and 20 steps of training amplify that rounding, so it is pinned here.
    environment = {**os.environ, "OMP_NUM_THREADS": "2"}
    command = [
        sys.executable, "-m", "ssl_toolkit.pretrain", str(QUICKSTART),
        "train.max_steps=20", "log.every=1", "seed=0", "log.knn_every=0", "log.trackers=[]",
        f"run.output_dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    produced = records(tmp_path / "quickstart")
    assert [r["step"] for r in produced] == list(range(1, 21))
    # The reference was recorded on an AMD EPYC. Another CPU's kernels round differently (an Intel Xeon's from
    # step 4 on, by 1e-7) and training amplifies that chaotically (5e-3 by step 20), so the first steps are
    # held to rounding and the rest to what rounding alone cannot explain; the schedule is exact everywhere.
    for old, new in zip(recorded, produced, strict=True):
        rel = 1e-5 if old["step"] <= ROUNDING_STEPS else 2e-2
        assert new["loss"] == pytest.approx(old["loss"], rel=rel), f"step {old['step']}"
        assert new["lr"] == pytest.approx(old["lr"], rel=1e-9), f"step {old['step']}"
