"""Gradient boosting on frozen features (CoLES's downstream model): scikit-learn's
HistGradientBoostingClassifier, scored like the linear probe."""

from __future__ import annotations

import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from ssl_toolkit.eval.metrics import classification_report

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
