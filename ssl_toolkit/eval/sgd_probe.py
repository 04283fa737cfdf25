"""`ssl-toolkit probe RUN_DIR --protocol sgd`: the linear probe trained by SGD with Nesterov momentum and a
cosine schedule on random crops and flips of the labelled train samples over the frozen backbone (SimCLR's
and solo-learn's linear evaluation) → probe_sgd.json."""

from __future__ import annotations

from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.classifier_training import ClassifierSchedule, labelled_train_indices, train_classifier
from ssl_toolkit.eval.defaults import SGD_PROBE_EPOCHS, SGD_PROBE_LR
from ssl_toolkit.eval.run import EvaluationRun, open_run
from ssl_toolkit.files import write_json

SUMMARY_KEYS = ("top1", "top5", "auroc", "features", "rankme")
SGD_PROBE_SCHEDULE = ClassifierSchedule(epochs=SGD_PROBE_EPOCHS, lr=SGD_PROBE_LR)


def check_sgd_options(*, features: str, model: str, baselines: bool, folds: int | None) -> None:
    """The probe command's options that do not go with `--protocol sgd` are refused, naming each."""
    unsupported = {
        "--features": (features, "backbone"),
        "--model": (model, "linear"),
        "--baselines": (baselines, False),
        "--folds": (folds, None),
    }
    for option, (value, allowed) in unsupported.items():
        if value != allowed:
            raise ConfigError(
                f"{option} {value} does not go with --protocol sgd (the linear probe on h, trained on "
                "augmented images); leave it out, or use --protocol lbfgs"
            )


def run_sgd_probe(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    batch_size: int = 256,
    schedule: ClassifierSchedule = SGD_PROBE_SCHEDULE,
) -> dict | None:
    """Train the linear probe by SGD on augmented training samples over the frozen backbone; writes
    probe_sgd.json and returns it on the main process (None on the others)."""
    schedule.check()
    run = open_run(run_dir, overrides, batch_size=batch_size)
    report = train_classifier(
        run,
        labelled_train_indices(run),
        schedule,
        fine_tune=False,
        seed=run.config.seed,
        command="--protocol sgd",
    )
    if report is None:
        return None
    result = {**report, "model": "linear", "protocol": "sgd", "features": "backbone", "classes": run.classes}
    result_file = run.directory.probe_result("linear", "sgd")
    write_json(result_file, result)
    prefix = result_file.stem  # W&B keys: probe_sgd/top1
    run.publish({f"{prefix}/{key}": result[key] for key in SUMMARY_KEYS if key in result})
    return result
