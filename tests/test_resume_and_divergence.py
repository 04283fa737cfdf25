"""Exact mid-epoch resume, and runs that meet NaN losses."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from pretraining_runs import tiny_config

from ssl_toolkit import engine
from ssl_toolkit.engine import TrainingDiverged, checkpoint_dirs, pretrain
from ssl_toolkit.models import load_encoder

SIX_STEPS = ("train.max_steps=6", "train.checkpoint_every=3")


def _reset_accelerate():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _losses(run_dir):
    return {
        r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    }


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint."""


def test_stopping_after_step_3_and_resuming_gives_the_same_six_steps(tmp_path, monkeypatch):
    straight = pretrain(tiny_config(tmp_path, "straight", *SIX_STEPS))
    _reset_accelerate()

    real_save = engine.save_checkpoint

    def save_then_die(accelerator, run_dir, step):
        real_save(accelerator, run_dir, step)
        if step == 3:
            raise Killed

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        pretrain(tiny_config(tmp_path, "resumed", *SIX_STEPS))
    monkeypatch.undo()
    _reset_accelerate()
    resumed = pretrain(tiny_config(tmp_path, "resumed", *SIX_STEPS, "train.resume=auto"))

    # Digits has 42 batches of 32 an epoch, so step 3 is mid-epoch: the data order, the augmentations
    # (restored RNG state) and the optimiser state must all continue where they stopped.
    assert sorted(_losses(resumed)) == [1, 2, 3, 4, 5, 6]
    for step, loss in _losses(straight).items():
        assert _losses(resumed)[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), f"step {step}"
    a, _, _ = load_encoder(straight / "encoder.safetensors")
    b, _, _ = load_encoder(resumed / "encoder.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_nan_losses_are_skipped_then_the_run_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    real_forward = engine.ContrastiveObjective.forward
    calls = []

    def nan_from_the_fourth_call(self, views, class_labels=None):
        calls.append(1)
        loss = real_forward(self, views, class_labels)
        return loss * float("nan") if len(calls) in (2,) or len(calls) >= 4 else loss

    monkeypatch.setattr(engine.ContrastiveObjective, "forward", nan_from_the_fourth_call)
    config = tiny_config(
        tmp_path, "nan", "train.max_steps=20", "train.checkpoint_every=1", "train.max_bad_steps=3"
    )
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row.*step_00000002"):
        pretrain(config)
    # Call 2 was skipped alone (steps 1 and 2 trained), calls 4–6 were three in a row.
    assert [p.name for p in checkpoint_dirs(config.run_dir)][-1] == "step_00000002"
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["skipped_steps"] == 1
