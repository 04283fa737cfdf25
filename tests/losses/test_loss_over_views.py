"""`loss_over_views`: the views of a batch in a user's own loop, with sample ids unique across processes."""

from __future__ import annotations

import pytest
import torch
from process_group import run_in_process_group

from ssl_toolkit.losses import NTXentLoss, SupConLoss, create_loss, loss_over_views

WORLD = 2
SIZES = (4, 2)  # unequal batches: ids offset by rank × batch size would collide (0..3 and 2..3)
DIM = 6


def _views(num_views: int) -> list[torch.Tensor]:
    """Every process's views of the global batch (sum(SIZES), DIM), the same on every process."""
    generator = torch.Generator().manual_seed(num_views)
    return [torch.randn(sum(SIZES), DIM, generator=generator) for _ in range(num_views)]


def _share(rank: int, rows: torch.Tensor) -> torch.Tensor:
    start = sum(SIZES[:rank])
    return rows[start : start + SIZES[rank]]


def _on_each_process(rank, world_size):
    results = {}
    for num_views in (2, 3):
        views = [_share(rank, view) for view in _views(num_views)]
        results["supcon", num_views] = loss_over_views(SupConLoss(temperature=0.3), views).item()
    pair = [_share(rank, view)[:2] for view in _views(2)]  # NT-Xent's two-view form needs equal batches
    results["ntxent_pair"] = loss_over_views(NTXentLoss(temperature=0.3), pair).item()
    results["supcon_pair"] = loss_over_views(SupConLoss(temperature=0.3), pair).item()
    return results


@pytest.fixture(scope="module")
def per_process():
    return run_in_process_group(_on_each_process, WORLD)


@pytest.mark.slow
@pytest.mark.parametrize("num_views", [2, 3])
def test_multi_view_supcon_across_processes_equals_one_process_on_the_whole_batch(per_process, num_views):
    single = loss_over_views(SupConLoss(temperature=0.3), _views(num_views)).item()
    mean = sum(results["supcon", num_views] for results in per_process) / WORLD
    assert mean == pytest.approx(single, rel=1e-5)


@pytest.mark.slow
def test_supcon_over_two_views_equals_ntxent_on_every_process(per_process):
    for results in per_process:
        assert results["supcon_pair"] == pytest.approx(results["ntxent_pair"], rel=1e-5)


def test_class_labels_make_classes_positive_and_ntxent_or_arcface_misuse_is_an_error():
    views = _views(2)
    classes = torch.arange(sum(SIZES)) % 2
    loss = SupConLoss(temperature=0.3)
    by_class = loss_over_views(loss, views, classes)
    expected = loss(torch.cat(views), classes.repeat(2))
    assert by_class.item() == pytest.approx(expected.item())
    assert by_class.item() != pytest.approx(loss_over_views(loss, views).item())
    with pytest.raises(ValueError, match="two views"):
        loss_over_views(NTXentLoss(), _views(3))
    with pytest.raises(ValueError, match="class labels"):
        loss_over_views(create_loss("arcface", num_classes=2, embedding_dim=DIM), views)
