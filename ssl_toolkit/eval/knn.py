"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018, InstDisc)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (M, C) of test features (M, D) from the k most similar train features (N, D).

    Each neighbour votes for its class with weight exp(s/T), s its cosine similarity, as in InstDisc and
    solo-learn (k = 200, T = 0.07). Test rows go in chunks, so memory grows as chunk·N.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for chunk in F.normalize(test_features.float(), dim=1).split(chunk_size):
        similarity, neighbour = (chunk @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, train_targets[neighbour], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_top1(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    test_targets: torch.Tensor,
    num_classes: int,
    **kwargs,
) -> float:
    """Top-1 accuracy of `knn_scores` on labelled test features."""
    scores = knn_scores(train_features, train_targets, test_features, num_classes, **kwargs)
    return (scores.argmax(dim=1) == test_targets).float().mean().item()
