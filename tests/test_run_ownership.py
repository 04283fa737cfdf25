"""A run directory belongs to one run: refused when used, locked while running, cleared only when asked."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from pretraining_runs import QUICKSTART, REPO, TINY_RUN, pretrain_tiny, records

from ssl_toolkit.config import ConfigError
from ssl_toolkit.pretrain import main as pretrain_main
from ssl_toolkit.run_dir import RunDirectory


def test_a_new_run_into_a_used_directory_is_refused_and_the_old_run_is_untouched(tmp_path, capsys):
    first = RunDirectory(pretrain_tiny(tmp_path, "same", "train.max_steps=4", "train.checkpoint_every=2"))
    before = {p.name for p in first.checkpoint_dirs()}, first.metrics.read_text(), first.encoder.read_bytes()

    with pytest.raises(
        ConfigError, match=r"already holds a run .*train\.resume=auto.*run\.name.*run\.overwrite"
    ):
        pretrain_tiny(tmp_path, "same", "train.max_steps=3")
    assert (
        {p.name for p in first.checkpoint_dirs()},
        first.metrics.read_text(),
        first.encoder.read_bytes(),
    ) == before

    argv = [str(QUICKSTART), *TINY_RUN, f"run.output_dir={tmp_path}", "run.name=same"]
    assert pretrain_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "already holds a run" in error


def test_overwrite_clears_the_old_run_first(tmp_path):
    pretrain_tiny(tmp_path, "again", "train.max_steps=4", "train.checkpoint_every=1")
    run = RunDirectory(pretrain_tiny(tmp_path, "again", "train.max_steps=2", "run.overwrite=true"))
    # Without the clearing, the old step_3/step_4 would sort last and rotate the new checkpoints away.
    assert [p.name for p in run.checkpoint_dirs()] == ["step_00000001", "step_00000002"]
    assert [r["step"] for r in records(run.path)] == [1, 2]


def test_resume_auto_on_an_empty_directory_starts_a_fresh_run(tmp_path):
    run = RunDirectory(pretrain_tiny(tmp_path, "fresh", "train.resume=auto"))
    assert [r["step"] for r in records(run.path)] == [1, 2]


def _start_long_run(tmp_path, name):
    command = [
        sys.executable, "-m", "ssl_toolkit.pretrain", str(QUICKSTART), *TINY_RUN, "train.max_steps=100000",
        "train.checkpoint_every=5", f"run.output_dir={tmp_path}", f"run.name={name}",
    ]  # fmt: skip
    log = (tmp_path / f"{name}.log").open("w")  # a file: a full pipe would stall the run
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    run = RunDirectory(tmp_path / name)
    deadline = time.monotonic() + 120
    while not (run.metrics.is_file() and run.checkpoint_dirs()):
        assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the run never checkpointed"
        time.sleep(0.2)
    return process, run


@pytest.mark.slow
def test_a_second_run_on_a_locked_directory_is_refused_and_a_dead_holders_lock_is_recovered(tmp_path):
    process, run = _start_long_run(tmp_path, "busy")
    try:
        holder = json.loads(run.lock.read_text())
        assert holder["pid"] == process.pid
        with pytest.raises(ConfigError, match=rf"in use by a run in progress \(pid {process.pid} on "):
            pretrain_tiny(tmp_path, "busy", "train.resume=auto")
        metrics_before = run.metrics.read_text().splitlines()
    finally:
        process.send_signal(signal.SIGKILL)  # dies holding the lock
        process.communicate(timeout=60)
    assert all(json.loads(line) for line in metrics_before)  # never interleaved with another run's lines
    checkpointed = int(run.checkpoint_dirs()[-1].name.split("_")[1])
    assert max(r["step"] for r in records(run.path)) >= checkpointed
    resumed = pretrain_tiny(tmp_path, "busy", "train.resume=auto", f"train.max_steps={checkpointed + 3}")
    steps = [r["step"] for r in records(resumed)]
    # Each step once: the records after the checkpoint (the killed run's last ones) were dropped.
    assert steps == list(range(1, checkpointed + 4))


def test_the_lock_is_released_when_the_run_ends_even_by_an_error(tmp_path):
    pretrain_tiny(tmp_path, "ends", "train.max_steps=1")
    with pytest.raises(ConfigError):  # refused (used directory) after taking the lock
        pretrain_tiny(tmp_path, "ends")
    pretrain_tiny(tmp_path, "ends", "train.resume=auto", "train.max_steps=2")  # the lock is free again


def test_every_file_of_a_run_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDirectory(pretrain_tiny(tmp_path, "modes"))
    finally:
        os.umask(old)
    modes = {
        str(path.relative_to(run.path)): stat.S_IMODE(path.stat().st_mode)
        for path in run.path.rglob("*")
        if path.is_file()
    }
    assert run.encoder.name in modes and run.lock.name in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}
