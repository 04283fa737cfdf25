"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018, InstDisc), and the
`ssl-toolkit knn RUN_DIR` protocol that applies it to a run's frozen features → knn.json."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.defaults import KNN_K, KNN_TEMPERATURE
from ssl_toolkit.eval.metrics import top_k_accuracy
from ssl_toolkit.eval.run import FEATURES, EvaluationRun, open_run
from ssl_toolkit.files import write_json


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (M, C) of test features (M, D) from the k most similar train features (N, D).

    Each neighbour votes for its class with weight exp(s/T), s its cosine similarity, as in InstDisc and
    solo-learn (k = 200, T = 0.07: `defaults`). Test rows go in chunks, so memory grows as chunk·N.
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


def run_knn(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    features: str = "backbone",
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    batch_size: int = 256,
) -> dict | None:
    """Classify the test split by its k most similar train features; writes knn.json and returns it.

    Under `accelerate launch` the main process classifies, writes and returns; the others return None.
    `run_dir` may be an open `EvaluationRun`, whose cached features are then reused.
    """
    if features not in FEATURES:
        raise ConfigError(f"--features {features!r} is not one of: {', '.join(FEATURES)}")
    if k < 1 or temperature <= 0:
        raise ConfigError(f"--k must be at least 1 and --temperature positive, got k={k}, T={temperature}")
    started = time.perf_counter()
    run = open_run(run_dir, overrides, batch_size=batch_size)
    (train_x, train_y), (test_x, test_y) = run.features(features, "train"), run.features(features, "test")
    if not run.is_main_process:
        return None
    device = run.device
    scores = knn_scores(
        train_x.to(device),
        train_y.to(device),
        test_x.to(device),
        run.num_classes,
        k=k,
        temperature=temperature,
    )
    test_y = test_y.to(device)
    result = {"top1": top_k_accuracy(scores, test_y, 1)}
    if run.num_classes >= 5:
        result["top5"] = top_k_accuracy(scores, test_y, 5)
    result.update(
        k=min(k, len(train_y)),
        temperature=temperature,
        num_train=len(train_y),
        num_test=len(test_y),
        feature_dim=train_x.shape[1],
        features=features,
        unreadable_images=run.unreadable_images,
        seconds=time.perf_counter() - started,
    )
    write_json(run.directory.knn, result)
    run.publish({f"knn/{key}": result[key] for key in ("top1", "top5", "k") if key in result})
    return result
