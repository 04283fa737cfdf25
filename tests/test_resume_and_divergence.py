"""Exact mid-epoch resume, and runs that meet NaN losses."""

from __future__ import annotations

import pytest
import torch
from pretraining_runs import pretrain_tiny, records, tiny_config

from ssl_toolkit import pretrain as pretrain_module
from ssl_toolkit.encoder_file import load_encoder
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.guard import TrainingDiverged
from ssl_toolkit.training.objective import ContrastiveObjective

SIX_STEPS = ("train.max_steps=6", "train.checkpoint_every=3")


def _losses(run_dir):
    return {record["step"]: record["loss"] for record in records(run_dir)}


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint."""


def test_stopping_after_step_3_and_resuming_gives_the_same_six_steps(tmp_path, monkeypatch):
    straight = pretrain_tiny(tmp_path, "straight", *SIX_STEPS)
    real_save = pretrain_module.save_checkpoint

    def save_then_die(accelerator, run, progress, *rest):
        real_save(accelerator, run, progress, *rest)
        if progress.step == 3:
            raise Killed

    monkeypatch.setattr(pretrain_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        pretrain_tiny(tmp_path, "resumed", *SIX_STEPS)
    monkeypatch.undo()
    resumed = pretrain_tiny(tmp_path, "resumed", *SIX_STEPS, "train.resume=auto")

    # Digits has 42 batches of 32 an epoch, so step 3 is mid-epoch: the data order, the augmentations
    # (restored RNG state) and the optimiser state must all continue where they stopped.
    assert sorted(_losses(resumed)) == [1, 2, 3, 4, 5, 6]
    for step, loss in _losses(straight).items():
        assert _losses(resumed)[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), f"step {step}"
    a = load_encoder(RunDirectory(straight).encoder).encoder
    b = load_encoder(RunDirectory(resumed).encoder).encoder
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_nan_losses_are_skipped_then_the_run_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    real_forward = ContrastiveObjective.forward
    calls = []

    def nan_on_the_second_and_from_the_fourth_call(self, views, class_labels=None, mode="loss"):
        if mode != "loss":
            return real_forward(self, views, class_labels, mode)
        calls.append(1)
        loss, embeddings = real_forward(self, views, class_labels)
        return (loss * float("nan") if len(calls) == 2 or len(calls) >= 4 else loss), embeddings

    monkeypatch.setattr(ContrastiveObjective, "forward", nan_on_the_second_and_from_the_fourth_call)
    config = tiny_config(
        tmp_path, "nan", "train.max_steps=20", "train.checkpoint_every=1", "train.max_bad_steps=3"
    )
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row.*step_00000002"):
        pretrain_tiny(tmp_path, config=config)
    # Call 2 was skipped alone (steps 1 and 2 trained), calls 4–6 were three in a row.
    assert [p.name for p in RunDirectory(config.run_dir).checkpoint_dirs()][-1] == "step_00000002"
    logged = records(config.run_dir)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    assert logged[-1]["skipped_steps"] == 1
