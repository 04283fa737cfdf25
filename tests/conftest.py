from __future__ import annotations

import fcntl
import os
import shutil

import pytest
from pretraining_runs import pretrain_tiny, pretrain_to_the_end, reset_accelerate
from two_process_evaluations import TwoProcessEvaluations, evaluate_on_two_processes

from ssl_toolkit.process.launch import AccelerateLaunch, Subprocess
from ssl_toolkit.run_dir import RunDirectory


def pytest_configure(config):
    # Under pytest-xdist's workers (make test runs two): one torch thread per worker, and per process a
    # test starts, so that two workers share two cores without oversubscribing them. Collection imports
    # torch later than this, and the processes tests start inherit it.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def made_once(tmp_path_factory, name: str, make):
    """`make(folder)` run once for the whole test session, even across pytest-xdist's workers (the first
    worker makes it under a lock, the others wait and reuse it); returns the folder. Read-only for tests."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / "made_once" / name, root / "made_once" / f"{name}.done"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(root / "made_once" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Start and leave every test without Accelerate's process-wide singletons."""
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture(scope="session")
def _finished_tiny_run(tmp_path_factory):
    return pretrain_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def tiny_run(_finished_tiny_run, tmp_path):
    """A finished 2-step pretraining run on digits: this test's own copy, so what it writes stays its own."""
    return shutil.copytree(_finished_tiny_run, tmp_path / _finished_tiny_run.name)


@pytest.fixture(scope="session")
def one_process_reference(tmp_path_factory):
    """An uninterrupted reference-length run of one process (`python -m ssl_toolkit.pretrain`): what stopped,
    killed and resumed one-process runs must equal. Read-only: copy it to change it."""
    folder = made_once(tmp_path_factory, "one_process", lambda f: pretrain_to_the_end(Subprocess(), f, "run"))
    return RunDirectory(folder / "run")


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory):
    """The same for two processes (`accelerate launch --multi_gpu --num_processes 2`, gloo)."""
    launcher = AccelerateLaunch(num_processes=2)
    folder = made_once(tmp_path_factory, "two_processes", lambda f: pretrain_to_the_end(launcher, f, "run"))
    return RunDirectory(folder / "run")


@pytest.fixture(scope="session")
def two_process_evaluations(_finished_tiny_run, tmp_path_factory):
    """The evaluation commands that tests check under two processes, run in one launch (read-only)."""
    folder = made_once(
        tmp_path_factory,
        "two_process_evaluations",
        lambda f: evaluate_on_two_processes(_finished_tiny_run, f),
    )
    return TwoProcessEvaluations.of(folder)
