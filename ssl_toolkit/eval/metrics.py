"""Classification metrics from class scores."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score


def top_k_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of rows of `scores` (N, C) whose true class is among the k highest."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def macro_auroc(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro one-vs-rest AUROC over the classes present in `targets` (binary AUROC when two are).

    Classes without a test sample (an empty class folder) have no AUROC and are left out; with fewer than
    two classes present there is none at all: NaN.
    """
    y = targets.cpu().numpy()
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    # scikit-learn needs score columns for exactly the present classes, summing to 1.
    p = probabilities.double().cpu().numpy()[:, present]
    p = p / p.sum(axis=1, keepdims=True)
    if len(present) == 2:
        return float(roc_auc_score(y == present[1], p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=present))


def classification_report(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict:
    """top1, top5 (with ≥ 5 classes), macro AUROC and the confusion matrix (rows: true class)."""
    probabilities = scores.float().softmax(dim=1)
    report = {"top1": top_k_accuracy(scores, targets, 1)}
    if num_classes >= 5:
        report["top5"] = top_k_accuracy(scores, targets, 5)
    report["auroc"] = macro_auroc(probabilities, targets)
    predicted = scores.argmax(dim=1).cpu().numpy()
    matrix = confusion_matrix(targets.cpu().numpy(), predicted, labels=list(range(num_classes)))
    report["confusion_matrix"] = matrix.tolist()
    return report
