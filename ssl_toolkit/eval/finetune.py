"""`ssl-toolkit finetune RUN_DIR --label-fraction F`: SimCLR's semi-supervised protocol → finetune.json.

The whole backbone and a linear layer are fine-tuned on a seeded, class-stratified share of the labelled
train split (at least one image per class) and scored on the test split. SimCLR (appendix B.5): Nesterov
SGD, learning rate 0.05 × batch / 256, no weight decay, random crops and flips only, 60 epochs for 1% of
the labels and 30 for 10% (and here for more).
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.classifier_training import ClassifierSchedule, labelled_train_indices, train_classifier
from ssl_toolkit.eval.defaults import FINETUNE_LR, finetune_epochs
from ssl_toolkit.eval.run import EvaluationRun, open_run
from ssl_toolkit.files import write_json


def run_finetune(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    label_fraction: float,
    schedule: ClassifierSchedule | None = None,
    batch_size: int = 256,
) -> dict | None:
    """Fine-tune the run's backbone on `label_fraction` of the labelled train images; returns the result
    (main process; None on the others) and adds it to finetune.json under the fraction, beside the results
    of other fractions.

    `schedule` defaults to SimCLR's for the fraction (`finetune_epochs`, lr 0.05 at batch 256).
    """
    if not 0 < label_fraction <= 1:
        raise ConfigError(f"--label-fraction {label_fraction} must be in (0, 1], e.g. 0.01 or 0.1")
    schedule = schedule or ClassifierSchedule(epochs=finetune_epochs(label_fraction), lr=FINETUNE_LR)
    schedule.check()
    run = open_run(run_dir, overrides, batch_size=batch_size)
    indices = labelled_train_indices(run, label_fraction)
    report = train_classifier(
        run, indices, schedule, fine_tune=True, seed=run.config.seed, command="finetune"
    )
    if report is None:
        return None
    result = {
        **report,
        "protocol": "finetune",
        "label_fraction": label_fraction,
        "features": "backbone",
        "classes": run.classes,
    }
    path = run.directory.finetune
    results = _read_results(path)
    results[f"{label_fraction:g}"] = result
    write_json(path, results)
    prefix = f"finetune_{label_fraction:g}"  # W&B keys: finetune_0.01/top1
    run.publish({f"{prefix}/{key}": result[key] for key in ("top1", "top5", "auroc") if key in result})
    return result


def _read_results(path: Path) -> dict:
    """finetune.json's results by label fraction; none when the file is missing or unreadable (replaced)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}
