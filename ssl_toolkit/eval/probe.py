"""`ssl-toolkit probe RUN_DIR`: a downstream classifier on a run's frozen features → probe.json (the linear
probe fitted by L-BFGS) or probe_boosting.json (gradient boosting), optionally with baselines and the mean ±
std over stratified folds of the train split; `--protocol sgd` hands over to `sgd_probe`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.boosting import Split, evaluate_boosting
from ssl_toolkit.eval.classifier_training import ClassifierSchedule
from ssl_toolkit.eval.linear_probe import evaluate_linear_probe
from ssl_toolkit.eval.rankme import rankme, rankme_warning
from ssl_toolkit.eval.run import FEATURES, RANDOM_INIT, EvaluationRun, open_run
from ssl_toolkit.eval.sgd_probe import SGD_PROBE_SCHEDULE, SUMMARY_KEYS, check_sgd_options, run_sgd_probe
from ssl_toolkit.files import write_json

FEATURE_CHOICES = (*FEATURES, "both")
PROTOCOLS = ("lbfgs", "sgd")  # the linear probe's: on frozen features, or trained on augmented images
MODELS = ("linear", "boosting")
FOLD_METRICS = ("top1", "auroc")


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
    schedule: ClassifierSchedule = SGD_PROBE_SCHEDULE,
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
        check_sgd_options(features=features, model=model, baselines=baselines, folds=folds)
        return run_sgd_probe(run_dir, overrides, batch_size=batch_size, schedule=schedule)
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


def downstream_evaluator(
    model: str, num_classes: int, *, seed: int, device=None, weight_decay: float | None = None
) -> Callable[[Split, Split], dict]:
    """`(train, test) → report` of the downstream `model` (one of MODELS)."""
    if model == "linear":
        return lambda train, test: evaluate_linear_probe(
            train, test, num_classes, seed=seed, device=device, weight_decay=weight_decay
        )
    if model == "boosting":
        return lambda train, test: evaluate_boosting(train, test, num_classes, seed=seed)
    raise ConfigError(f"--model {model!r} is not one of: {', '.join(MODELS)}")


def check_folds(folds: int | None, targets: torch.Tensor) -> None:
    """`folds` must be ≥ 2 and no more than the items of the largest class (stratification needs them)."""
    if folds is None:
        return
    largest = int(torch.bincount(targets[targets >= 0]).max()) if len(targets) else 0
    if folds < 2 or folds > largest:
        raise ConfigError(
            f"--folds {folds} must be between 2 and {largest} (the train items of the largest class), "
            "e.g. --folds 5"
        )


def cross_validate(evaluate: Callable[[Split, Split], dict], train: Split, folds: int, *, seed: int) -> dict:
    """Mean ± std (sample, ddof=1) of top-1 and AUROC over `folds` stratified, seeded folds of `train`:
    each fold is scored by the model fitted on the others."""
    features, targets = train
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    per_fold = []
    for fit, held_out in splitter.split(np.zeros(len(targets)), targets.cpu().numpy()):
        fit, held_out = torch.from_numpy(fit), torch.from_numpy(held_out)
        report = evaluate((features[fit], targets[fit]), (features[held_out], targets[held_out]))
        per_fold.append({metric: report[metric] for metric in FOLD_METRICS})
    summary: dict = {"folds": folds}
    for metric in FOLD_METRICS:
        values = [fold[metric] for fold in per_fold]
        finite = [value for value in values if value == value]  # AUROC is NaN for a one-class fold
        summary[f"{metric}_mean"] = statistics.fmean(finite) if finite else float("nan")
        summary[f"{metric}_std"] = statistics.stdev(finite) if len(finite) >= 2 else float("nan")
    summary["per_fold"] = per_fold
    return summary
