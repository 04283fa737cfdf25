"""Pairwise sigmoid loss against a loop-based float64 restatement of the SigLIP-style pair BCE."""

from __future__ import annotations

import math

import pytest
import torch
from cases import LABEL_LAYOUTS
from torch.func import functional_call

from ssl_toolkit.losses import blockwise
from ssl_toolkit.losses.sigmoid import SigmoidLoss


def sigmoid_reference(embeddings, labels, t, b):
    """BCE(σ(t·s_ij + b), y_ij) one ordered pair i ≠ j at a time, in float64."""
    z = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in embeddings.double().tolist()]
    n = len(z)
    terms = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            s = sum(a * c for a, c in zip(z[i], z[j], strict=True))
            p = 1.0 / (1.0 + math.exp(-(t * s + b)))
            y = 1.0 if labels[i] == labels[j] else 0.0
            terms.append(-(y * math.log(p) + (1.0 - y) * math.log(1.0 - p)))
    return sum(terms) / len(terms) if terms else 0.0


def _embeddings(n, d=6, seed=0, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _loss_with(t, b, **kwargs):
    loss = SigmoidLoss(**kwargs)
    with torch.no_grad():
        loss.log_scale.fill_(math.log(t))
        loss.bias.fill_(b)
    return loss


def test_scale_and_bias_start_at_10_and_minus_10():
    loss = SigmoidLoss()
    assert loss.scale.item() == pytest.approx(10.0)
    assert loss.bias.item() == -10.0
    assert {name for name, _ in loss.named_parameters()} == {"log_scale", "bias"}


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize(("t", "b"), [(10.0, -10.0), (3.0, -1.0), (0.5, 2.0)])
def test_matches_the_pairwise_formula(layout, t, b):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = _embeddings(len(labels), seed=len(labels))
    loss = _loss_with(t, b)(embeddings, labels)
    expected = sigmoid_reference(embeddings, labels.tolist(), t, b)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_scale_and_bias_get_gradients():
    labels = torch.tensor(LABEL_LAYOUTS["uneven_classes"])
    loss = SigmoidLoss()
    loss(_embeddings(len(labels)), labels).backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.item() != 0
    # At b = −10 every logit is ≤ 0: σ(z) − y is about −1 on positive pairs and nearly 0 on negative ones.
    assert loss.bias.grad is not None and loss.bias.grad.item() < 0


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
def test_gradient_is_correct_in_float64(layout):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = _embeddings(len(labels), d=4, seed=3, dtype=torch.float64).requires_grad_()
    loss = SigmoidLoss()
    log_scale = torch.tensor(math.log(2.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)

    def f(e, log_t, b):
        return functional_call(loss, {"log_scale": log_t, "bias": b}, (e, labels))

    assert torch.autograd.gradcheck(f, (embeddings, log_scale, bias), atol=1e-7, rtol=1e-5)


def test_blocks_do_not_change_the_result(monkeypatch):
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(1))
    embeddings = _embeddings(50, d=8, seed=1, dtype=torch.float64).requires_grad_()
    loss = _loss_with(3.0, -1.0).double()
    inputs = (embeddings, loss.log_scale, loss.bias)
    whole = loss(embeddings, labels)
    whole_grads = torch.autograd.grad(whole, inputs)
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 7 * 50)  # blocks of 7 anchors
    blocked = loss(embeddings, labels)
    blocked_grads = torch.autograd.grad(blocked, inputs)
    torch.testing.assert_close(blocked, whole)
    torch.testing.assert_close(blocked_grads, whole_grads)


def test_one_sample_has_no_pair_and_gives_zero():
    embeddings = _embeddings(1).requires_grad_()
    loss = SigmoidLoss()(embeddings, torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(embeddings.grad == 0)


def test_without_autograd_the_value_is_the_same():
    labels = torch.tensor(LABEL_LAYOUTS["uneven_classes"])
    embeddings = _embeddings(len(labels))
    loss = SigmoidLoss()
    with_grad = loss(embeddings, labels)
    with torch.no_grad():
        without = loss(embeddings, labels)
    assert without.item() == pytest.approx(with_grad.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("t", "b"), [(10.0, -10.0), (100.0, -100.0)], ids=["init", "scale_100"])
def test_half_precision_and_large_scale_stay_finite(dtype, t, b):
    # t = 100 is the sigmoid counterpart of τ = 0.01: logits reach ±200, far past where log(σ) underflows.
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = _embeddings(64, d=32).to(dtype).requires_grad_()
    loss = _loss_with(t, b)
    value = loss(embeddings, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()
    assert torch.isfinite(loss.log_scale.grad) and torch.isfinite(loss.bias.grad)


def test_arguments_are_checked():
    for init_scale in (0.0, -1.0):
        with pytest.raises(ValueError, match="init_scale"):
            SigmoidLoss(init_scale=init_scale)
    with pytest.raises(ValueError, match="init_bias"):
        SigmoidLoss(init_bias=float("nan"))
    with pytest.raises(ValueError, match="labels"):
        SigmoidLoss()(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match="embeddings"):
        SigmoidLoss()(torch.randn(4), torch.arange(4))
