"""NT-Xent against an independent, loop-based NumPy restatement of SimCLR's Algorithm 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_toolkit.losses import NTXentLoss, create_loss


def simclr_algorithm1(z0: np.ndarray, z1: np.ndarray, tau: float) -> float:
    """Chen et al. 2020, Algorithm 1, literally: views interleaved as z_{2k-1}, z_{2k}, float64 loops."""
    views = []
    for a, b in zip(z0, z1, strict=True):
        views += [a / np.linalg.norm(a), b / np.linalg.norm(b)]
    n = len(views)

    def sim(i, j):
        return float(np.dot(views[i], views[j]))

    def ell(i, j):
        denominator = sum(math.exp(sim(i, k) / tau) for k in range(n) if k != i)
        return -math.log(math.exp(sim(i, j) / tau) / denominator)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n // 2)) / n


@pytest.mark.parametrize(("batch", "dim", "tau"), [(1, 3, 0.5), (4, 8, 0.5), (16, 32, 0.1), (7, 5, 1.0)])
def test_matches_algorithm_1(batch, dim, tau):
    generator = torch.Generator().manual_seed(batch * dim)
    z0 = torch.randn(batch, dim, generator=generator)
    z1 = torch.randn(batch, dim, generator=generator)
    expected = simclr_algorithm1(z0.double().numpy(), z1.double().numpy(), tau)
    loss = NTXentLoss(temperature=tau)(z0, z1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_view_order_and_embedding_scale_do_not_matter():
    z0, z1 = torch.randn(6, 4), torch.randn(6, 4)
    loss = NTXentLoss(temperature=0.3)
    assert loss(z0, z1).item() == pytest.approx(loss(z1, z0).item(), rel=1e-6)
    assert loss(3 * z0, 0.5 * z1).item() == pytest.approx(loss(z0, z1).item(), rel=1e-6)


def test_known_value_for_identical_orthogonal_pairs():
    # Views identical (s=1 with the positive), all other samples orthogonal (s=0): each anchor sees
    # its positive e^{1/τ} against 2B−2 negatives of e^0.
    batch, tau = 4, 0.5
    z = torch.eye(batch)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * batch - 2))
    assert NTXentLoss(temperature=tau)(z, z).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_is_correct_in_float64():
    z0 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NTXentLoss(temperature=0.2), (z0, z1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    loss = NTXentLoss(temperature=0.01)
    half = loss(z0.to(dtype), z1.to(dtype))
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(loss(z0.to(dtype).float(), z1.to(dtype).float()).item(), rel=1e-5)


def test_factory_and_argument_checks():
    assert isinstance(create_loss("ntxent", temperature=0.2), NTXentLoss)
    with pytest.raises(ValueError, match="ntxent"):
        create_loss("ntxnet")
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
    with pytest.raises(ValueError, match="z0 and z1"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
