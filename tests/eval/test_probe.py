from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from ssl_toolkit.eval.linear_probe import fit_logistic_regression, train_linear_probe
from ssl_toolkit.eval.metrics import classification_report, macro_auroc, top_k_accuracy
from ssl_toolkit.eval.probe import run_probe
from ssl_toolkit.run_dir import RunDirectory


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


def test_logistic_regression_reaches_scikit_learns_optimum():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(50, 3, 8, separation=1.0, noise_seed=4)  # overlapping classes: the optimum is interior
    decay = 1e-2
    ours = fit_logistic_regression(x, y, 3, weight_decay=decay)
    standardised = ((x - x.mean(0)) / x.std(0)).double().numpy()
    # scikit-learn minimises C·Σ cross-entropy + ½‖W‖²; ours, mean cross-entropy + (decay / 2)·‖W‖².
    theirs = LogisticRegression(C=1 / (decay * len(y)), tol=1e-10, max_iter=10_000).fit(
        standardised, y.numpy()
    )
    expected = theirs.predict_proba(standardised)
    torch.testing.assert_close(
        ours.scores(x).softmax(1).double(), torch.from_numpy(expected), atol=2e-4, rtol=0
    )


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


def test_probe_command_writes_probe_json_and_prints_each_baseline(tiny_run, capsys):
    from ssl_toolkit.cli import main

    assert main(["probe", str(tiny_run), "--baselines", "--weight-decay", "1e-4"]) == 0  # one fit per kind
    printed = capsys.readouterr().out
    assert "pretrained encoder" in printed and "same backbone, untrained" in printed
    assert "raw pixels" in printed and "probe.json" in printed
    written = json.loads(RunDirectory(tiny_run).probe.read_text())
    assert f"top-1 {100 * written['top1']:.2f}%" in printed
    required = {"top1", "top5", "auroc", "num_train", "num_test", "feature_dim", "features"}
    assert required | {"random_init_top1", "raw_pixels_top1"} <= written.keys()
    assert written["num_train"] == 1347 and written["num_test"] == 450
    assert written["features"] == "backbone"
    for key in ("top1", "top5", "random_init_top1", "raw_pixels_top1"):
        assert 0.1 < written[key] <= 1.0  # far above chance on digits, even untrained
    assert written["raw_pixels_top1"] > 0.8
    assert written["baselines"] == ["random_init", "raw_pixels"]


def test_probe_of_both_features_reports_h_and_z(tiny_run):
    result = run_probe(tiny_run, features="both", weight_decay=1e-4)
    assert result["features"] == "backbone" and result["feature_dim"] == 96  # test_resnet's h
    projection = result["projection"]
    assert projection["features"] == "projection" and projection["feature_dim"] == 16  # model.proj_dim
    assert {"top1", "top5", "auroc", "confusion_matrix"} <= projection.keys()
    assert json.loads(RunDirectory(tiny_run).probe.read_text())["projection"]["top1"] == projection["top1"]


def test_unknown_feature_choice_is_a_clear_error(tiny_run):
    from ssl_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match="backbone, projection, both"):
        run_probe(tiny_run, features="h")


def test_auroc_is_over_the_classes_present():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.randn(60, 4, generator=generator).softmax(1)
    targets = torch.randint(0, 2, (60,), generator=generator) * 2  # classes 0 and 2 only, of 4
    kept = probabilities[:, [0, 2]]
    expected = roc_auc_score(targets.numpy() == 2, (kept[:, 1] / kept.sum(1)).numpy())
    assert macro_auroc(probabilities, targets) == pytest.approx(expected)
    three = torch.randint(0, 3, (60,), generator=generator)  # class 3 absent
    kept = probabilities[:, :3] / probabilities[:, :3].sum(1, keepdim=True)
    expected = roc_auc_score(three.numpy(), kept.numpy(), multi_class="ovr", average="macro")
    assert macro_auroc(probabilities, three) == pytest.approx(expected)
    assert math.isnan(macro_auroc(probabilities, torch.ones(60, dtype=torch.long)))
