"""Tiny pretraining runs for tests: a config small enough for a step well under a second on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

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


def tiny_config(output_dir, name="tiny", *overrides):
    return load_config(
        REPO / "recipes" / "quickstart.yaml",
        [*TINY_RUN, f"run.output_dir={output_dir}", f"run.name={name}", *overrides],
    )


def logged_losses(run_dir: Path) -> list[float]:
    """The `loss` of every line of a run's metrics.jsonl, in order."""
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
