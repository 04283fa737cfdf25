from __future__ import annotations

import math

import pytest
import torch

from ssl_toolkit.training.batch_statistics import view_pair_metrics


def _loops(z0, z1):
    unit0 = [v / v.norm() for v in z0.double()]
    unit1 = [v / v.norm() for v in z1.double()]
    n = len(unit0)
    alignment = sum(((a - b) ** 2).sum().item() for a, b in zip(unit0, unit1, strict=True)) / n
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    uniformity = math.log(
        sum(math.exp(-2 * ((unit0[i] - unit0[j]) ** 2).sum().item()) for i, j in pairs) / len(pairs)
    )
    positive = sum((a @ b).item() for a, b in zip(unit0, unit1, strict=True)) / n
    negative = sum((unit0[i] @ unit1[j]).item() for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return {"alignment": alignment, "uniformity": uniformity, "positive_similarity": positive,
            "negative_similarity": negative}  # fmt: skip


def test_matches_the_definitions():
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(12, 5, generator=generator), torch.randn(12, 5, generator=generator)
    expected = _loops(z0, z1)
    for key, value in view_pair_metrics(z0, z1).items():
        assert value == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_collapse_and_perfect_alignment_are_visible():
    same = torch.ones(8, 4)
    collapsed = view_pair_metrics(same, same)
    assert collapsed["alignment"] == pytest.approx(0.0, abs=1e-7)
    assert collapsed["uniformity"] == pytest.approx(0.0, abs=1e-6)  # log E exp(0): no spread at all
    assert collapsed["negative_similarity"] == pytest.approx(1.0)
    spread = torch.eye(8)
    metrics = view_pair_metrics(spread, spread)
    assert metrics["positive_similarity"] == pytest.approx(1.0)
    assert metrics["negative_similarity"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["uniformity"] == pytest.approx(-4.0, abs=1e-6)  # every pair at distance √2
