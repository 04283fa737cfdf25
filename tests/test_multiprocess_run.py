"""A real 2-process `accelerate launch` run on CPU (gloo), then the probe on what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys

from pretraining_runs import REPO, TINY_RUN

from ssl_toolkit.cli import main as cli_main


def test_accelerate_launch_two_processes_then_probe(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "ssl_toolkit.pretrain", str(REPO / "recipes" / "quickstart.yaml"),
        *TINY_RUN, "train.max_steps=3", f"run.output_dir={tmp_path}", "run.name=two",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 64 (2 processes)" in result.stdout
    run_dir = tmp_path / "two"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # written once, by the main process only

    assert cli_main(["probe", str(run_dir)]) == 0
    probe = json.loads((run_dir / "probe.json").read_text())
    assert {"top1", "top5", "auroc", "num_train", "num_test", "feature_dim", "features"} <= probe.keys()
