"""Gradient boosting on frozen features and mean ± std over stratified folds, checked against scikit-learn
used directly."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.boosting import evaluate_boosting
from ssl_toolkit.eval.probe import check_folds, cross_validate, downstream_evaluator


def _blobs(n: int, num_classes: int, seed: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % num_classes
    centres = torch.randn(num_classes, 6, generator=generator) * 2
    return centres[targets] + spread * torch.randn(n, 6, generator=generator), targets


def test_boosting_scores_as_scikit_learn_predicts():
    train, test = _blobs(300, 3, seed=0, spread=1.5), _blobs(120, 3, seed=1, spread=1.5)
    test = (test[0], test[1])
    report = evaluate_boosting(train, test, 3, seed=4)
    model = HistGradientBoostingClassifier(random_state=4).fit(train[0].numpy(), train[1].numpy())
    expected_top1 = float((model.predict(test[0].numpy()) == test[1].numpy()).mean())
    assert report["top1"] == pytest.approx(expected_top1)
    assert report["num_train"] == 300 and report["num_test"] == 120 and report["feature_dim"] == 6
    assert 0.0 < report["top1"] < 1.0  # not a trivially separable case


def test_binary_targets_get_the_binary_auroc_of_the_positive_class():
    features, targets = _blobs(400, 2, seed=2, spread=3.0)
    train, test = (features[:300], targets[:300]), (features[300:], targets[300:])
    report = evaluate_boosting(train, test, 2, seed=0)
    model = HistGradientBoostingClassifier(random_state=0).fit(train[0].numpy(), train[1].numpy())
    expected = roc_auc_score(test[1].numpy(), model.predict_proba(test[0].numpy())[:, 1])
    assert report["auroc"] == pytest.approx(expected, abs=1e-9)
    assert 0.5 < report["auroc"] < 1.0


def test_a_class_missing_from_train_gets_no_probability():
    features, targets = _blobs(200, 3, seed=3)
    keep = targets != 2
    train, test = (features[keep], targets[keep]), (features, targets)
    report = evaluate_boosting(train, test, 3, seed=0)
    assert report["confusion_matrix"][2][2] == 0  # never predicted
    assert len(report["confusion_matrix"]) == 3


def test_fold_means_equal_scikit_learns_cross_validation():
    train = _blobs(250, 4, seed=5, spread=2.0)
    evaluate = downstream_evaluator("boosting", 4, seed=7)
    result = cross_validate(evaluate, train, 5, seed=7)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=7)
    expected = cross_val_score(
        HistGradientBoostingClassifier(random_state=7), train[0].numpy(), train[1].numpy(), cv=folds
    )
    assert [fold["top1"] for fold in result["per_fold"]] == pytest.approx(list(expected))
    assert result["top1_mean"] == pytest.approx(float(np.mean(expected)))
    assert result["top1_std"] == pytest.approx(statistics.stdev(expected))
    assert result["folds"] == 5 and len(result["per_fold"]) == 5


def test_the_linear_model_cross_validates_too():
    train = _blobs(200, 2, seed=6, spread=2.5)
    result = cross_validate(downstream_evaluator("linear", 2, seed=0, weight_decay=1e-3), train, 4, seed=0)
    assert len(result["per_fold"]) == 4 and 0.5 < result["top1_mean"] <= 1.0
    assert 0.5 < result["auroc_mean"] <= 1.0 and result["auroc_std"] >= 0.0


@pytest.mark.parametrize("folds", [1, 0, 60])
def test_fold_counts_outside_the_classes_sizes_are_refused(folds):
    targets = torch.arange(100) % 2  # 50 per class
    with pytest.raises(ConfigError, match=rf"--folds {folds} must be between 2 and 50"):
        check_folds(folds, targets)


def test_an_unknown_model_is_refused():
    with pytest.raises(ConfigError, match="--model 'forest' is not one of: linear, boosting"):
        downstream_evaluator("forest", 2, seed=0)
