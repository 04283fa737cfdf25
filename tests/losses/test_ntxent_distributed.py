"""The invariant of DESIGN.md for NT-Xent: W processes with batch B equal one process with batch W·B."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from process_group import run_in_process_group
from torch import nn

from ssl_toolkit.losses import NTXentLoss

WORLD = 2
BATCH = 5


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x0, x1 = torch.randn(WORLD * BATCH, 6), torch.randn(WORLD * BATCH, 6)
    return model, x0, x1


def _loss_and_grads(model, x0, x1, gather):
    loss = NTXentLoss(temperature=0.3, gather_distributed=gather)(model(x0), model(x1))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _per_process(rank, world_size, gather):
    model, x0, x1 = _model_and_batch()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    loss, grads = _loss_and_grads(model, x0[rows], x1[rows], gather)
    for grad in grads:  # what DDP does to parameter gradients
        dist.all_reduce(grad)
        grad /= world_size
    return loss, grads


def test_two_processes_equal_one_process_on_the_concatenated_batch():
    model, x0, x1 = _model_and_batch()
    single_loss, single_grads = _loss_and_grads(model, x0, x1, gather=True)
    results = run_in_process_group(_per_process, WORLD, True)
    mean_loss = sum(loss for loss, _ in results) / WORLD
    assert mean_loss.item() == pytest.approx(single_loss.item(), abs=1e-5)
    for _rank_loss, rank_grads in results:
        for grad, expected in zip(rank_grads, single_grads, strict=True):
            torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)


def test_without_gathering_each_process_sees_only_its_own_negatives():
    model, x0, x1 = _model_and_batch()
    results = run_in_process_group(_per_process, WORLD, False)
    local_loss, _ = _loss_and_grads(model, x0[:BATCH], x1[:BATCH], gather=False)
    assert results[0][0].item() == pytest.approx(local_loss.item(), abs=1e-6)
