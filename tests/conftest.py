from __future__ import annotations

import pytest
from pretraining_runs import tiny_config


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; start and leave every test without them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 2-step pretraining run on digits, shared by the tests that only read it."""
    from accelerate.state import AcceleratorState, GradientState

    from ssl_toolkit.engine import pretrain

    run_dir = pretrain(tiny_config(tmp_path_factory.mktemp("runs")))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return run_dir
