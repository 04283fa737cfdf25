"""Margin contrastive loss (Hadsell, Chopra, LeCun) over every unordered pair, blockwise (see `blockwise`).

Each block of anchors only meets the candidates after its first row, so the pairs i > j are never computed.
"""

from __future__ import annotations

import torch

from ssl_toolkit.losses.blockwise import Gradients, blockwise_sum, row_blocks
from ssl_toolkit.losses.candidates import LabelBatch, LabelLoss, check_positive

# Floor of d² = 2 − 2s: below float32's rounding of 2 − 2s, it only matters for (near-)duplicate
# embeddings, where it keeps d differentiable with |∂d/∂s| = 1/d at most 1e4.
EPS = 1e-8


def _contrastive_kernel(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    *,
    gradients: Gradients | None,
    batch: LabelBatch,
    start: int,
    margin: float,
) -> torch.Tensor:
    """Sum over the pairs (i, j > i) that this process's anchors own, i and j global candidate rows."""
    anchor_labels, candidate_labels = batch.anchor_labels, batch.candidate_labels
    num_candidates = candidates.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=anchors.device)
    for rows in row_blocks(len(anchors), num_candidates):
        # A pair (i, j) belongs to the process owning i, and only when j > i (global rows), so
        # that every unordered pair is counted once over all processes. The block's first anchor
        # pairs with the candidates from `first` on; the others with fewer.
        first = start + rows.start + 1
        if first >= num_candidates:
            break
        later = candidates[first:]
        squared = torch.addmm(anchors.new_tensor(2.0), anchors[rows], later.T, alpha=-2)
        clamped = squared <= EPS
        distance = squared.clamp_min_(EPS).sqrt()  # squared is now d² itself
        same = anchor_labels[rows, None] == candidate_labels[None, first:]
        hinge = (margin - distance).clamp_min_(0)
        term = torch.where(same, squared, hinge.square())
        # Local row r meets candidate column c at global rows i = start + begin + r, j = first + c:
        # j > i unless c < r, a triangle in the first columns.
        earlier = torch.ones(term.shape[0], min(term.shape), dtype=torch.bool, device=term.device)
        earlier.tril_(-1)
        term[:, : earlier.shape[1]].masked_fill_(earlier, 0.0)
        total += term.sum(1).sum(dtype=torch.float64)
        if gradients is None:
            continue
        # ∂d²/∂s = −2; ∂relu(m − d)²/∂s = −2 relu(m − d) · ∂d/∂s = 2 relu(m − d)/d.
        grad_similarity = torch.where(same, -2.0, hinge.mul_(2).div_(distance))
        grad_similarity.masked_fill_(clamped, 0.0)
        grad_similarity[:, : earlier.shape[1]].masked_fill_(earlier, 0.0)
        gradients.anchors[rows] = grad_similarity @ later
        gradients.candidates[first:].addmm_(grad_similarity.T, anchors[rows])
    return total.to(anchors.dtype)


class ContrastiveLoss(LabelLoss):
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
        super().__init__(gather_distributed)
        self.margin = check_positive("margin", margin)

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the pair terms over the unordered pairs this process's anchors own, and their number.

        The anchors are consecutive candidate rows (a process's share of the gathered batch).
        """
        start = int(batch.self_index[0]) if len(batch.self_index) else 0
        # Pairs (i, j > i) of this process's anchors: T − 1 − i for each global row i.
        count = (len(batch.candidates) - 1 - batch.self_index).sum()
        return blockwise_sum(_contrastive_kernel, batch, start=start, margin=self.margin), count
