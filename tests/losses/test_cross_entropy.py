"""Cross-entropy of a linear classifier against a loop-based float64 restatement and against torch's
cross_entropy on logits from the same weights; its config rules and what build.loss fills in."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from cases import CLASS_INDEX_LAYOUTS as LABEL_LAYOUTS
from cases import assert_rejects_bad_class_labels
from torch.func import functional_call

from ssl_toolkit import build
from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.losses import LOSSES, create_loss, loss_over_views
from ssl_toolkit.losses.cross_entropy import CrossEntropyLoss


def cross_entropy_reference(embeddings, labels, weight, bias, label_smoothing):
    """−(1 − ε) log p[y] − (ε/C) Σ_c log p[c] per sample, p the softmax of W z + b, mean over samples."""
    z, w, b = embeddings.double().tolist(), weight.double().tolist(), bias.double().tolist()
    num_classes = len(w)
    losses = []
    for i, y in enumerate(labels):
        logits = [sum(a * c for a, c in zip(row, z[i], strict=True)) + b[j] for j, row in enumerate(w)]
        top = max(logits)
        log_partition = top + math.log(sum(math.exp(logit - top) for logit in logits))
        log_p = [logit - log_partition for logit in logits]
        losses.append(-(1 - label_smoothing) * log_p[y] - label_smoothing / num_classes * sum(log_p))
    return sum(losses) / len(losses)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _loss_with_classifier(weight, bias, **kwargs):
    loss = CrossEntropyLoss(weight.shape[0], weight.shape[1], **kwargs)
    with torch.no_grad():
        loss.classifier.weight.copy_(weight)
        loss.classifier.bias.copy_(bias)
    return loss


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_matches_the_formula(layout, label_smoothing):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    num_classes = max(LABEL_LAYOUTS[layout]) + 1  # some classes absent from the batch, in some layouts
    embeddings = 3 * _randn(len(labels), 6, seed=len(labels))  # not unit norm: the classifier reads z as is
    weight, bias = _randn(num_classes, 6, seed=100 + num_classes), _randn(num_classes, seed=7)
    loss = _loss_with_classifier(weight, bias, label_smoothing=label_smoothing)(embeddings, labels)
    expected = cross_entropy_reference(embeddings, labels.tolist(), weight, bias, label_smoothing)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_equals_torch_cross_entropy_on_the_same_weights_in_float64(label_smoothing):
    labels = torch.tensor(LABEL_LAYOUTS["uneven_classes"])
    embeddings = _randn(len(labels), 5, seed=1, dtype=torch.float64)
    weight, bias = _randn(6, 5, seed=2), _randn(6, seed=3)
    loss = _loss_with_classifier(weight, bias, label_smoothing=label_smoothing)(embeddings, labels)
    logits = embeddings @ weight.double().T + bias.double()
    expected = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_every_view_is_classified_and_the_mean_is_over_views_and_samples():
    classes = torch.tensor([0, 2, 1, 2])
    views = [_randn(4, 5, seed=seed) for seed in (10, 11, 12)]
    loss = CrossEntropyLoss(3, 5)
    per_view = [F.cross_entropy(loss.classifier(view), classes) for view in views]
    expected = torch.stack(per_view).mean()
    torch.testing.assert_close(loss_over_views(loss, views, classes), expected)
    with pytest.raises(ValueError, match="needs class labels"):
        loss_over_views(loss, views)


def test_gradient_is_correct_in_float64():
    labels = torch.tensor(LABEL_LAYOUTS["uneven_classes"])
    embeddings = _randn(len(labels), 4, seed=3, dtype=torch.float64).requires_grad_()
    weight = _randn(6, 4, seed=4, dtype=torch.float64).requires_grad_()
    bias = _randn(6, seed=5, dtype=torch.float64).requires_grad_()
    loss = CrossEntropyLoss(6, 4, label_smoothing=0.1)

    def f(e, w, b):
        return functional_call(loss, {"classifier.weight": w, "classifier.bias": b}, (e, labels))

    assert torch.autograd.gradcheck(f, (embeddings, weight, bias))


def test_classifier_is_learned():
    loss = CrossEntropyLoss(5, 8)
    assert loss.classifier.weight.shape == (5, 8) and loss.classifier.bias.shape == (5,)
    loss(_randn(10, 8), torch.arange(10) % 5).backward()
    assert loss.classifier.weight.grad.abs().sum() > 0 and loss.classifier.bias.grad.abs().sum() > 0


def test_an_empty_batch_gives_zero_and_a_gradient():
    embeddings = torch.zeros(0, 4, requires_grad=True)
    value = CrossEntropyLoss(3, 4)(embeddings, torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and embeddings.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_finite(dtype):
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = _randn(64, 32).to(dtype).requires_grad_()
    loss = CrossEntropyLoss(10, 32)
    value = loss(embeddings, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()
    assert loss.classifier.weight.grad.dtype == torch.float32


def test_arguments_are_checked():
    assert isinstance(create_loss("cross_entropy", num_classes=3, embedding_dim=4), CrossEntropyLoss)
    with pytest.raises(ValueError, match="num_classes"):
        CrossEntropyLoss(1, 8)
    with pytest.raises(ValueError, match="embedding_dim"):
        CrossEntropyLoss(4, 0)
    for label_smoothing in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="label_smoothing"):
            CrossEntropyLoss(4, 8, label_smoothing=label_smoothing)
    loss = CrossEntropyLoss(4, 8)
    assert_rejects_bad_class_labels(loss, embedding_dim=8)


CLASS_WEIGHT_LOSSES = sorted(
    name for name, loss in LOSSES.items() if getattr(loss, "needs_class_labels", False)
)


def test_the_config_rules_of_class_weight_losses_follow_their_classes():
    assert CLASS_WEIGHT_LOSSES == ["arcface", "cross_entropy"]
    for name in CLASS_WEIGHT_LOSSES:
        with pytest.raises(ConfigError, match=rf"^loss.name={name} needs class labels"):
            load_config(None, [f"loss.name={name}"])
    with pytest.raises(ConfigError, match=r"^train.batch_size=1 must be at least 2 for loss.name=supcon"):
        load_config(None, ["loss.name=supcon", "train.batch_size=1"])


def test_config_needs_supervised_and_takes_a_batch_of_one():
    with pytest.raises(ConfigError, match=r"^loss.name=cross_entropy needs class labels"):
        load_config(None, ["loss.name=cross_entropy"])
    overrides = ["loss.name=cross_entropy", "loss.supervised=true", "train.batch_size=1"]
    config = load_config(None, [*overrides, "loss.label_smoothing=0.1"])
    assert config.train.batch_size == 1 and config.loss.options == {"label_smoothing": 0.1}
    for bad in ("1", "-0.1"):
        with pytest.raises(ConfigError, match=r"^loss.label_smoothing=.* must be in \[0, 1\)"):
            load_config(None, [*overrides, f"loss.label_smoothing={bad}"])


@pytest.mark.parametrize("name", CLASS_WEIGHT_LOSSES)
def test_build_fills_in_the_classes_and_the_projection_width(name):
    config = load_config(None, [f"loss.name={name}", "loss.supervised=true", "model.proj_dim=12"])
    dataset = SimpleNamespace(targets=torch.tensor([0, 1, 2, 1]), num_classes=7)
    loss = build.loss(config, dataset)
    assert (loss.num_classes, loss.embedding_dim) == (7, 12)
