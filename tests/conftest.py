from __future__ import annotations

import os
import shutil

import pytest
from pretraining_runs import pretrain_tiny, pretrain_to_the_end, reset_accelerate
from two_process_evaluations import evaluate_on_two_processes

from ssl_toolkit.process.launch import AccelerateLaunch, Subprocess

SHARED_RUNS = ("one_process_reference", "two_process_reference", "two_process_evaluations")


def pytest_configure(config):
    # Under pytest-xdist's workers (make test runs two): one torch thread per worker, and per process a
    # test starts, so that two workers share two cores without oversubscribing them. Collection imports
    # torch later than this, and the processes tests start inherit it.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    # Under --dist loadgroup, a group's tests run on one worker, which makes their shared fixtures once:
    # the session's shared runs, and a module's own module-scoped fixtures (each worker would make its own).
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs if fixtures is not None else {}
        if set(SHARED_RUNS) & set(definitions):
            item.add_marker(pytest.mark.xdist_group("shared_runs"))
        elif any(d.scope == "module" for defs in definitions.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


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
    return pretrain_to_the_end(Subprocess(), tmp_path_factory.mktemp("reference"), "one_process")


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory):
    """The same for two processes (`accelerate launch --multi_gpu --num_processes 2`, gloo)."""
    return pretrain_to_the_end(AccelerateLaunch(num_processes=2), tmp_path_factory.mktemp("reference"), "two")


@pytest.fixture(scope="session")
def two_process_evaluations(_finished_tiny_run, tmp_path_factory):
    """The evaluation commands that tests check under two processes, run in one launch (read-only)."""
    return evaluate_on_two_processes(_finished_tiny_run, tmp_path_factory.mktemp("two_process_evaluations"))
