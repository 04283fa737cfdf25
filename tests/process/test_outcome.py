"""How a command ends: exit codes, statuses, the outcome file and the entry point that writes it."""

from __future__ import annotations

import errno
import signal

import pytest

from ssl_toolkit.config import ConfigError
from ssl_toolkit.files import StorageFull
from ssl_toolkit.process.outcome import (
    OUTCOME_VARIABLE,
    Outcome,
    clear_outcome,
    read_outcome,
    run_entry_point,
    write_outcome,
)
from ssl_toolkit.process.status import ExitCode, OutOfMemory, Status, as_failure, status_of_exit_code
from ssl_toolkit.training.guard import TrainingDiverged
from ssl_toolkit.training.stop_signals import TrainingInterrupted


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ConfigError("loss.temperature=-1 must be more than 0"), Status.BAD_INPUT, 2),
        (StorageFull("No space left on device writing x"), Status.BAD_INPUT, 2),
        (TrainingDiverged("the loss was NaN"), Status.DIVERGED, 3),
        (TrainingInterrupted("stopped by a signal after step 3"), Status.INTERRUPTED, 4),
        (MemoryError(), Status.OUT_OF_MEMORY, 5),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"), Status.OUT_OF_MEMORY, 5),
        (RuntimeError("CUDA error: out of memory\nCompile with TORCH_USE_CUDA_DSA"), Status.OUT_OF_MEMORY, 5),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/runs/a"), Status.BAD_INPUT, 2),
        (PermissionError(errno.EACCES, "Permission denied", "/mnt/runs/a"), Status.BAD_INPUT, 2),
        (OSError(errno.ENOSPC, "No space left on device", "/mnt/runs/a"), Status.BAD_INPUT, 2),
    ],
)
def test_each_failure_a_user_can_act_on_has_its_status_and_exit_code(error, status, code):
    failure = as_failure(error, "lower the batch")
    assert failure.status is status and failure.status.exit_code == code
    if status is Status.OUT_OF_MEMORY:
        assert isinstance(failure, OutOfMemory) and "lower the batch" in str(failure)
    if isinstance(error, OSError) and not isinstance(error, StorageFull):  # the path, and what to do
        assert str(failure).startswith("/mnt/runs/a: ") and ";" in str(failure)


def test_a_bug_is_no_failure_and_ends_with_status_error():
    assert as_failure(RuntimeError("a bug")) is None
    assert Outcome.of_error(RuntimeError("a bug")) == Outcome(Status.ERROR, "RuntimeError: a bug")
    assert ExitCode.ERROR == 1


@pytest.mark.parametrize(
    ("exit_code", "status"),
    [
        (0, Status.OK),
        (2, Status.BAD_INPUT),
        (3, Status.DIVERGED),
        (5, Status.OUT_OF_MEMORY),
        (-signal.SIGKILL, Status.ERROR),  # an operator, a time limit or the OOM killer: no way to tell
        (128 + signal.SIGKILL, Status.ERROR),
        (-signal.SIGTERM, Status.INTERRUPTED),
        (128 + signal.SIGINT, Status.INTERRUPTED),  # a second Ctrl-C: out at once, no outcome written
        (1, Status.ERROR),
        (77, Status.ERROR),
    ],
)
def test_a_process_without_an_outcome_file_is_told_by_its_exit_code(exit_code, status):
    assert status_of_exit_code(exit_code)[0] is status
    assert Outcome.of_exit_code(exit_code).status is status


def test_the_outcomes_of_several_processes_merge_to_the_most_severe(tmp_path):
    path = tmp_path / "outcome.json"
    assert read_outcome(path) is None
    write_outcome(path, Outcome(Status.INTERRUPTED, "another process stopped answering", step=7))
    assert read_outcome(path) == Outcome(Status.INTERRUPTED, "another process stopped answering", 7)
    # The process that knew why: its peer only saw it stop answering.
    write_outcome(tmp_path / "outcome.json.rank1", Outcome(Status.OUT_OF_MEMORY, "out-of-memory here", 7))
    assert read_outcome(path).status is Status.OUT_OF_MEMORY
    (tmp_path / "outcome.json.rank2").write_text("{not json")  # a process killed while writing
    assert read_outcome(path).status is Status.OUT_OF_MEMORY
    clear_outcome(path)
    assert not list(tmp_path.iterdir())


def test_the_entry_point_prints_one_line_and_writes_the_outcome_where_it_is_asked(
    tmp_path, monkeypatch, capsys
):
    destination = tmp_path / "outcome.json"
    monkeypatch.setenv(OUTCOME_VARIABLE, str(destination))
    monkeypatch.delenv("RANK", raising=False)

    def refused():
        raise ConfigError("train.bath_size: unknown key; valid keys: train.batch_size")

    assert run_entry_point(refused) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err == "error: train.bath_size: unknown key; valid keys: train.batch_size\n"
    assert read_outcome(destination) == Outcome(
        Status.BAD_INPUT, "train.bath_size: unknown key; valid keys: train.batch_size"
    )

    assert run_entry_point(lambda: None) == ExitCode.OK
    assert read_outcome(destination) == Outcome(Status.OK)
    assert run_entry_point(lambda: 3) == 3  # a command that ends with a code of its own
    assert read_outcome(destination).status is Status.DIVERGED

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):  # its traceback is kept
        run_entry_point(bug)
    assert read_outcome(destination).status is Status.ERROR

    monkeypatch.setenv("RANK", "1")  # another process of a launched group writes beside it
    assert run_entry_point(refused) == ExitCode.BAD_INPUT
    assert read_outcome(tmp_path / "outcome.json.rank1").status is Status.BAD_INPUT
