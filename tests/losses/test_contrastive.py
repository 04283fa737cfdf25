"""Contrastive loss against a loop-based float64 restatement of Hadsell, Chopra, LeCun 2006 (eq. 4)."""

from __future__ import annotations

import math

import pytest
import torch
from cases import LABEL_LAYOUTS

from ssl_toolkit.config import ConfigError, load_config
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


def _whole_and_shards(neg_count):
    """The loss sum, pair count and gradient of 11 rows at once, and summed over three shards of anchors."""
    labels = torch.randint(0, 4, (11,), generator=torch.Generator().manual_seed(2))
    embeddings = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    z = torch.nn.functional.normalize(embeddings, dim=1)
    loss = ContrastiveLoss(margin=1.0, neg_count=neg_count)
    whole, whole_count = loss.loss_sum(LabelBatch(z, z, labels, labels, torch.arange(11)))
    (whole_grad,) = torch.autograd.grad(whole, embeddings, retain_graph=True)
    shards = [
        loss.loss_sum(LabelBatch(z[lo:hi], z, labels[lo:hi], labels, torch.arange(lo, hi)))
        for lo, hi in [(0, 3), (3, 10), (10, 11)]
    ]
    total = sum(shard_total for shard_total, _ in shards)
    (total_grad,) = torch.autograd.grad(total, embeddings)
    shard_count = sum(count for _, count in shards).item()
    return labels, whole, whole_count, whole_grad, total, shard_count, total_grad


@pytest.mark.parametrize("block_rows", [2, 100])
def test_shards_of_anchors_count_every_pair_once(monkeypatch, block_rows):
    # What each process computes under gathering: its own rows as anchors against everyone's rows,
    # keeping the pairs whose other row comes later.
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", block_rows * 11)
    _, whole, whole_count, whole_grad, total, shard_count, total_grad = _whole_and_shards(None)
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    assert shard_count == whole_count.item() == 11 * 10 // 2
    torch.testing.assert_close(total_grad, whole_grad)


@pytest.mark.parametrize("neg_count", [None, 2], ids=["all_pairs", "two_hardest_negatives"])
@pytest.mark.parametrize("layout", ["pairs", "uneven_classes", "large_ids"])
def test_gradient_is_correct_in_float64(layout, neg_count):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    generator = torch.Generator().manual_seed(12)
    embeddings = torch.randn(len(labels), 4, dtype=torch.float64, generator=generator, requires_grad=True)
    z = torch.nn.functional.normalize(embeddings.detach(), dim=1)
    distance = (2 - 2 * z @ z.T).clamp_min(1e-8).sqrt()
    assert (distance - 1.0).abs().min() > 1e-3  # finite differences need every hinge away from its kink
    if neg_count is not None:
        # ... and every anchor's choice of negatives away from a tie that a small step could swap.
        negatives = distance.masked_fill(labels[:, None] == labels[None, :], math.inf).sort(dim=1).values
        finite = negatives[:, 1:].isfinite()
        assert (negatives[:, 1:] - negatives[:, :-1])[finite].min() > 1e-3
    loss = ContrastiveLoss(margin=1.0, neg_count=neg_count)
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


