"""Multinomial logistic regression on frozen features, in torch, with weight decay picked on validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_toolkit.eval.metrics import classification_report

WEIGHT_DECAYS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class LinearClassifier:
    """Standardisation followed by an affine map; `scores(x)` returns logits (N, C)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.weight) - self.mean) / self.std
        return x @ self.weight.T + self.bias


def fit_logistic_regression(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    *,
    weight_decay: float,
    max_iter: int = 300,
) -> LinearClassifier:
    """Full-batch L-BFGS on mean cross-entropy + (weight_decay / 2)·‖W‖², features standardised first."""
    x = features.float()
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)  # constant features (e.g. dead units) stay at zero
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, targets) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearClassifier(mean, std, weight.detach(), bias.detach())


def train_linear_probe(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    num_classes: int,
    *,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[LinearClassifier, dict]:
    """Pick the weight decay with the best top-1 on a validation split carved from train, then refit on all.

    Returns:
        The classifier fitted on the whole train split, and the search: chosen decay and val top-1 per decay.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_targets), generator=generator).to(train_features.device)
    n_val = max(1, round(val_fraction * len(order)))
    val, fit = order[:n_val], order[n_val:]
    val_top1 = {}
    for decay in weight_decays:
        classifier = fit_logistic_regression(
            train_features[fit], train_targets[fit], num_classes, weight_decay=decay
        )
        predicted = classifier.scores(train_features[val]).argmax(dim=1)
        val_top1[decay] = (predicted == train_targets[val]).float().mean().item()
    # Ties go to the larger decay: the simpler model.
    best = max(weight_decays, key=lambda decay: (val_top1[decay], decay))
    classifier = fit_logistic_regression(train_features, train_targets, num_classes, weight_decay=best)
    return classifier, {"weight_decay": best, "val_top1": {str(k): v for k, v in val_top1.items()}}


def evaluate_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    weight_decay: float | None = None,
) -> dict:
    """Fit the probe on `train` (features (N, D), targets (N,)) and report on `test`, on `device`.

    `weight_decay` fits once at that decay; by default the decay is searched on validation. Returns
    `classification_report`'s figures with the split sizes, the feature dimension and the weight decay
    (with the validation top-1 of each decay tried, when searched).
    """
    (train_x, train_y), (test_x, test_y) = [(x.to(device), y.to(device)) for x, y in (train, test)]
    if weight_decay is None:
        classifier, search = train_linear_probe(train_x, train_y, num_classes, seed=seed)
    else:
        classifier = fit_logistic_regression(train_x, train_y, num_classes, weight_decay=weight_decay)
        search = {"weight_decay": weight_decay}
    report = classification_report(classifier.scores(test_x), test_y, num_classes)
    report.update(num_train=len(train_y), num_test=len(test_y), feature_dim=train_x.shape[1], **search)
    return report
