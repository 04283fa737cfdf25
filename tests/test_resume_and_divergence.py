"""Exact mid-epoch resume, and runs that meet NaN losses."""

from __future__ import annotations

import math

import pytest
import torch
from pretraining_runs import pretrain_tiny, records, tiny_config
from safetensors.torch import load_file

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
        loss, embeddings, features = real_forward(self, views, class_labels)
        return (loss * float("nan") if len(calls) == 2 or len(calls) >= 4 else loss), embeddings, features

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


def _nan_views_on_calls(is_bad):
    """A forward fed NaN images on the calls `is_bad(call)` picks (BatchNorm's statistics see them)."""
    real_forward = ContrastiveObjective.forward
    calls = []

    def forward(self, views, class_labels=None, mode="loss"):
        if mode == "loss":
            calls.append(1)
            if is_bad(len(calls)):
                views = [torch.full_like(view, float("nan")) for view in views]
        return real_forward(self, views, class_labels, mode)

    return forward


def _batchnorm_buffers(checkpoint):
    weights = load_file(str(checkpoint / "model.safetensors"))
    return {name: value for name, value in weights.items() if "running_" in name}


def test_skipped_steps_leave_batchnorm_as_it_was_and_the_named_checkpoint_resumes_finitely(
    tmp_path, monkeypatch
):
    # Call 4 is skipped alone; steps 4–6 train on calls 5–7, then calls 8 and 9 end the run. Without the
    # restored buffers, step 6's checkpoint would hold the NaN statistics of call 4.
    monkeypatch.setattr(
        ContrastiveObjective, "forward", _nan_views_on_calls(lambda call: call == 4 or call >= 8)
    )
    config = tiny_config(
        tmp_path, "nan_inputs", "train.max_steps=10", "train.checkpoint_every=3", "train.max_bad_steps=2"
    )
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint is \S*step_00000006") as stopped:
        pretrain_tiny(tmp_path, config=config)
    monkeypatch.undo()
    run = RunDirectory(config.run_dir)
    named = run.checkpoint_dirs()[-1]
    assert named.name == "step_00000006" and str(named) in str(stopped.value)
    buffers = _batchnorm_buffers(named)
    assert buffers and all(torch.isfinite(value).all() for value in buffers.values())

    resumed = pretrain_tiny(
        tmp_path,
        "nan_inputs",
        "train.max_steps=9",
        "train.checkpoint_every=3",
        "train.max_bad_steps=2",
        "train.resume=auto",
    )
    assert all(math.isfinite(r["loss"]) for r in records(resumed))
    assert [r["step"] for r in records(resumed)] == list(range(1, 10))


def test_a_skipped_step_restores_the_buffers_it_changed(tmp_path, monkeypatch):
    """One NaN batch after step 2: the buffers at step 3 equal those of a run that never saw it."""
    straight = RunDirectory(pretrain_tiny(tmp_path, "straight", "train.max_steps=3"))
    real_forward = ContrastiveObjective.forward
    calls = []

    def nan_on_the_third_call(self, views, class_labels=None, mode="loss"):
        if mode == "loss":
            calls.append(1)
            if len(calls) == 3:
                views = [torch.full_like(view, float("nan")) for view in views]
        return real_forward(self, views, class_labels, mode)

    monkeypatch.setattr(ContrastiveObjective, "forward", nan_on_the_third_call)
    skipped = RunDirectory(pretrain_tiny(tmp_path, "skipped", "train.max_steps=3"))
    # The skipped call consumed a batch, so step 3 trains on the next one; but up to step 2 the runs agree,
    # and step 2's checkpoint is written before the NaN batch, its buffers equal to the straight run's.
    a = _batchnorm_buffers(straight.checkpoint(2))
    b = _batchnorm_buffers(skipped.checkpoint(2))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert all(torch.isfinite(value).all() for value in _batchnorm_buffers(skipped.checkpoint(3)).values())
    assert records(skipped.path)[-1]["skipped_steps"] == 1


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    real_step = torch.optim.SGD.step

    def poisoning_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        if poisoning_step.calls == 2:  # the third optimiser step leaves a NaN weight behind
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        poisoning_step.calls += 1
        return result

    poisoning_step.calls = 0
    monkeypatch.setattr(torch.optim.SGD, "step", poisoning_step)
    with pytest.raises(
        TrainingDiverged, match=r"NaN or infinite at step 3.*last good checkpoint is \S*step_00000002"
    ):
        pretrain_tiny(tmp_path, "poisoned", "train.max_steps=4", "train.checkpoint_every=1")
    assert [p.name for p in RunDirectory(tmp_path / "poisoned").checkpoint_dirs()] == [
        "step_00000001",
        "step_00000002",
    ]
