"""The run directory: every file a run writes has its name here, and its records are read back here.

runs/NAME/
  .lock                    held by the run in progress (an flock; the file names the holder)
  config.yaml              the fully resolved config
  resumes.jsonl            each resume: the checkpoint, its step, the config keys it changed
  metrics.jsonl            one JSON object per logged step (step, epoch, loss, lr, ...)
  pretrain.json            the finished pretraining: seconds, steps, epochs, samples and views per second
  checkpoints/step_*/      Accelerate state and progress.json (step, processes, every file's SHA-256),
                           resumable (`.tmp_*` while being written)
  outcome.json             how the run ended: status, message, step (outcome.json.rank<N>: another
                           process of the run that failed)
  encoder.safetensors      backbone + head weights, the spec to rebuild them and their preprocessing
  features/                evaluation's feature cache
  probe.json, knn.json     evaluation results (probe_sgd.json: the SGD linear probe on augmented images;
                           probe_boosting.json: the gradient-boosting probe; rankme in probe.json)
  finetune.json            fine-tuning results, one entry per label fraction
  tsne_<features>.png      evaluation's maps (umap_<features>.png)
  unreadable_images.txt    input files the dataset could not read and skipped
  wandb/, ssl_toolkit/     the W&B and TensorBoard trackers' files
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_toolkit.files import DirectoryLock, json_text, write_json, write_text_atomically, writing

CHECKPOINT_PREFIX = "step_"


class RunDirectory:
    """The files of the run in `path`; nothing is created until a writer asks for it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def config_overrides(self) -> list[str]:
        """The config overrides that make a run write here (`run.output_dir`, `run.name`)."""
        return [f"run.output_dir={self.path.parent}", f"run.name={self.path.name}"]

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def lock(self) -> Path:
        return self.path / DirectoryLock.FILE_NAME

    @property
    def resumes(self) -> Path:
        return self.path / "resumes.jsonl"

    @property
    def outcome(self) -> Path:
        """How the run ended (the main process's account; see `ssl_toolkit.process.outcome`)."""
        return self.path / "outcome.json"

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

    def probe_result(self, model: str, protocol: str = "lbfgs") -> Path:
        """probe.json for the L-BFGS linear probe, probe_sgd.json for the SGD one on augmented images,
        probe_<model>.json for another downstream model."""
        if model == "linear":
            return self.probe if protocol == "lbfgs" else self.path / f"probe_{protocol}.json"
        return self.path / f"probe_{model}.json"

    @property
    def finetune(self) -> Path:
        return self.path / "finetune.json"

    @property
    def knn(self) -> Path:
        return self.path / "knn.json"

    @property
    def unreadable_inputs(self) -> Path:
        return self.path / "unreadable_images.txt"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    def feature_map(self, method: str, features: str) -> Path:
        """The 2-D map (t-SNE or UMAP) of the test split's features."""
        return self.path / f"{method}_{features}.png"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def checkpoint_dirs(self) -> list[Path]:
        """Completed checkpoints, oldest first (one being written is a `.tmp_*` folder, not listed)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))

    def append_metrics(self, record: dict) -> None:
        with writing(self.metrics), self.metrics.open("a") as handle:
            handle.write(json_text(record) + "\n")

    def drop_metrics_after(self, step: int) -> None:
        """Keep the records of steps up to `step`: a resumed run logs the steps after it again, once."""
        if not self.metrics.is_file():
            return
        kept = [
            line
            for line in self.metrics.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        write_text_atomically(self.metrics, "".join(f"{line}\n" for line in kept))

    def append_resume(self, record: dict) -> None:
        with writing(self.resumes), self.resumes.open("a") as handle:
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
