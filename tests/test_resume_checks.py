"""Resumes that refuse what would change the run, verified checkpoints with a fallback, and no pickle."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch
from pretraining_runs import QUICKSTART, TINY_RUN, pretrain_tiny, records
from safetensors.torch import load_file

from ssl_toolkit.config import ConfigError
from ssl_toolkit.pretrain import main as pretrain_main
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.checkpoint_files import PROGRESS_FILE, checkpoint_problem

FOUR_STEPS = ("train.max_steps=4", "train.checkpoint_every=2")


@pytest.fixture(scope="module")
def _run_stopped_at_4(tmp_path_factory):
    return pretrain_tiny(tmp_path_factory.mktemp("stopped"), "run", *FOUR_STEPS)


@pytest.fixture
def stopped_at_4(_run_stopped_at_4, tmp_path):
    """A run stopped at step 4 with checkpoints at steps 2 and 4 (the run is extended to 6 below): this
    test's own copy, trained once for the module."""
    return RunDirectory(shutil.copytree(_run_stopped_at_4, tmp_path / "run", symlinks=True))


def _resume(run: RunDirectory, *overrides):
    return pretrain_tiny(run.path.parent, run.path.name, *FOUR_STEPS, "train.resume=auto", *overrides)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.batch_size=16", "train.batch_size 32 → 16"),
        ("seed=1", "seed 0 → 1"),
        ("loss.temperature=0.5", "loss.temperature 0.3 → 0.5"),
        ("model.proj_dim=8", "model.proj_dim 16 → 8"),
        ("optim.lr=0.1", "optim.lr 0.3 → 0.1"),
        ("data.image_size=12", "data.image_size 8 → 12"),
    ],
)
def test_a_resume_that_would_change_the_trajectory_is_refused_naming_the_key(stopped_at_4, override, named):
    config_before = stopped_at_4.config.read_text()
    with pytest.raises(ConfigError, match=rf"would change the run: {named}.*train\.resume_allow="):
        _resume(stopped_at_4, "train.max_steps=6", override)
    assert stopped_at_4.config.read_text() == config_before  # config.yaml still describes the run


def test_a_changed_number_of_processes_is_refused(stopped_at_4):
    checkpoint = stopped_at_4.checkpoint_dirs()[-1]
    description = json.loads((checkpoint / PROGRESS_FILE).read_text())
    (checkpoint / PROGRESS_FILE).write_text(json.dumps({**description, "num_processes": 2}))
    with pytest.raises(ConfigError, match=r"num_processes 2 → 1"):
        _resume(stopped_at_4, "train.max_steps=6")


def test_allowed_and_harmless_changes_pass_and_are_recorded(stopped_at_4, _run_stopped_at_4):
    _resume(stopped_at_4, "train.max_steps=6", "log.every=2", "optim.lr=0.2", "train.resume_allow=[optim.lr]")
    (resume,) = [json.loads(line) for line in stopped_at_4.resumes.read_text().splitlines()]
    assert resume["step"] == 4 and resume["checkpoint"].endswith("step_00000004")
    assert resume["changed"] == {
        "run.output_dir": [str(_run_stopped_at_4.parent), str(stopped_at_4.path.parent)],  # moved: harmless
        "log.every": [1, 2],
        "optim.lr": [0.3, 0.2],
        "train.max_steps": [4, 6],
        "train.resume": [None, "auto"],
        "train.resume_allow": [[], ["optim.lr"]],
    }
    assert [r["step"] for r in records(stopped_at_4.path)] == [1, 2, 3, 4, 6]


def test_a_corrupt_latest_checkpoint_is_named_skipped_and_the_previous_one_used(tmp_path, capsys):
    straight = RunDirectory(
        pretrain_tiny(tmp_path, "straight", "train.max_steps=6", "train.checkpoint_every=2")
    )
    run = RunDirectory(pretrain_tiny(tmp_path, "run", *FOUR_STEPS))
    latest = run.checkpoint_dirs()[-1]
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a save cut short by the disk
    capsys.readouterr()
    _resume(run, "train.max_steps=6")
    output = capsys.readouterr().out
    assert f"skipping checkpoint {latest}: model.safetensors is corrupt" in output
    assert "at step 2" in output
    assert [r["step"] for r in records(run.path)] == list(range(1, 7))
    for a, b in zip(records(straight.path), records(run.path), strict=True):
        assert a["loss"] == b["loss"], a["step"]
    expected, resumed = load_file(str(straight.encoder)), load_file(str(run.encoder))
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_no_usable_checkpoint_stops_with_one_line_naming_each(stopped_at_4):
    for checkpoint in stopped_at_4.checkpoint_dirs():
        (checkpoint / PROGRESS_FILE).unlink()
    with pytest.raises(
        ConfigError, match=r"skipping checkpoint .*step_00000004.*step_00000002.*run\.overwrite=true"
    ):
        _resume(stopped_at_4, "train.max_steps=6")


