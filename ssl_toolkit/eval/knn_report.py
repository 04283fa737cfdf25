"""`ssl-toolkit knn RUN_DIR`: weighted kNN classifier on a run's frozen features → knn.json."""

from __future__ import annotations

import time
from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.knn import knn_scores
from ssl_toolkit.eval.metrics import top_k_accuracy
from ssl_toolkit.eval.run import FEATURES, EvaluationRun, open_run
from ssl_toolkit.run_dir import write_json

DEFAULT_K = 200  # InstDisc (Wu et al. 2018) and solo-learn
DEFAULT_TEMPERATURE = 0.07


def run_knn(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    features: str = "backbone",
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
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
