"""Pretraining and evaluation on event sequences through the same engine as images."""

from __future__ import annotations

import json
import math

import pytest
from pretraining_runs import logged_losses, pretrain_tiny, records

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.eval.probe import run_probe
from ssl_toolkit.run_dir import RunDirectory

SEQUENCE_RUN = [
    "data.name=synthetic_events",
    "data.num_samples=240",
    "augment.split_count=3",
    "augment.cnt_min=8",
    "augment.cnt_max=40",
    "model.backbone=gru",
    "model.backbone_args={hidden_size: 32, embedding_dim: 8}",
    "model.proj_dim=16",
    "loss.name=coles",
    "loss.temperature=0.2",
    "optim.name=adamw",
    "optim.lr=3.0e-3",
    "optim.warmup_epochs=0",
    "train.batch_size=32",
    "train.checkpoint_every=5",
    "log.trackers=[]",
    "log.every=1",
]


def _config(tmp_path, name, *overrides):
    from pretraining_runs import QUICKSTART

    return load_config(
        QUICKSTART, [*SEQUENCE_RUN, f"run.output_dir={tmp_path}", f"run.name={name}", *overrides]
    )


def test_a_gru_pretrains_on_coles_slices_and_its_run_is_evaluated(tmp_path):
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
