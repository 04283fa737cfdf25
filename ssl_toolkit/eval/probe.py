"""`ssl-toolkit probe RUN_DIR`: a downstream classifier on a pretraining run's frozen encoder → probe.json
(the linear probe fitted by L-BFGS on frozen features), probe_sgd.json (the linear probe trained by SGD on
augmented images) or probe_boosting.json (gradient boosting)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.downstream import MODELS, check_folds, cross_validate, downstream_evaluator
from ssl_toolkit.eval.rankme import rankme, rankme_warning
from ssl_toolkit.eval.run import FEATURES, RANDOM_INIT, EvaluationRun, open_run
from ssl_toolkit.eval.supervised import (
    SupervisedSchedule,
    check_images,
    labelled_train_indices,
    train_classifier,
)
from ssl_toolkit.run_dir import write_json

FEATURE_CHOICES = (*FEATURES, "both")
PROTOCOLS = ("lbfgs", "sgd")  # the linear probe's: on frozen features, or trained on augmented images
SUMMARY_KEYS = ("top1", "top5", "auroc", "features", "rankme")
SGD_PROBE_SCHEDULE = SupervisedSchedule(epochs=100, lr=0.1)  # SimCLR's and solo-learn's linear evaluation


def run_probe(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    features: str = "backbone",
    baselines: bool = False,
    batch_size: int = 256,
    weight_decay: float | None = None,
    model: str = "linear",
    folds: int | None = None,
    protocol: str = "lbfgs",
    schedule: SupervisedSchedule = SGD_PROBE_SCHEDULE,
) -> dict | None:
    """Probe the run's frozen encoder on its dataset; writes the result file and returns its contents.

    `features`: "backbone" (h, the default), "projection" (z) or "both", which reports h at the top level
    and z under "projection". `baselines` adds `random_init_top1` (the same backbone, untrained) and the
    data kind's raw baseline (`raw_pixels_top1` for images) under the same probe. Under `accelerate launch`
    every process embeds its share of the data; the main process fits the probes, writes the file and
    returns the result, the others None. `weight_decay` fixes the probe's decay; by default it is picked
    on a validation split carved from train. `run_dir` may be an open `EvaluationRun`, whose features
    later evaluations reuse.

    `model`: "linear" (the L-BFGS logistic regression, → probe.json) or "boosting" (scikit-learn's
    HistGradientBoosting, → probe_boosting.json). `folds` adds, beside the test-split figures, the mean ±
    std of top-1 and AUROC over that many stratified folds of the train split (under "cross_validation",
    and `<baseline>_cross_validation` for each baseline).

    `protocol` (the linear probe's): "lbfgs" fits the probe on frozen features of unaugmented images
    (SimCLR's transfer protocol); "sgd" trains it by SGD on random resized crops and flips of the training
    images as `schedule` says, over the frozen backbone (SimCLR's and solo-learn's linear evaluation;
    → probe_sgd.json). Every result names its protocol, and h's RankMe (effective rank, on the train
    features) comes with the L-BFGS and boosting results.
    """
    if model not in MODELS:
        raise ConfigError(f"--model {model!r} is not one of: {', '.join(MODELS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if protocol == "sgd":
        return _sgd_probe(run_dir, overrides, features, baselines, model, folds, batch_size, schedule)
    if weight_decay is not None and not weight_decay >= 0:
        raise ConfigError(f"--weight-decay {weight_decay} must be a number ≥ 0, e.g. 1e-4")
    if weight_decay is not None and model != "linear":
        raise ConfigError(f"--weight-decay is the linear probe's option; --model {model} takes none")
    if features not in FEATURE_CHOICES:
        raise ConfigError(f"--features {features!r} is not one of: {', '.join(FEATURE_CHOICES)}")
    started = time.perf_counter()
    run = open_run(run_dir, overrides, batch_size=batch_size)
    check_folds(folds, torch.as_tensor(run.train_set.targets))
    kinds = list(FEATURES) if features == "both" else [features]
    if baselines:
        kinds += [RANDOM_INIT, run.baseline]
    # Every process takes part in every extraction (a collective) before the main process fits alone.
    extracted = {kind: (run.features(kind, "train"), run.features(kind, "test")) for kind in kinds}
    if not run.is_main_process:
        return None
    evaluate = downstream_evaluator(
        model, run.num_classes, seed=run.config.seed, device=run.device, weight_decay=weight_decay
    )

    def probe(kind: str) -> dict:
        train, test = extracted[kind]
        report = evaluate(train, test)
        if folds is not None:
            report["cross_validation"] = cross_validate(evaluate, train, folds, seed=run.config.seed)
        return report

    primary = kinds[0]
    result = {
        **probe(primary),
        "model": model,
        "protocol": "lbfgs" if model == "linear" else model,
        "features": primary,
        "classes": run.classes,
    }
    if primary == "backbone":
        result["rankme"] = rankme(extracted[primary][0][0])  # of the train features
        warning = rankme_warning(result["rankme"], *extracted[primary][0][0].shape[::-1])
        if warning is not None:
            run.report(warning)
    if features == "both":
        result["projection"] = {**probe("projection"), "features": "projection"}
    if baselines:
        result["baselines"] = [RANDOM_INIT, run.baseline]
        for baseline in result["baselines"]:
            report = probe(baseline)
            result[f"{baseline}_top1"], result[f"{baseline}_auroc"] = report["top1"], report["auroc"]
            if folds is not None:
                result[f"{baseline}_cross_validation"] = report["cross_validation"]
    result["unreadable_images"] = run.unreadable_images
    result["seconds"] = time.perf_counter() - started
    result_file = run.directory.probe_result(model)
    write_json(result_file, result)

    prefix = result_file.stem  # W&B keys: probe/top1, probe_boosting/top1
    summary_keys = (
        *SUMMARY_KEYS,
        *(f"{b}_{m}" for b in (RANDOM_INIT, run.baseline) for m in ("top1", "auroc")),
    )
    summary = {f"{prefix}/{key}": value for key, value in result.items() if key in summary_keys}
    projection = result.get("projection", {})
    summary.update({f"{prefix}/projection_{k}": v for k, v in projection.items() if k in SUMMARY_KEYS})
    for metric, value in result.get("cross_validation", {}).items():
        if metric.endswith(("_mean", "_std")):
            summary[f"{prefix}/folds_{metric}"] = value
    run.publish(summary)
    return result


def _sgd_probe(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...],
    features: str,
    baselines: bool,
    model: str,
    folds: int | None,
    batch_size: int,
    schedule: SupervisedSchedule,
) -> dict | None:
    """The linear probe trained by SGD on augmented training images over the frozen backbone."""
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
    schedule.check()
    run = open_run(run_dir, overrides, batch_size=batch_size)
    check_images(run, "--protocol sgd")
    report = train_classifier(
        run, labelled_train_indices(run), schedule, fine_tune=False, seed=run.config.seed
    )
    if report is None:
        return None
    result = {**report, "model": "linear", "protocol": "sgd", "features": "backbone", "classes": run.classes}
    result_file = run.directory.probe_result("linear", "sgd")
    write_json(result_file, result)
    prefix = result_file.stem  # W&B keys: probe_sgd/top1
    run.publish({f"{prefix}/{key}": result[key] for key in SUMMARY_KEYS if key in result})
    return result
