"""Stop signals (SLURM preemption, Ctrl-C, SIGUSR1): checkpoint at the next step, exit 4, resume exactly.

Each signal stops an in-process run at a step boundary with a checkpoint; real processes (one, one under
`accelerate launch`, two) are stopped by SIGTERM and resumed, and end equal, bit for bit, to the session's
uninterrupted reference runs.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from pretraining_runs import (
    REFERENCE_STEPS,
    REPO,
    launch_pretraining,
    pretrain_tiny,
    pretrain_to_the_end,
    records,
    reference_arguments,
)
from safetensors.torch import load_file

from ssl_toolkit.config import ConfigError
from ssl_toolkit.process.launch import AccelerateLaunch, Subprocess
from ssl_toolkit.process.outcome import Outcome, rank_outcome_path, read_outcome, write_outcome
from ssl_toolkit.process.signals import STOP_SIGNALS
from ssl_toolkit.process.status import ExitCode, Status
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.objective import ContrastiveObjective
from ssl_toolkit.training.stop_signals import REPEAT_AFTER_S, TrainingInterrupted


def _wait_for_step(launched, run: RunDirectory, step: int) -> None:
    deadline = time.monotonic() + 180
    while not any(record["step"] >= step for record in records(run.path)):
        assert launched.poll() is None, f"the run ended early with {launched.poll()}"
        assert time.monotonic() < deadline, f"step {step} never came"
        time.sleep(0.05)


def _wait_for_unlock(run: RunDirectory, timeout: float = 120) -> None:
    """The run's processes are gone once nobody holds its lock (the launcher may have died before them)."""
    deadline = time.monotonic() + timeout
    with run.lock.open() as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, "the run never let go of its directory"
                time.sleep(0.1)


def _assert_same_run(reference: RunDirectory, resumed: RunDirectory) -> None:
    steps = [record["step"] for record in records(resumed.path)]
    assert steps == list(range(1, REFERENCE_STEPS + 1))  # every step once
    for a, b in zip(records(reference.path), records(resumed.path), strict=True):
        assert a["loss"] == b["loss"], f"step {a['step']}"
    expected, got = load_file(str(reference.encoder)), load_file(str(resumed.encoder))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def _the_only_checkpoint_step(run: RunDirectory) -> int:
    (checkpoint,) = run.checkpoint_dirs()
    return int(checkpoint.name.split("_")[1])


@pytest.mark.parametrize("stop", STOP_SIGNALS, ids=lambda s: s.name)
def test_each_stop_signal_ends_the_run_after_its_step_with_a_checkpoint_and_an_outcome(
    tmp_path, monkeypatch, capsys, stop
):
    real_loss_of, calls = ContrastiveObjective.loss_of, []

    def loss_of_signalled_in_step_3(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), stop)  # arrives in the middle of step 3, as a scheduler's would
        return real_loss_of(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveObjective, "loss_of", loss_of_signalled_in_step_3)
    handler_before = signal.getsignal(stop)
    with pytest.raises(TrainingInterrupted, match="stopped by a signal after step 3"):
        pretrain_tiny(tmp_path, "stopped", "train.max_steps=6", "train.checkpoint_every=100")
    run = RunDirectory(tmp_path / "stopped")
    assert f"{stop.name} received: stopping after this step" in capsys.readouterr().err
    assert _the_only_checkpoint_step(run) == 3 and records(run.path)[-1]["step"] == 3
    assert not run.encoder.exists()
    outcome = read_outcome(run.outcome)
    assert (outcome.status, outcome.step, outcome.exit_code) == (Status.INTERRUPTED, 3, ExitCode.INTERRUPTED)
    assert signal.getsignal(stop) == handler_before  # the handler given back

    # The resumed session writes its own account; what another process once wrote does not outlive it.
    write_outcome(rank_outcome_path(run.outcome, 1), Outcome(Status.DIVERGED, "an earlier session", 2))
    monkeypatch.setattr(ContrastiveObjective, "loss_of", real_loss_of)
    pretrain_tiny(tmp_path, "stopped", "train.max_steps=6", "train.checkpoint_every=100", "train.resume=auto")
    assert read_outcome(run.outcome) == Outcome(Status.OK, None, 6)


@pytest.mark.slow
def test_sigterm_stops_a_process_which_resumes_to_the_uninterrupted_run(tmp_path, one_process_reference):
    run = RunDirectory(tmp_path / "stopped")
    launched = launch_pretraining(Subprocess(), tmp_path, "stopped")
    _wait_for_step(launched, run, 3)
    launched.process.send_signal(signal.SIGTERM)
    finished = launched.wait(timeout=120)
    assert finished.exit_code == ExitCode.INTERRUPTED and finished.outcome.status is Status.INTERRUPTED
    stopped_at = _the_only_checkpoint_step(run)
    assert 3 <= stopped_at < REFERENCE_STEPS and not run.encoder.exists()
    assert records(run.path)[-1]["step"] == stopped_at == finished.outcome.step

    resumed = pretrain_to_the_end(Subprocess(), tmp_path, "stopped", "train.resume=auto")
    assert f"at step {stopped_at}" in (tmp_path / "stopped.log").read_text()
    _assert_same_run(one_process_reference, resumed)


