from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from ssl_toolkit.eval.linear_probe import train_linear_probe
from ssl_toolkit.eval.metrics import classification_report, macro_auroc, top_k_accuracy
from ssl_toolkit.eval.probe import run_probe


def _blobs(n_per_class, num_classes, dim, separation, noise_seed):
    """Gaussian classes around fixed centres; `noise_seed` draws a new sample from the same classes."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)) * separation
    targets = torch.arange(num_classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(targets), dim, generator=torch.Generator().manual_seed(noise_seed))
    return centres[targets] + noise, targets


def test_probe_recovers_separable_classes_and_not_noise():
    x, y = _blobs(60, 4, 16, separation=3.0, noise_seed=1)
    x_test, y_test = _blobs(30, 4, 16, separation=3.0, noise_seed=2)
    classifier, search = train_linear_probe(x, y, 4)
    assert (classifier.scores(x_test).argmax(1) == y_test).float().mean() > 0.95
    assert set(search) == {"weight_decay", "val_top1"}
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    classifier, _ = train_linear_probe(x, shuffled, 4)
    fresh_x, fresh_y = _blobs(200, 4, 16, separation=0.0, noise_seed=3)
    assert (classifier.scores(fresh_x).argmax(1) == fresh_y).float().mean() < 0.45


def test_metrics_agree_with_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 6, generator=generator)
    targets = torch.randint(0, 6, (200,), generator=generator)
    probabilities = scores.softmax(1)
    expected = roc_auc_score(targets.numpy(), probabilities.numpy(), multi_class="ovr", average="macro")
    assert macro_auroc(probabilities, targets) == pytest.approx(expected, rel=1e-9)
    binary_targets = torch.randint(0, 2, (50,), generator=generator)
    binary_scores = torch.randn(50, 2, generator=generator)
    expected_binary = roc_auc_score(binary_targets.numpy(), binary_scores.softmax(1)[:, 1].numpy())
    assert macro_auroc(binary_scores.softmax(1), binary_targets) == pytest.approx(expected_binary)
    top2 = (scores.topk(2, dim=1).indices == targets[:, None]).any(1).float().mean().item()
    assert top_k_accuracy(scores, targets, 2) == pytest.approx(top2)
    report = classification_report(scores, targets, 6)
    assert sum(map(sum, report["confusion_matrix"])) == 200
    assert report["top1"] == pytest.approx((scores.argmax(1) == targets).float().mean().item())


def test_probe_command_writes_probe_json(tiny_run):
    result = run_probe(tiny_run, baselines=True)
    written = json.loads((tiny_run / "probe.json").read_text())
    assert written["top1"] == result["top1"]
    required = {"top1", "top5", "auroc", "num_train", "num_test", "feature_dim", "features"}
    assert required | {"random_init_top1", "raw_pixels_top1"} <= written.keys()
    assert written["num_train"] == 1347 and written["num_test"] == 450
    assert written["features"] == "backbone"
    for key in ("top1", "top5", "random_init_top1", "raw_pixels_top1"):
        assert 0.1 < written[key] <= 1.0  # far above chance on digits, even untrained
    assert written["raw_pixels_top1"] > 0.8
