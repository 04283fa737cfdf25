"""Pretraining and evaluation on event sequences through the same engine as images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretraining_runs import SEQUENCE_RUN, load_module, logged_losses, pretrain_tiny, records

from ssl_toolkit import build
from ssl_toolkit.cli import main
from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.eval.probe import run_probe
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.kinds.sequences.views import PaddedEvents
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.objective import ContrastiveObjective

WORKER = Path(__file__).resolve().parent / "sequence_processes.py"


def _config(tmp_path, name, *overrides):
    from pretraining_runs import QUICKSTART

    return load_config(
        QUICKSTART, [*SEQUENCE_RUN, f"run.output_dir={tmp_path}", f"run.name={name}", *overrides]
    )


def test_a_gru_pretrains_on_coles_slices_and_its_run_is_evaluated(tmp_path, capsys):
    run_dir = pretrain_tiny(
        tmp_path, config=_config(tmp_path, "events", "train.max_steps=12", "log.knn_every=6")
    )
    losses = logged_losses(run_dir)
    assert len(losses) == 12 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert [r["step"] for r in records(run_dir) if "knn_top1" in r] == [6, 12]  # online kNN on sequences
    run = RunDirectory(run_dir)
    stored = json.loads(run.summary.read_text())
    assert stored["steps"] == 12
    probe = run_probe(run_dir, baselines=True, weight_decay=1e-3)
    assert probe["num_train"] == 192 and probe["num_test"] == 48
    assert 0.0 <= probe["top1"] <= 1.0 and "aggregates_top1" in probe and "random_init_top1" in probe
    assert probe["model"] == "linear"

    # CoLES's downstream protocol: gradient boosting, mean ± std over stratified folds and the test split.
    capsys.readouterr()
    assert main(["probe", str(run_dir), "--model", "boosting", "--folds", "3", "--baselines"]) == 0
    printed = capsys.readouterr().out
    boosting = json.loads((run_dir / "probe_boosting.json").read_text())
    assert boosting["model"] == "boosting" and boosting["num_test"] == 48
    folds = boosting["cross_validation"]
    assert folds["folds"] == 3 and len(folds["per_fold"]) == 3
    assert folds["top1_mean"] == pytest.approx(sum(f["top1"] for f in folds["per_fold"]) / 3)
    assert boosting["aggregates_cross_validation"]["folds"] == 3 and "random_init_auroc" in boosting
    assert "gradient-boosting probe" in printed and "3 folds: top-1" in printed
    assert "probe_boosting.json" in printed
    assert json.loads(run.probe.read_text())["model"] == "linear"  # the linear probe's file is its own


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint."""


def test_a_sequence_run_killed_mid_epoch_resumes_to_the_losses_of_a_straight_one(tmp_path, monkeypatch):
    from ssl_toolkit import pretrain as pretrain_module

    steps = ("train.max_steps=8", "train.checkpoint_every=2")
    straight = logged_losses(pretrain_tiny(tmp_path, config=_config(tmp_path, "straight", *steps)))
    real_save = pretrain_module.save_checkpoint

    def save_then_die(accelerator, run, progress, *rest):
        real_save(accelerator, run, progress, *rest)
        if progress.step == 4:  # 6 batches an epoch: the slices of the rest of it must be the same
            raise Killed

    monkeypatch.setattr(pretrain_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        pretrain_tiny(tmp_path, config=_config(tmp_path, "resumed", *steps))
    monkeypatch.undo()
    resumed = logged_losses(
        pretrain_tiny(tmp_path, config=_config(tmp_path, "resumed", *steps, "train.resume=auto"))
    )
    assert len(straight) == 8 and resumed == pytest.approx(straight, rel=1e-6, abs=1e-7)


def test_sequence_settings_are_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"data.numeric=\['amout'\]"):
        pretrain_tiny(tmp_path, config=_config(tmp_path, "bad", "data.numeric=[amout]"))
    with pytest.raises(ConfigError, match=r"augment\.cnt_min=50"):
        _config(tmp_path, "bad", "augment.cnt_min=50", "augment.cnt_max=10")
    with pytest.raises(ConfigError, match="unknown sequence backbone 'resnet18'"):
        pretrain_tiny(
            tmp_path, config=_config(tmp_path, "bad2", "model.backbone=resnet18", "model.backbone_args={}")
        )


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_their_concatenated_sequence_batches(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(WORKER), str(tmp_path),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    worker = load_module(WORKER)
    processes = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [len(steps) for steps in processes] == [worker.STEPS, worker.STEPS]

    config = worker.sequence_config(tmp_path / "reference")
    kind = create_data_kind(config)
    objective = ContrastiveObjective(kind.create_encoder(), build.loss(config, kind.pretraining_dataset()))
    for step, (first, second) in enumerate(zip(*processes, strict=True)):
        assert len(first["views"]) == 3 and len(first["views"][0][1]) == worker.BATCH
        objective.load_state_dict(first["state"])
        objective.zero_grad()
        # One process holding both batches: each half goes through the head's BatchNorm on its own, as on
        # its process (without CUDA there is no SyncBatchNorm); the loss sees every client of both.
        halves = [objective.embed([PaddedEvents(*view) for view in p["views"]]) for p in (first, second)]
        embeddings = [torch.cat(pair) for pair in zip(*halves, strict=True)]
        loss = objective.loss_of(embeddings)
        loss.backward()
        # Each process's loss is its share of the global mean; their gradients are all-reduced.
        assert (first["loss"] + second["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-5), step
        for name, parameter in objective.named_parameters():
            assert torch.equal(first["grads"][name], second["grads"][name]), name
            torch.testing.assert_close(first["grads"][name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
    # The second step's weights are the first step's update, the same on both processes (BatchNorm's
    # running statistics are each process's own until DDP broadcasts rank 0's at the next forward).
    for name, _ in objective.named_parameters():
        assert torch.equal(processes[0][1]["state"][name], processes[1][1]["state"][name]), name


def test_gradient_caching_on_sequence_batches_trains_like_the_plain_step(tmp_path):
    steps = ("train.max_steps=4",)
    plain = logged_losses(pretrain_tiny(tmp_path, config=_config(tmp_path, "plain", *steps)))
    # One chunk of the 32 clients' 3 slices: the head's BatchNorm sees what the plain step's does (chunks
    # of fewer rows are checked against the whole batch's gradients in the encoder tests).
    cached = logged_losses(
        pretrain_tiny(tmp_path, config=_config(tmp_path, "cached", *steps, "train.grad_cache_chunk=32"))
    )
    assert len(plain) == 4 and cached == pytest.approx(plain, rel=1e-5)
    assert len(set(plain)) == 4  # the weights moved between steps
