"""The run directory: every file a run writes has its name here, and its records are read back here.

runs/NAME/
  config.yaml              the fully resolved config
  metrics.jsonl            one JSON object per logged step (step, epoch, loss, lr, ...)
  pretrain.json            the finished pretraining: seconds, steps, epochs, samples and views per second
  checkpoints/step_*/      Accelerate state, resumable (`.tmp_*` while being written)
  encoder.safetensors      backbone + head weights, the spec to rebuild them and their preprocessing
  features/                evaluation's feature cache
  probe.json, knn.json     evaluation results
  tsne_<features>.png      evaluation's map
  unreadable_images.txt    input files the dataset could not read and skipped
  wandb/, ssl_toolkit/     the W&B and TensorBoard trackers' files
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "step_"


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so that it is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """Strict JSON (no bare NaN or Infinity: they become null)."""
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value: Any) -> None:
    """Write `value` as strict JSON to `path`, atomically: a reader sees the old file or the new one."""
    path = Path(path)
    partial = path.with_name(f".tmp_{path.name}")
    partial.write_text(json_text(value, indent=2) + "\n")
    os.replace(partial, path)


class RunDirectory:
    """The files of the run in `path`; nothing is created until a writer asks for it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "pretrain.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def encoder(self) -> Path:
        return self.path / "encoder.safetensors"

    @property
    def features(self) -> Path:
        return self.path / "features"

    @property
    def probe(self) -> Path:
        return self.path / "probe.json"

    @property
    def knn(self) -> Path:
        return self.path / "knn.json"

    @property
    def unreadable_inputs(self) -> Path:
        return self.path / "unreadable_images.txt"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    def tsne(self, features: str) -> Path:
        return self.path / f"tsne_{features}.png"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def checkpoint_dirs(self) -> list[Path]:
        """Completed checkpoints, oldest first (one being written is a `.tmp_*` folder, not listed)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))

    def append_metrics(self, record: dict) -> None:
        with self.metrics.open("a") as handle:
            handle.write(json_text(record) + "\n")

    def read_metrics(self) -> list[dict]:
        """Every record of metrics.jsonl, in order ([] before the first)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary, summary)

    def read_summary(self) -> dict:
        """pretrain.json: what the finished pretraining measured."""
        return json.loads(self.summary.read_text())

    def count_unreadable_inputs(self) -> int:
        """Files listed as unreadable (each DataLoader worker reports a file once, so lines repeat)."""
        path = self.unreadable_inputs
        return len(set(path.read_text().splitlines())) if path.is_file() else 0