class _Payload:
    """Unpickling this creates the marker file: what a crafted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_loaded(stopped_at_4, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "payload_ran"
    latest = stopped_at_4.checkpoint_dirs()[-1]
    # Where Accelerate kept the step counter before (custom_checkpoint_0.pkl), and in place of the random
    # states, which progress.json's digest then no longer matches.
    (latest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (latest / "random_states_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    unsafe_loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            unsafe_loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    _resume(stopped_at_4, "train.max_steps=6")
    assert not marker.exists()
    assert unsafe_loads == []
    assert f"skipping checkpoint {latest}: random_states_0.pkl is corrupt" in capsys.readouterr().out
    assert checkpoint_problem(stopped_at_4.checkpoint_dirs()[-1]) is None


def test_a_full_disk_is_named_in_one_line_and_the_previous_checkpoint_stays_intact(
    tmp_path, monkeypatch, capsys
):
    real_save = torch.save
    saves = []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) > 2:  # the optimiser and random states of checkpoint 1 fit; the next write does not
            with open(f, "wb") as handle:
                handle.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    argv = [str(QUICKSTART), *TINY_RUN, "train.max_steps=3", f"run.output_dir={tmp_path}", "run.name=full"]
    assert pretrain_main(argv) == 2
    error = capsys.readouterr().err.strip()
    run = RunDirectory(tmp_path / "full")
    assert error.count("\n") == 0
    assert f"No space left on device writing {run.checkpoints / '.tmp_step_00000002'}" in error
    assert f"the last good checkpoint is {run.checkpoint(1)}" in error
    assert [p.name for p in run.checkpoints.iterdir()] == ["step_00000001"]  # the partial one removed
    assert checkpoint_problem(run.checkpoint(1)) is None
    monkeypatch.undo()
    resumed = pretrain_tiny(tmp_path, "full", "train.max_steps=3", "train.resume=auto")
    assert [r["step"] for r in records(resumed)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ([1, 2], "progress.json is unreadable"),
        ({"model.safetensors": 3}, "progress.json is unreadable"),
        ({"../../outside": {"bytes": 1, "sha256": "0"}}, "not a file of the checkpoint"),
    ],
    ids=["a_list", "an_entry_without_size", "a_path_out_of_the_folder"],
)
def test_a_progress_file_of_the_wrong_shape_is_named_and_the_previous_checkpoint_used(
    stopped_at_4, capsys, files, named
):
    latest = stopped_at_4.checkpoint_dirs()[-1]
    description = json.loads((latest / PROGRESS_FILE).read_text())
    (latest / PROGRESS_FILE).write_text(json.dumps({**description, "files": files}))
    assert named in checkpoint_problem(latest)
    _resume(stopped_at_4, "train.max_steps=6")
    assert f"skipping checkpoint {latest}: its {PROGRESS_FILE}" in capsys.readouterr().out
    assert json.loads(stopped_at_4.resumes.read_text().splitlines()[0])["step"] == 2


def test_random_states_that_verify_but_are_not_plain_data_are_never_resumed_from(
    stopped_at_4, tmp_path, capsys
):
    # A file that progress.json vouches for (its digest updated too) but that only a full unpickling would
    # read: Accelerate would skip it without a word and resume with fresh random states.
    latest = stopped_at_4.checkpoint_dirs()[-1]
    marker = tmp_path / "payload_ran"
    (latest / "random_states_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    description = json.loads((latest / PROGRESS_FILE).read_text())
    path = latest / "random_states_0.pkl"
    description["files"]["random_states_0.pkl"] = {
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    (latest / PROGRESS_FILE).write_text(json.dumps(description))
    assert checkpoint_problem(latest) is None  # the digests agree
    _resume(stopped_at_4, "train.max_steps=6")
    assert not marker.exists()
    output = capsys.readouterr().out
    assert f"skipping checkpoint {latest}: random_states_0.pkl cannot be loaded as plain data" in output
    assert json.loads(stopped_at_4.resumes.read_text().splitlines()[0])["step"] == 2
