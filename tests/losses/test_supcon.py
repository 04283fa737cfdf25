"""SupCon against loop-based float64 restatements of Khosla et al. eq. 2 and 3."""

from __future__ import annotations

import math

import pytest
import torch
from cases import LABEL_LAYOUTS

from ssl_toolkit.losses import NTXentLoss, SupConLoss, create_loss


def supcon_reference(embeddings, labels, tau, variant):
    """Eq. 2 (out) / eq. 3 (in), one anchor and one positive at a time, in float64."""
    z = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in embeddings.double().tolist()]
    n = len(z)

    def s(i, j):
        return sum(a * b for a, b in zip(z[i], z[j], strict=True))

    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(s(i, a) / tau) for a in range(n) if a != i)
        if variant == "out":
            term = -sum(math.log(math.exp(s(i, p) / tau) / denominator) for p in positives) / len(positives)
        else:
            term = -math.log(sum(math.exp(s(i, p) / tau) for p in positives) / len(positives) / denominator)
        losses.append(term)
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_the_papers_formula(layout, variant, tau):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(len(labels)))
    loss = SupConLoss(temperature=tau, variant=variant)(embeddings, labels)
    expected = supcon_reference(embeddings, labels.tolist(), tau, variant)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
def test_gradient_is_correct_in_float64(layout, variant):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 4, dtype=torch.float64, requires_grad=True)
    loss = SupConLoss(temperature=0.3, variant=variant)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (embeddings,))


def test_ntxent_equals_supcon_out_with_paired_labels():
    z0, z1 = torch.randn(9, 5), torch.randn(9, 5)
    labels = torch.arange(9).repeat(2)
    supcon = SupConLoss(temperature=0.2)(torch.cat([z0, z1]), labels)
    assert NTXentLoss(temperature=0.2)(z0, z1).item() == pytest.approx(supcon.item(), rel=1e-6)


def test_out_is_at_least_in_by_jensen():
    generator = torch.Generator().manual_seed(3)
    for trial in range(20):
        labels = torch.randint(0, 4, (24,), generator=generator)
        embeddings = torch.randn(24, 8, generator=generator)
        out = SupConLoss(temperature=0.1 + 0.05 * trial, variant="out")(embeddings, labels)
        inner = SupConLoss(temperature=0.1 + 0.05 * trial, variant="in")(embeddings, labels)
        assert out.item() >= inner.item() - 1e-6


def test_no_positive_anywhere_gives_zero_and_a_gradient():
    embeddings = torch.randn(5, 3, requires_grad=True)
    loss = SupConLoss()(embeddings, torch.arange(5))
    loss.backward()
    assert loss.item() == 0.0 and embeddings.grad is not None and torch.all(embeddings.grad == 0)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_tiny_temperature_stay_finite(dtype, variant):
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = torch.randn(64, 32, dtype=dtype, requires_grad=True)
    loss = SupConLoss(temperature=0.01, variant=variant)(embeddings, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()


def test_blocks_do_not_change_the_result(monkeypatch):
    from ssl_toolkit.losses import blockwise

    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(1))
    embeddings = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    for variant in ("out", "in"):
        whole = SupConLoss(variant=variant)(embeddings, labels)
        (whole_grad,) = torch.autograd.grad(whole, embeddings)
        monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 7 * 50)  # blocks of 7 anchors
        blocked = SupConLoss(variant=variant)(embeddings, labels)
        (blocked_grad,) = torch.autograd.grad(blocked, embeddings)
        monkeypatch.undo()
        torch.testing.assert_close(blocked, whole)
        torch.testing.assert_close(blocked_grad, whole_grad)


def test_arguments_are_checked():
    assert isinstance(create_loss("supcon", variant="in"), SupConLoss)
    with pytest.raises(ValueError, match="variant"):
        SupConLoss(variant="inside")
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.randn(4, 3), torch.arange(3))


def test_no_gradient_work_under_no_grad(monkeypatch):
    embeddings = torch.randn(20, 4, requires_grad=True)
    labels = torch.arange(10).repeat(2)
    expected = SupConLoss()(embeddings, labels)
    calls = []
    original_addmm = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda *a, **k: calls.append(1) or original_addmm(*a, **k))
    with torch.no_grad():
        value = SupConLoss()(embeddings, labels)
    assert value.item() == pytest.approx(expected.item()) and not calls
