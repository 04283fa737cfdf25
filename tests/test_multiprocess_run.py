"""Real 2-process `accelerate launch` runs on CPU (gloo): pretraining, then evaluation of what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from pretraining_runs import QUICKSTART, TINY_RUN, records
from safetensors.torch import load_file

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.eval.run import EvaluationRun, frozen_embedding
from ssl_toolkit.run_dir import RunDirectory

LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


@pytest.mark.slow
def test_accelerate_launch_two_processes_then_evaluate(tmp_path):
    command = [
        *LAUNCH, "-m", "ssl_toolkit.pretrain", str(QUICKSTART),
        *TINY_RUN, "train.max_steps=3", f"run.output_dir={tmp_path}", "run.name=two",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 64 (2 processes)" in result.stdout
    run_dir = tmp_path / "two"
    summary = RunDirectory(run_dir).read_summary()  # the peak memory, gathered over gloo
    assert summary["peak_memory_kind"] == "cpu_max_rss" and summary["peak_memory_mb"] > 50
    assert [record["step"] for record in records(run_dir)] == [
        1,
        2,
        3,
    ]  # written once, by the main process only

    # Evaluation on 2 processes: each embeds half of every split; the gathered features come back in
    # dataset order without the padding that evens out the last batch (450 test digits, batch 256).
    command = [*LAUNCH, "-m", "ssl_toolkit.cli", "knn", str(run_dir), "--k", "20"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("kNN on") == 1  # reported by the main process only
    knn = json.loads(RunDirectory(run_dir).knn.read_text())
    assert (knn["num_train"], knn["num_test"]) == (1347, 450)
    cached = load_file(str(RunDirectory(run_dir).features / "backbone_test.safetensors"))
    run = EvaluationRun(run_dir)
    single = extract_features(frozen_embedding(run.encoder, "backbone"), run.test_set, Accelerator(cpu=True))
    torch.testing.assert_close(cached["features"], single[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(cached["targets"], single[1])

    assert cli_main(["probe", str(run_dir)]) == 0
    probe = json.loads(RunDirectory(run_dir).probe.read_text())
    assert {"top1", "top5", "auroc", "num_train", "num_test", "feature_dim", "features"} <= probe.keys()