def hard_negative_reference(embeddings, labels, margin, neg_count):
    """Per anchor: d² to each positive and relu(m − d)² to its neg_count nearest negatives, in float64;
    the sum over anchors divided by the number of (anchor, partner) terms."""
    z = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in embeddings.double().tolist()]
    terms = []
    for i in range(len(z)):
        negatives = []
        for j in range(len(z)):
            if j == i:
                continue
            s = sum(a * b for a, b in zip(z[i], z[j], strict=True))
            d = math.sqrt(max(2 - 2 * s, 1e-8))
            if labels[i] == labels[j]:
                terms.append(d * d)
            else:
                negatives.append(d)
        terms += [max(margin - d, 0.0) ** 2 for d in sorted(negatives)[:neg_count]]
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("neg_count", [1, 2, 3])
@pytest.mark.parametrize("margin", [0.5, 1.2])
def test_hard_negatives_match_the_formula(layout, neg_count, margin):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(len(labels)))
    loss = ContrastiveLoss(margin=margin, neg_count=neg_count)(embeddings, labels)
    expected = hard_negative_reference(embeddings, labels.tolist(), margin, neg_count)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_only_the_nearest_negatives_count():
    # Anchor 0 at angle 0 with a positive at 0.3; negatives at 0.5, 0.7 and 2.5 rad. With neg_count=1 each
    # anchor keeps its nearest negative only: the one at 2.5 rad is in no anchor's choice.
    angles = torch.tensor([0.0, 0.3, 0.5, 0.7, 2.5], dtype=torch.float64)
    embeddings = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 2, 3])

    def d(a, b):
        return 2 * math.sin(abs(a - b) / 2)  # chord length between unit vectors at angles a and b

    margin = 2.0
    terms = [d(0, 0.3) ** 2, d(0, 0.3) ** 2]  # the positive pair, from both of its anchors
    terms += [(margin - d(0, 0.5)) ** 2, (margin - d(0.3, 0.5)) ** 2]  # anchors 0 and 1: the one at 0.5
    terms += [(margin - d(0.5, 0.7)) ** 2, (margin - d(0.7, 0.5)) ** 2]  # anchors 2 and 3: each other
    terms += [(margin - d(2.5, 0.7)) ** 2]  # anchor 4: the one at 0.7
    loss = ContrastiveLoss(margin=margin, neg_count=1)(embeddings, labels)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)


@pytest.mark.parametrize("layout", ["uneven_classes", "large_ids", "one_class"])
def test_keeping_every_negative_is_the_all_pairs_loss(layout):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    embeddings.requires_grad_()
    all_pairs = ContrastiveLoss(margin=1.2)(embeddings, labels)
    (all_pairs_grad,) = torch.autograd.grad(all_pairs, embeddings)
    every_negative = ContrastiveLoss(margin=1.2, neg_count=len(labels))(embeddings, labels)
    (every_negative_grad,) = torch.autograd.grad(every_negative, embeddings)
    torch.testing.assert_close(every_negative, all_pairs)
    torch.testing.assert_close(every_negative_grad, all_pairs_grad)


@pytest.mark.parametrize("block_rows", [1, 7, 49])
def test_blocks_do_not_change_the_hard_negatives(monkeypatch, block_rows):
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(1))
    embeddings = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    loss = ContrastiveLoss(margin=1.0, neg_count=3)
    whole = loss(embeddings, labels)
    (whole_grad,) = torch.autograd.grad(whole, embeddings)
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", block_rows * 50)
    blocked = loss(embeddings, labels)
    (blocked_grad,) = torch.autograd.grad(blocked, embeddings)
    torch.testing.assert_close(blocked, whole)
    torch.testing.assert_close(blocked_grad, whole_grad)


def test_shards_of_anchors_choose_among_every_candidate():
    # What each process computes under gathering: its own rows as anchors, hard negatives from all rows.
    labels, whole, whole_count, whole_grad, total, shard_count, total_grad = _whole_and_shards(2)
    same = (labels[:, None] == labels[None, :]).sum(1)
    expected_count = ((same - 1) + (11 - same).clamp_max(2)).sum().item()
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    assert shard_count == whole_count.item() == expected_count
    torch.testing.assert_close(total_grad, whole_grad)


def test_neg_count_is_checked():
    assert ContrastiveLoss(neg_count=None).neg_count is None
    for neg_count in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="neg_count"):
            ContrastiveLoss(neg_count=neg_count)


def test_config_takes_neg_count_of_at_least_one_or_null():
    assert load_config(None, ["loss.name=contrastive", "loss.neg_count=5"]).loss.options == {"neg_count": 5}
    # null drops the option, so the loss's default applies: every negative.
    every = load_config(None, ["loss.name=contrastive", "loss.neg_count=5", "loss.neg_count=null"])
    assert every.loss.options == {}
    assert create_loss(every.loss.name, **every.loss.options).neg_count is None
    with pytest.raises(ConfigError, match=r"^loss.neg_count=0 must be at least 1"):
        load_config(None, ["loss.name=contrastive", "loss.neg_count=0"])
