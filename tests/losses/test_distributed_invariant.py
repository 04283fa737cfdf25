"""The losses' cross-process invariant, on 2 gloo processes: a W-process run with batch B per process gives
the same mean loss and the same DDP-averaged parameter gradients as one process with batch W·B."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from cases import EMBEDDING_DIM, LOSS_CASES
from process_group import run_in_process_group
from torch import nn

from ssl_toolkit.losses import create_loss

WORLD = 2
BATCH = 6
DIM = 5

# Per-process label slices of a global batch of WORLD·BATCH; "uneven" leaves rank 1 with far fewer
# valid anchors, pairs and triplets than rank 0, so local means would differ from the global mean.
LABELS = {
    "views": list(range(BATCH)) * 2,  # sample ids: each sample's two views sit on different processes
    "classes": [0, 1, 2, 0, 1, 2, 2, 1, 0, 3, 3, 0],
    "uneven": [0, 0, 1, 1, 2, 2, 0, 3, 4, 5, 6, 7],
}


def _setup(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, EMBEDDING_DIM))
    loss_name, kwargs = LOSS_CASES[name]
    loss = create_loss(loss_name, **kwargs)  # ArcFace's centres are drawn from the same seed everywhere
    x = torch.randn(WORLD * BATCH, DIM)
    return model, loss, x


PARAMS = [(name, layout) for name in LOSS_CASES for layout in LABELS if name != "ntxent" or layout == "views"]


def _loss_and_grads(name, layout, rank=None):
    """Loss and parameter gradients on this process's share of the batch, or on all of it (rank None)."""
    model, loss_fn, x = _setup(name)

    def share(rows):
        if rank is None:
            return rows
        size = len(rows) // WORLD
        return rows[rank * size : (rank + 1) * size]

    if name == "ntxent":  # two-view form: rows i and i + half of the global batch are a pair
        half = len(x) // 2
        loss = loss_fn(model(share(x[:half])), model(share(x[half:])))
    else:
        loss = loss_fn(model(share(x)), share(torch.tensor(LABELS[layout])))
    loss.backward()
    parameters = [*model.parameters(), *loss_fn.parameters()]
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]


def _on_each_process(rank, world_size):
    results = {}
    for name, layout in PARAMS:
        loss, grads = _loss_and_grads(name, layout, rank)
        for grad in grads:  # what DDP does to parameter gradients
            dist.all_reduce(grad)
            grad /= world_size
        results[name, layout] = (loss, grads)
    return results


@pytest.fixture(scope="module")
def per_process():
    return run_in_process_group(_on_each_process, WORLD)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "layout"), PARAMS)
def test_processes_equal_one_process_on_the_concatenated_batch(per_process, name, layout):
    single_loss, single_grads = _loss_and_grads(name, layout)
    mean_loss = sum(results[name, layout][0] for results in per_process) / WORLD
    assert mean_loss.item() == pytest.approx(single_loss.item(), abs=1e-5)
    for results in per_process:
        for grad, expected in zip(results[name, layout][1], single_grads, strict=True):
            torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)
