"""CoLES softmax loss against a loop-based float64 restatement of Babaev et al. 2022."""

from __future__ import annotations

import math

import pytest
import torch
from cases import LABEL_LAYOUTS

from ssl_toolkit.losses import SupConLoss, blockwise
from ssl_toolkit.losses.coles import ColesLoss


def coles_reference(embeddings, labels, tau):
    """One ordered positive pair at a time, against the anchor's negatives only, in float64."""
    z = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in embeddings.double().tolist()]
    n = len(z)

    def s(i, j):
        return sum(a * b for a, b in zip(z[i], z[j], strict=True))

    terms = []
    for a in range(n):
        negatives = sum(math.exp(s(a, k) / tau) for k in range(n) if labels[k] != labels[a])
        for p in range(n):
            if p != a and labels[p] == labels[a]:
                positive = math.exp(s(a, p) / tau)
                terms.append(-math.log(positive / (positive + negatives)))
    return sum(terms) / len(terms) if terms else 0.0


def _embeddings(n, d=6, seed=0, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_matches_the_papers_formula(layout, tau):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = _embeddings(len(labels), seed=len(labels))
    loss = ColesLoss(temperature=tau)(embeddings, labels)
    expected = coles_reference(embeddings, labels.tolist(), tau)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("layout", ["uneven_classes", "large_ids"])
def test_other_positives_are_not_in_the_denominator(layout):
    # Guards against a SupCon-style denominator: with classes of 3+ the two losses must differ.
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = _embeddings(len(labels), seed=5)
    coles = ColesLoss(temperature=0.2)(embeddings, labels)
    supcon = SupConLoss(temperature=0.2)(embeddings, labels)
    assert abs(coles.item() - supcon.item()) > 1e-3


def test_equals_supcon_when_each_sample_has_one_positive():
    labels = torch.tensor(LABEL_LAYOUTS["pairs"])
    embeddings = _embeddings(len(labels), seed=2)
    coles = ColesLoss(temperature=0.2)(embeddings, labels)
    supcon = SupConLoss(temperature=0.2)(embeddings, labels)
    assert coles.item() == pytest.approx(supcon.item(), rel=1e-6)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [7, 7, 7, 7, 7, 7]], ids=["no_positive", "no_negative"])
def test_degenerate_batches_give_zero_and_a_zero_gradient(labels):
    embeddings = _embeddings(len(labels)).requires_grad_()
    loss = ColesLoss()(embeddings, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0
    assert embeddings.grad is not None and torch.all(embeddings.grad == 0)


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
def test_gradient_is_correct_in_float64(layout):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = _embeddings(len(labels), d=4, seed=3, dtype=torch.float64).requires_grad_()
    loss = ColesLoss(temperature=0.3)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (embeddings,), atol=1e-7, rtol=1e-5)


def test_blocks_do_not_change_the_result(monkeypatch):
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(1))
    embeddings = _embeddings(50, d=8, seed=1, dtype=torch.float64).requires_grad_()
    whole = ColesLoss(temperature=0.1)(embeddings, labels)
    (whole_grad,) = torch.autograd.grad(whole, embeddings)
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 7 * 50)  # blocks of 7 anchors
    blocked = ColesLoss(temperature=0.1)(embeddings, labels)
    (blocked_grad,) = torch.autograd.grad(blocked, embeddings)
    torch.testing.assert_close(blocked, whole)
    torch.testing.assert_close(blocked_grad, whole_grad)


def test_without_autograd_the_value_is_the_same():
    labels = torch.tensor(LABEL_LAYOUTS["uneven_classes"])
    embeddings = _embeddings(len(labels)).requires_grad_()
    with_grad = ColesLoss()(embeddings, labels)
    with torch.no_grad():
        without = ColesLoss()(embeddings, labels)
    assert without.item() == pytest.approx(with_grad.item(), rel=1e-6)
    assert ColesLoss()(embeddings.detach(), labels).item() == pytest.approx(with_grad.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_tiny_temperature_stay_finite(dtype):
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = _embeddings(64, d=32).to(dtype).requires_grad_()
    loss = ColesLoss(temperature=0.01)(embeddings, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()


def test_arguments_are_checked():
    for temperature in (0.0, -0.1):
        with pytest.raises(ValueError, match="temperature"):
            ColesLoss(temperature=temperature)
    with pytest.raises(ValueError, match="labels"):
        ColesLoss()(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match="embeddings"):
        ColesLoss()(torch.randn(4), torch.arange(4))