@pytest.mark.slow
def test_sigterm_to_a_one_process_accelerate_launch_reaches_the_run_which_checkpoints(tmp_path):
    """The single-process launcher forwards no signal; the run hears of its death and stops the same way."""
    run = RunDirectory(tmp_path / "launched")
    launched = launch_pretraining(AccelerateLaunch(num_processes=1), tmp_path, "launched")
    _wait_for_step(launched, run, 3)
    launched.process.send_signal(signal.SIGTERM)
    launched.wait(timeout=60)
    _wait_for_unlock(run)
    assert "stopped by a signal after step" in (tmp_path / "launched.log").read_text()
    assert read_outcome(run.outcome).step == _the_only_checkpoint_step(run) >= 3


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_step_and_they_resume_to_the_uninterrupted_run(
    tmp_path, two_process_reference
):
    run = RunDirectory(tmp_path / "stopped")
    launched = launch_pretraining(AccelerateLaunch(num_processes=2), tmp_path, "stopped")
    _wait_for_step(launched, run, 3)
    launched.process.send_signal(signal.SIGTERM)  # the launcher passes it on to both processes
    assert launched.wait(timeout=120).exit_code != 0
    _wait_for_unlock(run)
    output = (tmp_path / "stopped.log").read_text()
    assert output.count("stopped by a signal after step") == 2  # each process, the same step
    checkpoint = run.checkpoint(_the_only_checkpoint_step(run))
    assert {f"random_states_{rank}.pkl" for rank in (0, 1)} <= {p.name for p in checkpoint.iterdir()}

    with pytest.raises(ConfigError, match="num_processes 2 → 1"):  # one process may not take it over
        pretrain_tiny(tmp_path, "stopped", f"train.max_steps={REFERENCE_STEPS}", "train.resume=auto")

    resumed = pretrain_to_the_end(AccelerateLaunch(num_processes=2), tmp_path, "stopped", "train.resume=auto")
    _assert_same_run(two_process_reference, resumed)


def test_a_run_under_nohup_leaves_sighup_ignored(tmp_path, monkeypatch):
    from ssl_toolkit.training.stop_signals import StopSignals

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup` starts a process
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


STOP_SIGNALS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from ssl_toolkit.training.stop_signals import StopSignals
    read_end, _ = os.pipe()
    with StopSignals() as signals:
        print("ready", flush=True)
        os.read(read_end, 1)  # blocks, as a collective waiting for a stalled peer would
    """
)


@pytest.mark.slow
def test_a_second_signal_exits_at_once_but_a_repeat_within_the_window_does_not(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", STOP_SIGNALS_SCRIPT], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # the launcher's forwarded copy of the same signal
    time.sleep(0.5)
    assert process.poll() is None  # still waiting for its step to end
    time.sleep(REPEAT_AFTER_S)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 128 + signal.SIGINT
    assert time.monotonic() - started < 5
    errors = process.stderr.read()
    assert "SIGTERM received: stopping after this step" in errors and "SIGINT received again" in errors


@pytest.mark.slow
def test_a_stalled_peer_stops_every_process_with_a_message_after_the_collective_timeout(tmp_path):
    from ssl_toolkit.process.launch import Command

    arguments = reference_arguments(
        tmp_path, "stalled", "train.collective_timeout_s=2", "train.checkpoint_every=1"
    )
    command = Command.of_script(REPO / "tests" / "stalled_peer_run.py", arguments)
    started = time.monotonic()
    finished = AccelerateLaunch(num_processes=2).run(
        command, log=tmp_path / "stalled.log", environment={"STALL_SECONDS": "5", "OMP_NUM_THREADS": "1"}
    )
    output = (tmp_path / "stalled.log").read_text()
    assert finished.exit_code != 0
    # Both processes say it in one line: the waiting one after 2 s, the stalled one when it comes back.
    assert output.count("error: another process stopped answering for train.collective_timeout_s=2 s") == 2, (
        output[-3000:]
    )
    assert "the last good checkpoint is" in output and "step_00000002" in output
    assert finished.outcome.status is Status.INTERRUPTED
    assert time.monotonic() - started < 120


def test_leaving_stop_signals_is_prompt_while_a_forked_worker_lives():
    """A DataLoader worker forked in the block holds a copy of the wakeup socket; leaving must not wait."""
    from ssl_toolkit.training.stop_signals import StopSignals

    signals = StopSignals().__enter__()
    child = os.fork()
    if child == 0:  # the worker: outlives the block by seconds
        time.sleep(3)
        os._exit(0)
    try:
        started = time.monotonic()
        signals.__exit__(None, None, None)
        assert time.monotonic() - started < 1.0
        assert not signals._thread.is_alive()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
