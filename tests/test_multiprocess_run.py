"""Real 2-process `accelerate launch` runs on CPU (gloo): pretraining, then evaluation of what it wrote."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from pretraining_runs import REFERENCE_STEPS, records
from safetensors.torch import load_file

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.eval.run import EvaluationRun, frozen_embedding
from ssl_toolkit.process.outcome import read_outcome
from ssl_toolkit.process.status import Status


@pytest.mark.slow
def test_a_two_process_pretraining_reports_once_and_one_process_probes_it(two_process_reference, tmp_path):
    run = two_process_reference
    log = run.path.with_name(f"{run.path.name}.log").read_text()
    assert "global batch 64 (2 processes)" in log
    summary = run.read_summary()  # the peak memory, gathered over gloo
    assert summary["peak_memory_kind"] == "cpu_max_rss" and summary["peak_memory_mb"] > 50
    # Written once, by the main process only.
    assert [record["step"] for record in records(run.path)] == list(range(1, REFERENCE_STEPS + 1))
    assert read_outcome(run.outcome).status is Status.OK
    assert not list(run.path.glob("outcome.json.rank*"))  # other processes write theirs only on failure

    copy = shutil.copytree(run.path, tmp_path / "run")
    assert cli_main(["probe", str(copy)]) == 0
    probe = json.loads((copy / "probe.json").read_text())
    assert {"top1", "top5", "auroc", "num_train", "num_test", "feature_dim", "features"} <= probe.keys()


@pytest.mark.slow
def test_knn_on_two_processes_gathers_the_features_in_dataset_order_and_reports_once(two_process_evaluations):
    # Each process embeds half of every split; the gathered features come back in dataset order without
    # the padding that evens out the last batch (450 test digits, batch 256).
    evaluated = two_process_evaluations
    main, other = evaluated.printed("knn")
    assert main["exit_code"] == other["exit_code"] == 0, main["stderr"][-3000:]
    assert main["stdout"].count("kNN on") == 1 and "kNN on" not in other["stdout"]
    knn = json.loads(evaluated.tiny.knn.read_text())
    assert (knn["num_train"], knn["num_test"]) == (1347, 450)
    cached = load_file(str(evaluated.tiny.features / "backbone_test.safetensors"))
    run = EvaluationRun(evaluated.tiny.path)
    single = extract_features(frozen_embedding(run.encoder, "backbone"), run.test_set, Accelerator(cpu=True))
    torch.testing.assert_close(cached["features"], single[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(cached["targets"], single[1])
