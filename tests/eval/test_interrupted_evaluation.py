"""An evaluation command stopped by a signal: exit 4, one line, its outcome interrupted, nothing partial."""

from __future__ import annotations

import os
import signal

import pytest

import ssl_toolkit.eval.features as features_module
from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.process.outcome import OUTCOME_VARIABLE, read_outcome
from ssl_toolkit.process.status import ExitCode, Status
from ssl_toolkit.run_dir import RunDirectory


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_during_knn_ends_it_with_exit_4_and_nothing_written(
    tiny_run, tmp_path, monkeypatch, capsys, stop
):
    real_extract, calls = features_module.extract_features_and_readable, []

    def extract_then_signal(*args, **kwargs):
        calls.append(1)
        result = real_extract(*args, **kwargs)
        if len(calls) == 1:  # after the train split, before the test split: half the work done
            os.kill(os.getpid(), stop)
        return result

    monkeypatch.setattr("ssl_toolkit.eval.run.extract_features_and_readable", extract_then_signal)
    monkeypatch.setenv(OUTCOME_VARIABLE, str(tmp_path / "outcome.json"))
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    assert cli_main(["knn", str(tiny_run)]) == ExitCode.INTERRUPTED
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {stop.name} received: ssl-toolkit knn stopped")
    assert read_outcome(tmp_path / "outcome.json").status is Status.INTERRUPTED
    run = RunDirectory(tiny_run)
    assert not run.knn.exists()
    # Nothing half-written is left in the run directory (the feature cache writes whole files or none).
    assert not [path for path in run.path.rglob(".tmp_*")]
    assert {number: signal.getsignal(number) for number in handlers} == handlers
