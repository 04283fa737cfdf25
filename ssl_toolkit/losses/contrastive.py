"""Margin contrastive loss (Hadsell, Chopra, LeCun) over every unordered pair, in row blocks.

Anchors are processed in row blocks and each block only meets the candidates after its first row,
so memory grows as block·T and the pairs i > j are never computed. The gradient with respect to the
embeddings is accumulated in the forward pass (as in fused_infonce), so nothing of size block·T is
kept for backward.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_toolkit.losses.candidates import anchors_and_candidates, global_mean

BLOCK_ELEMENTS = 1 << 24  # distances per block: 64 MB in float32
# Floor of d² = 2 − 2s: below float32's rounding of 2 − 2s, it only matters for (near-)duplicate
# embeddings, where it keeps d differentiable with |∂d/∂s| = 1/d at most 1e4.
EPS = 1e-8


def _row_block(num_candidates: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, num_candidates))


class _ContrastiveSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, candidates, anchor_labels, candidate_labels, start, margin):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        num_anchors, num_candidates = anchors.shape[0], candidates.shape[0]
        total = torch.zeros((), dtype=torch.float64, device=anchors.device)
        grad_anchors = torch.zeros_like(anchors) if needs_grad else None
        grad_candidates = torch.zeros_like(candidates) if needs_grad else None

        block = _row_block(num_candidates)
        for begin in range(0, num_anchors, block):
            stop = min(begin + block, num_anchors)
            # A pair (i, j) belongs to the process owning i, and only when j > i (global rows), so
            # that every unordered pair is counted once over all processes. The block's first anchor
            # pairs with the candidates from `first` on; the others with fewer.
            first = start + begin + 1
            if first >= num_candidates:
                break
            later = candidates[first:]
            squared = torch.addmm(anchors.new_tensor(2.0), anchors[begin:stop], later.T, alpha=-2)
            clamped = squared <= EPS
            distance = squared.clamp_min_(EPS).sqrt()  # squared is now d² itself
            same = anchor_labels[begin:stop, None] == candidate_labels[None, first:]
            hinge = (margin - distance).clamp_min_(0)
            term = torch.where(same, squared, hinge.square())
            # Local row r meets candidate column c at global rows i = start + begin + r, j = first + c:
            # j > i unless c < r, a triangle in the first columns.
            earlier = torch.ones(term.shape[0], min(term.shape), dtype=torch.bool, device=term.device)
            earlier.tril_(-1)
            term[:, : earlier.shape[1]].masked_fill_(earlier, 0.0)
            total += term.sum(1).sum(dtype=torch.float64)
            if not needs_grad:
                continue
            # ∂d²/∂s = −2; ∂relu(m − d)²/∂s = −2 relu(m − d) · ∂d/∂s = 2 relu(m − d)/d.
            grad_similarity = torch.where(same, -2.0, hinge.mul_(2).div_(distance))
            grad_similarity.masked_fill_(clamped, 0.0)
            grad_similarity[:, : earlier.shape[1]].masked_fill_(earlier, 0.0)
            grad_anchors[begin:stop] = grad_similarity @ later
            grad_candidates[first:].addmm_(grad_similarity.T, anchors[begin:stop])

        # Pairs (i, j > i) of this process's anchors: T − 1 − i for each global row i.
        owned = torch.arange(start, start + num_anchors, device=anchors.device)
        count = (num_candidates - 1 - owned).sum()
        ctx.save_for_backward(grad_anchors, grad_candidates)
        return total.to(anchors.dtype), count

    @staticmethod
    def backward(ctx, grad_total, _grad_count):
        grad_anchors, grad_candidates = ctx.saved_tensors
        return grad_anchors * grad_total, grad_candidates * grad_total, None, None, None, None


class ContrastiveLoss(nn.Module):
    """Hadsell, Chopra, LeCun 2006, "Dimensionality Reduction by Learning an Invariant Mapping", eq. 4.

    With d_ij = sqrt(max(2 − 2 s_ij, ε)) the Euclidean distance of the L2-normalised embeddings
    (s the cosine similarity, ε = 1e-8), m the margin and y_ij = 1 when i and j share a label, else 0:

        L = mean over unordered pairs i < j of  y_ij · d_ij² + (1 − y_ij) · relu(m − d_ij)²

    Positive pairs are pulled together; negative pairs are pushed apart until they are m apart. The
    paper's factor 1/2 on both terms is left out. Fewer than two embeddings give 0, still differentiable.

    Args:
        margin: m, positive (distances of unit vectors lie in [0, 2]).
        gather_distributed: use every process's embeddings and labels as candidates.
    """

    def __init__(self, margin: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin
        self.gather_distributed = gather_distributed

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings (N, D) with labels (N,); equal labels are positives."""
        anchors, candidates = anchors_and_candidates(embeddings, labels, self.gather_distributed)
        # Distances of unit vectors lose too much under autocast's half-precision matmuls.
        with torch.autocast(anchors.device.type, enabled=False):
            total, count = _ContrastiveSum.apply(
                anchors, candidates.embeddings, labels, candidates.labels, candidates.start, self.margin
            )
        return global_mean(total, count, self.gather_distributed)
