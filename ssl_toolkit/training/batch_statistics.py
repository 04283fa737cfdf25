"""Batch statistics of embeddings that show how a contrastive run is going, without labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def view_pair_metrics(view0: torch.Tensor, view1: torch.Tensor) -> dict[str, float]:
    """Alignment, uniformity and mean similarities of two views (B, D) of the same B images.

    Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity", on L2-normalised embeddings: alignment = E ‖f(x) − f(x⁺)‖² over positive pairs (lower is
    better aligned), uniformity = log E exp(−2 ‖f(x) − f(y)‖²) over distinct pairs of one view (lower is
    more uniform). Also the mean cosine similarity of positive pairs and of negative pairs (i ≠ j across
    the two views), the usual sign of collapse being both near 1.
    """
    z0 = F.normalize(view0.float(), dim=1)
    z1 = F.normalize(view1.float(), dim=1)
    batch = z0.shape[0]
    alignment = (z0 - z1).square().sum(1).mean()
    squared = torch.pdist(z0).square()
    uniformity = squared.mul(-2).exp().mean().log() if batch > 1 else torch.tensor(float("nan"))
    similarity = z0 @ z1.T
    positive = similarity.diagonal().mean()
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=similarity.device)
    negative = similarity[off_diagonal].mean() if batch > 1 else torch.tensor(float("nan"))
    return {
        "alignment": alignment.item(),
        "uniformity": uniformity.item(),
        "positive_similarity": positive.item(),
        "negative_similarity": negative.item(),
    }
