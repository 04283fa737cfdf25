"""Contrastive loss against a loop-based float64 restatement of Hadsell, Chopra, LeCun 2006 (eq. 4)."""

from __future__ import annotations

import math

import pytest
import torch
from cases import LABEL_LAYOUTS

from ssl_toolkit.losses import blockwise, create_loss
from ssl_toolkit.losses.candidates import LabelBatch
from ssl_toolkit.losses.contrastive import ContrastiveLoss


def contrastive_reference(embeddings, labels, margin):
    """y·d² + (1 − y)·relu(m − d)² for one unordered pair at a time, in float64."""
    z = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in embeddings.double().tolist()]
    n = len(z)
    terms = []
    for i in range(n):
        for j in range(i + 1, n):
            s = sum(a * b for a, b in zip(z[i], z[j], strict=True))
            d = math.sqrt(max(2 - 2 * s, 1e-8))
            terms.append(d * d if labels[i] == labels[j] else max(margin - d, 0.0) ** 2)
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("margin", [0.5, 1.2])
def test_matches_the_papers_formula(layout, margin):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(len(labels)))
    loss = ContrastiveLoss(margin=margin)(embeddings, labels)
    expected = contrastive_reference(embeddings, labels.tolist(), margin)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "embeddings",
    [torch.randn(1, 4), torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])],
    ids=["single_embedding", "negatives_beyond_the_margin"],
)
def test_no_active_pair_gives_zero_and_a_gradient(embeddings):
    embeddings = embeddings.clone().requires_grad_()
    loss = ContrastiveLoss(margin=1.0)(embeddings, torch.arange(len(embeddings)))
    loss.backward()
    assert loss.item() == 0.0 and embeddings.grad is not None and torch.all(embeddings.grad == 0)


def test_singletons_are_all_negative_pairs():
    # Unlike the triplet loss, a batch without positives still has a loss: its negatives within the margin.
    embeddings = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    loss = ContrastiveLoss(margin=2.0)(embeddings, torch.arange(6))
    assert loss.item() > 0
    assert loss.item() == pytest.approx(contrastive_reference(embeddings, list(range(6)), 2.0), rel=1e-5)


@pytest.mark.parametrize("block_rows", [1, 7, 49])
def test_blocks_do_not_change_the_result(monkeypatch, block_rows):
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(1))
    embeddings = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    whole = ContrastiveLoss(margin=1.0)(embeddings, labels)
    (whole_grad,) = torch.autograd.grad(whole, embeddings)
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", block_rows * 50)
    blocked = ContrastiveLoss(margin=1.0)(embeddings, labels)
    (blocked_grad,) = torch.autograd.grad(blocked, embeddings)
    torch.testing.assert_close(blocked, whole)
    torch.testing.assert_close(blocked_grad, whole_grad)


@pytest.mark.parametrize("block_rows", [2, 100])
def test_shards_of_anchors_count_every_pair_once(monkeypatch, block_rows):
    # What each process computes under gathering: its own rows as anchors against everyone's rows,
    # keeping the pairs whose other row comes later.
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", block_rows * 11)
    labels = torch.randint(0, 4, (11,), generator=torch.Generator().manual_seed(2))
    embeddings = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    z = torch.nn.functional.normalize(embeddings, dim=1)
    loss = ContrastiveLoss(margin=1.0)
    whole, whole_count = loss.loss_sum(LabelBatch(z, z, labels, labels, torch.arange(11)))
    (whole_grad,) = torch.autograd.grad(whole, embeddings, retain_graph=True)
    shards = [
        loss.loss_sum(LabelBatch(z[lo:hi], z, labels[lo:hi], labels, torch.arange(lo, hi)))
        for lo, hi in [(0, 3), (3, 10), (10, 11)]
    ]
    total = sum(shard_total for shard_total, _ in shards)
    (total_grad,) = torch.autograd.grad(total, embeddings)
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    assert sum(count for _, count in shards).item() == whole_count.item() == 11 * 10 // 2
    torch.testing.assert_close(total_grad, whole_grad)


@pytest.mark.parametrize("layout", ["pairs", "uneven_classes", "large_ids"])
def test_gradient_is_correct_in_float64(layout):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    generator = torch.Generator().manual_seed(12)
    embeddings = torch.randn(len(labels), 4, dtype=torch.float64, generator=generator, requires_grad=True)
    z = torch.nn.functional.normalize(embeddings.detach(), dim=1)
    distance = (2 - 2 * z @ z.T).clamp_min(1e-8).sqrt()
    assert (distance - 1.0).abs().min() > 1e-3  # finite differences need every hinge away from its kink
    loss = ContrastiveLoss(margin=1.0)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (embeddings,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_float32_loss_and_finite_grads(dtype):
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = torch.randn(64, 32, dtype=dtype, requires_grad=True)
    loss = ContrastiveLoss()(embeddings, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()


def test_autocast_does_not_lower_the_precision():
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(4))
    embeddings = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    loss = ContrastiveLoss(margin=1.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss(embeddings, labels)
    assert autocast.dtype == torch.float32
    assert autocast.item() == pytest.approx(loss(embeddings, labels).item(), rel=1e-6)


def test_arguments_are_checked():
    assert isinstance(create_loss("contrastive", margin=0.3), ContrastiveLoss)
    for margin in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            ContrastiveLoss(margin=margin)
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss()(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        ContrastiveLoss()(torch.randn(4), torch.arange(4))
