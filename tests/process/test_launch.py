"""Launchers: a command started in this process or as a subprocess ends with an outcome read from its file,
or told by its exit code when it wrote none."""

from __future__ import annotations

import signal
import sys
import textwrap

import pytest

from ssl_toolkit.process.launch import Command, InProcess, Subprocess
from ssl_toolkit.process.status import ExitCode, Status

# A command that imports no torch: quick to start.
REFUSES = textwrap.dedent(
    """
    import os, signal, sys
    from ssl_toolkit.config import ConfigError
    from ssl_toolkit.process.outcome import run_entry_point

    def body():
        print("working", flush=True)
        if sys.argv[1] == "refuse":
            raise ConfigError("data.root=/nowhere does not exist; point it at the data")
        if sys.argv[1] == "die":
            os.kill(os.getpid(), signal.SIGKILL)

    sys.exit(run_entry_point(body))
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "command.py"
    path.write_text(REFUSES)
    return path


def test_a_subprocess_refusal_is_read_from_its_outcome_file_with_its_output_in_the_log(script, tmp_path):
    log = tmp_path / "command.log"
    finished = Subprocess().run(Command.of_script(script, ["refuse"]), outcome=tmp_path / "o.json", log=log)
    assert finished.exit_code == ExitCode.BAD_INPUT
    assert finished.outcome.status is Status.BAD_INPUT and "data.root=/nowhere" in finished.outcome.message
    assert finished.peak_memory_mb > 0 and finished.seconds > 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("$ ") and str(script) in lines[0]
    assert "working" in lines and lines[-1].startswith("error: data.root=/nowhere")


def test_a_killed_subprocess_is_told_by_its_exit_code_and_a_stale_outcome_is_not_read(script, tmp_path):
    outcome = tmp_path / "o.json"
    assert (
        Subprocess().run(Command.of_script(script, ["finish"]), outcome=outcome).outcome.status is Status.OK
    )
    finished = Subprocess().run(Command.of_script(script, ["die"]), outcome=outcome)
    assert finished.exit_code == -signal.SIGKILL
    assert finished.outcome.status is Status.ERROR and "killed by SIGKILL" in finished.outcome.message


def test_without_an_outcome_path_a_temporary_one_is_used_and_removed(script, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = Subprocess().run(Command.of_script(script, ["refuse"]))
    assert finished.outcome.status is Status.BAD_INPUT
    assert not list(tmp_path.glob("ssl_toolkit_outcome_*"))


def test_the_in_process_launcher_runs_a_modules_main_and_reads_the_same_outcome(tmp_path):
    log = tmp_path / "cli.log"
    finished = InProcess().run(Command.of_module("ssl_toolkit.cli", ["knn", str(tmp_path / "none")]), log=log)
    assert finished.exit_code == ExitCode.BAD_INPUT and finished.outcome.status is Status.BAD_INPUT
    assert "has no config.yaml" in finished.outcome.message
    assert log.read_text().splitlines()[0] == f"$ python -m ssl_toolkit.cli knn {tmp_path / 'none'}"
    with pytest.raises(ValueError, match="runs modules"):
        InProcess().start(Command.of_script(sys.executable))


ALLOCATES = textwrap.dedent(
    """
    import sys
    from ssl_toolkit.process.outcome import run_entry_point

    sys.exit(run_entry_point(lambda: bytearray(int(sys.argv[1]) << 20)))
    """
)


def test_a_subprocess_under_a_memory_limit_that_allocates_past_it_ends_out_of_memory(tmp_path):
    script = tmp_path / "allocates.py"
    script.write_text(ALLOCATES)
    within = Subprocess().run(Command.of_script(script, ["16"]), memory_limit_mb=600)
    assert within.outcome.status is Status.OK
    past = Subprocess().run(Command.of_script(script, ["2000"]), memory_limit_mb=600)
    assert past.exit_code == ExitCode.OUT_OF_MEMORY and past.outcome.status is Status.OUT_OF_MEMORY


def test_the_in_process_launcher_refuses_what_only_a_new_process_can_do(tmp_path):
    command = Command.of_module("ssl_toolkit.cli", ["--version"])
    for option in ({"memory_limit_mb": 1000}, {"cwd": tmp_path}, {"new_session": True}):
        with pytest.raises(ValueError, match=r"cannot apply .*use Subprocess"):
            InProcess().start(command, **option)
