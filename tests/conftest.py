from __future__ import annotations

import shutil

import pytest
from pretraining_runs import pretrain_tiny, reset_accelerate


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
