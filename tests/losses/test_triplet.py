"""Triplet loss against a loop-based float64 restatement of batch-all and batch-hard triplet mining."""

from __future__ import annotations

import math

import pytest
import torch
from cases import LABEL_LAYOUTS

from ssl_toolkit.losses import blockwise, create_loss, triplet
from ssl_toolkit.losses.candidates import LabelBatch
from ssl_toolkit.losses.triplet import TripletLoss

# The two ways the `all` sums are counted: a pass per positive, or a sort of each row.
PATHS = {"loop": 255, "sort": 0}


def triplet_reference(embeddings, labels, margin, mining):
    """Every (a, p, n) or each anchor's hardest pair, one distance at a time, in float64."""
    z = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in embeddings.double().tolist()]
    n = len(z)

    def d(i, j):
        s = sum(a * b for a, b in zip(z[i], z[j], strict=True))
        return math.sqrt(max(2 - 2 * s, 1e-8))

    terms = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if mining == "all":
            terms += [max(d(a, p) - d(a, k) + margin, 0.0) for p in positives for k in negatives]
        elif positives and negatives:
            hardest_positive = max(d(a, p) for p in positives)
            hardest_negative = min(d(a, k) for k in negatives)
            terms.append(max(hardest_positive - hardest_negative + margin, 0.0))
    return sum(terms) / len(terms) if terms else 0.0


def force_path(monkeypatch, path):
    monkeypatch.setattr(triplet, "LOOP_MAX_POSITIVES", PATHS[path])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_all_matches_every_triplet(monkeypatch, layout, margin, path):
    force_path(monkeypatch, path)
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(len(labels)))
    loss = TripletLoss(margin=margin, mining="all")(embeddings, labels)
    expected = triplet_reference(embeddings, labels.tolist(), margin, "all")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_hard_matches_hardest_pair_per_anchor(layout, margin):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    embeddings = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(len(labels) + 1))
    loss = TripletLoss(margin=margin, mining="hard")(embeddings, labels)
    expected = triplet_reference(embeddings, labels.tolist(), margin, "hard")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_loop_and_sort_agree_on_many_views(monkeypatch, path):
    force_path(monkeypatch, path)
    labels = torch.arange(40).repeat(3)  # three views of 40 samples
    embeddings = torch.randn(120, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = TripletLoss(margin=0.3)(embeddings, labels)
    assert loss.item() == pytest.approx(triplet_reference(embeddings, labels.tolist(), 0.3, "all"), rel=1e-9)


@pytest.mark.parametrize("mining", ["all", "hard"])
@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [7, 7, 7, 7]], ids=["singletons_only", "one_class"])
def test_no_valid_triplet_gives_zero_and_a_gradient(labels, mining):
    embeddings = torch.randn(len(labels), 3, requires_grad=True)
    loss = TripletLoss(mining=mining)(embeddings, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and embeddings.grad is not None and torch.all(embeddings.grad == 0)


@pytest.mark.parametrize(("mining", "path"), [("all", "loop"), ("all", "sort"), ("hard", "sort")])
def test_blocks_do_not_change_the_result(monkeypatch, mining, path):
    force_path(monkeypatch, path)
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(1))
    embeddings = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    whole = TripletLoss(mining=mining)(embeddings, labels)
    (whole_grad,) = torch.autograd.grad(whole, embeddings)
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 7 * 50)  # blocks of 7 anchors, the last one of 1
    blocked = TripletLoss(mining=mining)(embeddings, labels)
    (blocked_grad,) = torch.autograd.grad(blocked, embeddings)
    torch.testing.assert_close(blocked, whole)
    torch.testing.assert_close(blocked_grad, whole_grad)


@pytest.mark.parametrize(("mining", "path"), [("all", "loop"), ("all", "sort"), ("hard", "sort")])
def test_shards_of_anchors_add_up_to_the_whole_batch(monkeypatch, mining, path):
    # What each process computes under gathering: its own rows as anchors against everyone's rows.
    force_path(monkeypatch, path)
    labels = torch.randint(0, 4, (11,), generator=torch.Generator().manual_seed(2))
    embeddings = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    z = torch.nn.functional.normalize(embeddings, dim=1)
    batch = LabelBatch(z, z, labels, labels, torch.arange(11))
    whole, whole_count = TripletLoss(margin=0.4, mining=mining).loss_sum(batch)
    (whole_grad,) = torch.autograd.grad(whole, embeddings, retain_graph=True)
    shards = [
        TripletLoss(margin=0.4, mining=mining).loss_sum(
            LabelBatch(z[lo:hi], z, labels[lo:hi], labels, torch.arange(lo, hi))
        )
        for lo, hi in [(0, 3), (3, 10), (10, 11)]
    ]
    total = sum(shard_total for shard_total, _ in shards)
    (total_grad,) = torch.autograd.grad(total, embeddings)
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    assert sum(count for _, count in shards).item() == whole_count.item() > 0
    torch.testing.assert_close(total_grad, whole_grad)


def assert_away_from_kinks(embeddings, labels, margin):
    """Finite differences are only meaningful where no hinge is close to 0."""
    z = torch.nn.functional.normalize(embeddings.detach(), dim=1)
    d = (2 - 2 * z @ z.T).clamp_min(1e-8).sqrt()
    same = labels[:, None] == labels[None, :]
    valid = (same & ~torch.eye(len(labels), dtype=torch.bool))[:, :, None] & ~same[:, None, :]
    hinge = d[:, :, None] - d[:, None, :] + margin
    assert hinge[valid].abs().min() > 1e-3


@pytest.mark.parametrize(("mining", "path"), [("all", "loop"), ("all", "sort"), ("hard", "sort")])
@pytest.mark.parametrize("layout", ["pairs", "uneven_classes", "large_ids"])
def test_gradient_is_correct_in_float64(monkeypatch, layout, mining, path):
    force_path(monkeypatch, path)
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    generator = torch.Generator().manual_seed(12)  # checked to be away from kinks below
    embeddings = torch.randn(len(labels), 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert_away_from_kinks(embeddings, labels, 0.3)
    loss = TripletLoss(margin=0.3, mining=mining)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (embeddings,))


@pytest.mark.parametrize("mining", ["all", "hard"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_float32_loss_and_finite_grads(dtype, mining):
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = torch.randn(64, 32, dtype=dtype, requires_grad=True)
    loss = TripletLoss(mining=mining)(embeddings, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_autocast_does_not_lower_the_precision(mining):
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(4))
    embeddings = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    loss = TripletLoss(mining=mining)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss(embeddings, labels)
    assert autocast.dtype == torch.float32
    assert autocast.item() == pytest.approx(loss(embeddings, labels).item(), rel=1e-6)


def test_arguments_are_checked():
    assert isinstance(create_loss("triplet", mining="hard"), TripletLoss)
    for margin in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            TripletLoss(margin=margin)
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semihard")
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        TripletLoss()(torch.randn(4), torch.arange(4))
