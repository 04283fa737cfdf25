"""Downstream classifiers on frozen features: the linear probe and gradient boosting (CoLES's downstream
model), scored on the test split and, optionally, as mean ± std over stratified folds of the train split."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.linear_probe import evaluate_linear_probe
from ssl_toolkit.eval.metrics import classification_report

MODELS = ("linear", "boosting")
FOLD_METRICS = ("top1", "auroc")

Split = tuple[torch.Tensor, torch.Tensor]  # features (N, D), targets (N,)


def evaluate_boosting(train: Split, test: Split, num_classes: int, *, seed: int = 0) -> dict:
    """scikit-learn's HistGradientBoostingClassifier fitted on `train`, reported on `test`.

    Its defaults (100 boosting rounds, early stopping on a 10% validation split above 10,000 items) with
    the run's seed; the class probabilities become the scores of `classification_report`.
    """
    (train_x, train_y), (test_x, test_y) = [(x.float().cpu().numpy(), y.cpu()) for x, y in (train, test)]
    model = HistGradientBoostingClassifier(random_state=seed)
    model.fit(train_x, train_y.numpy())
    probabilities = torch.zeros(len(test_y), num_classes, dtype=torch.float64)
    # Classes that train lacks keep probability 0 (their columns are absent from predict_proba).
    probabilities[:, torch.as_tensor(model.classes_)] = torch.from_numpy(model.predict_proba(test_x))
    report = classification_report(probabilities.clamp_min(1e-12).log(), test_y, num_classes)
    report.update(
        num_train=len(train_y), num_test=len(test_y), feature_dim=train_x.shape[1], rounds=model.n_iter_
    )
    return report


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
