from __future__ import annotations

from pathlib import Path

import pytest

from ssl_toolkit.config import load_config

REPO = Path(__file__).resolve().parent.parent

# Small enough that a pretraining step takes well under a second on 2 CPU cores.
TINY_RUN = [
    "data.image_size=8",
    "model.backbone=test_resnet",
    "model.proj_dim=16",
    "train.batch_size=32",
    "train.max_steps=2",
    "train.checkpoint_every=1",
    "log.trackers=[]",
    "log.every=1",
]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; start and leave every test without them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def tiny_config(output_dir, name="tiny", *overrides):
    return load_config(
        REPO / "recipes" / "quickstart.yaml",
        [*TINY_RUN, f"run.output_dir={output_dir}", f"run.name={name}", *overrides],
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 2-step pretraining run on digits, shared by the tests that only read it."""
    from accelerate.state import AcceleratorState, GradientState

    from ssl_toolkit.engine import pretrain

    run_dir = pretrain(tiny_config(tmp_path_factory.mktemp("runs")))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return run_dir
