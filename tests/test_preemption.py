"""Stop signals (SLURM preemption, Ctrl-C, SIGUSR1): checkpoint at the next step, exit 4, resume exactly."""

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
from pretraining_runs import QUICKSTART, REPO, TINY_RUN, records
from safetensors.torch import load_file

from ssl_toolkit.process.status import ExitCode
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.stop_signals import REPEAT_AFTER_S

pytestmark = pytest.mark.slow

STEPS = 12  # digits has 42 batches of 32 an epoch: every stop below is mid-epoch
PYTHON = [sys.executable, "-m", "ssl_toolkit.pretrain"]
LAUNCH_ONE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "ssl_toolkit.pretrain"]  # fmt: skip
LAUNCH_TWO = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "ssl_toolkit.pretrain"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every run compared


def _arguments(output_dir, name, *overrides):
    return [str(QUICKSTART), *TINY_RUN, f"train.max_steps={STEPS}", "train.checkpoint_every=100",
            f"run.output_dir={output_dir}", f"run.name={name}", *overrides]  # fmt: skip


def _run(launcher, output_dir, name, *overrides):
    log = output_dir / f"{name}.log"
    with log.open("a") as handle:
        result = subprocess.run(
            [*launcher, *_arguments(output_dir, name, *overrides)],
            cwd=REPO, env=ENV, stdout=handle, stderr=subprocess.STDOUT, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, log.read_text()[-3000:]
    return RunDirectory(output_dir / name)


def _start(launcher, output_dir, name):
    log = (output_dir / f"{name}.log").open("w")  # a file: a full pipe would stall the run
    return subprocess.Popen(
        [*launcher, *_arguments(output_dir, name)], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT
    )


def _wait_for_step(process, run: RunDirectory, step: int) -> None:
    deadline = time.monotonic() + 180
    while not any(record["step"] >= step for record in records(run.path)):
        assert process.poll() is None, f"the run ended early with {process.returncode}"
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
    assert steps == list(range(1, STEPS + 1))  # every step once
    for a, b in zip(records(reference.path), records(resumed.path), strict=True):
        assert a["loss"] == b["loss"], f"step {a['step']}"
    expected, got = load_file(str(reference.encoder)), load_file(str(resumed.encoder))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    return _run(PYTHON, tmp_path_factory.mktemp("reference"), "straight")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_stops_one_process_with_a_checkpoint_and_the_resume_is_exact(
    tmp_path, one_process_reference, stop
):
    run = RunDirectory(tmp_path / "stopped")
    process = _start(PYTHON, tmp_path, "stopped")
    _wait_for_step(process, run, 3)
    process.send_signal(stop)
    assert process.wait(timeout=120) == ExitCode.INTERRUPTED
    output = (tmp_path / "stopped.log").read_text()
    assert f"{stop.name} received" in output and "stopped by a signal after step" in output
    (checkpoint,) = run.checkpoint_dirs()
    stopped_at = int(checkpoint.name.split("_")[1])
    assert 3 <= stopped_at < STEPS and not run.encoder.exists()
    assert records(run.path)[-1]["step"] == stopped_at

    resumed = _run(PYTHON, tmp_path, "stopped", "train.resume=auto")
    assert f"at step {stopped_at}" in (tmp_path / "stopped.log").read_text()
    _assert_same_run(one_process_reference, resumed)


def test_sigterm_to_accelerate_launch_reaches_the_run_which_checkpoints(tmp_path, one_process_reference):
    """The single-process launcher forwards no signal; the run hears of its death and stops the same way."""
    run = RunDirectory(tmp_path / "launched")
    launcher = _start(LAUNCH_ONE, tmp_path, "launched")
    _wait_for_step(launcher, run, 3)
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=60)
    _wait_for_unlock(run)
    assert "stopped by a signal after step" in (tmp_path / "launched.log").read_text()
    assert len(run.checkpoint_dirs()) == 1
    _assert_same_run(one_process_reference, _run(LAUNCH_ONE, tmp_path, "launched", "train.resume=auto"))


def test_sigterm_stops_both_processes_of_a_two_process_run_at_the_same_step(tmp_path):
    reference = _run(LAUNCH_TWO, tmp_path, "straight")
    run = RunDirectory(tmp_path / "stopped")
    launcher = _start(LAUNCH_TWO, tmp_path, "stopped")
    _wait_for_step(launcher, run, 3)
    launcher.send_signal(signal.SIGTERM)  # the launcher passes it on to both processes
    assert launcher.wait(timeout=120) != 0
    _wait_for_unlock(run)
    output = (tmp_path / "stopped.log").read_text()
    assert output.count("stopped by a signal after step") == 2  # each process, the same step
    (checkpoint,) = run.checkpoint_dirs()
    assert {f"random_states_{rank}.pkl" for rank in (0, 1)} <= {p.name for p in checkpoint.iterdir()}

    one_process = subprocess.run(
        [*PYTHON, *_arguments(tmp_path, "stopped", "train.resume=auto")],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one_process.returncode == 2 and "num_processes 2 → 1" in one_process.stderr

    _assert_same_run(reference, _run(LAUNCH_TWO, tmp_path, "stopped", "train.resume=auto"))


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


def test_a_stalled_peer_stops_every_process_with_a_message_after_the_collective_timeout(tmp_path):
    launch = [*LAUNCH_TWO[:-2], str(REPO / "tests" / "stalled_peer_run.py")]
    log = tmp_path / "stalled.log"
    started = time.monotonic()
    arguments = _arguments(tmp_path, "stalled", "train.collective_timeout_s=4", "train.checkpoint_every=1")
    with log.open("w") as handle:
        result = subprocess.run(
            [*launch, *arguments], cwd=REPO, env={**ENV, "STALL_SECONDS": "12"}, stdout=handle,
            stderr=subprocess.STDOUT, timeout=300,
        )  # fmt: skip
    output = log.read_text()
    assert result.returncode != 0
    # Both processes say it in one line: the waiting one after 4 s, the stalled one when it comes back.
    assert output.count("error: another process stopped answering for train.collective_timeout_s=4 s") == 2, (
        output[-3000:]
    )
    assert "the last good checkpoint is" in output and "step_00000002" in output
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
