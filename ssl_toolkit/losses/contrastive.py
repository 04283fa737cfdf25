"""Margin contrastive loss (Hadsell, Chopra, LeCun) over every unordered pair, blockwise (see `blockwise`),
or over each anchor's positives and its hardest negatives (CoLES's `neg_count`).

Over every pair, each block of anchors only meets the candidates after its first row, so the pairs i > j
are never computed. With hard negatives, each block of anchors meets every candidate: its rows hold all
they need to pick their hardest negatives.
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


def _hard_negative_kernel(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    *,
    gradients: Gradients | None,
    batch: LabelBatch,
    margin: float,
    neg_count: int,
) -> torch.Tensor:
    """Sum of the terms of each anchor's positives and of its `neg_count` hardest negatives."""
    num_candidates = candidates.shape[0]
    columns = torch.arange(num_candidates, device=anchors.device)
    total = torch.zeros((), dtype=torch.float64, device=anchors.device)
    for rows in row_blocks(len(anchors), num_candidates):
        squared = torch.addmm(anchors.new_tensor(2.0), anchors[rows], candidates.T, alpha=-2)
        same = batch.anchor_labels[rows, None] == batch.candidate_labels[None, :]
        positive = same & (columns[None, :] != batch.self_index[rows, None])
        # The hardest negatives are the nearest, so the smallest d²; an anchor with fewer than neg_count
        # negatives picks up same-label columns too, at +inf, which `is_negative` leaves out.
        nearest, nearest_columns = squared.masked_fill(same, torch.inf).topk(
            min(neg_count, num_candidates), dim=1, largest=False
        )
        is_negative = nearest.isfinite()
        negative_clamped = nearest <= EPS
        negative_distance = nearest.clamp_min(EPS).sqrt()
        hinge = (margin - negative_distance).clamp_min_(0).masked_fill_(~is_negative, 0.0)
        positive_clamped = squared <= EPS
        positive_terms = squared.clamp_min_(EPS).masked_fill_(~positive, 0.0)  # squared is now d² itself
        total += positive_terms.sum(1).sum(dtype=torch.float64)
        total += hinge.square().sum(1).sum(dtype=torch.float64)
        if gradients is None:
            continue
        # As in the all-pairs kernel: ∂d²/∂s = −2 and ∂relu(m − d)²/∂s = 2 relu(m − d)/d, 0 where clamped.
        grad_similarity = torch.where(positive & ~positive_clamped, -2.0, 0.0).to(squared.dtype)
        grad_negative = hinge.mul_(2).div_(negative_distance).masked_fill_(negative_clamped, 0.0)
        # Added, not written: a column of an anchor short of negatives may be one of its positives.
        grad_similarity.scatter_add_(1, nearest_columns, grad_negative)
        gradients.anchors[rows] = grad_similarity @ candidates
        gradients.candidates.addmm_(grad_similarity.T, anchors[rows])
    return total.to(anchors.dtype)


def _hard_negative_pair_count(batch: LabelBatch, neg_count: int) -> torch.Tensor:
    """Σ over this process's anchors of (its positives + min(neg_count, its negatives))."""
    labels, label_counts = torch.unique(batch.candidate_labels, return_counts=True)
    # Every anchor is a candidate, so its label is among `labels`; the count includes the anchor itself.
    same = label_counts[torch.searchsorted(labels, batch.anchor_labels.contiguous())]
    negatives = len(batch.candidates) - same
    return ((same - 1) + negatives.clamp_max(neg_count)).sum()


class ContrastiveLoss(LabelLoss):
    """Hadsell, Chopra, LeCun 2006, "Dimensionality Reduction by Learning an Invariant Mapping", eq. 4.

    With d_ij = sqrt(max(2 − 2 s_ij, ε)) the Euclidean distance of the L2-normalised embeddings
    (s the cosine similarity, ε = 1e-8), m the margin and y_ij = 1 when i and j share a label, else 0:

        L = mean over unordered pairs i < j of  y_ij · d_ij² + (1 − y_ij) · relu(m − d_ij)²

    Positive pairs are pulled together; negative pairs are pushed apart until they are m apart. The
    paper's factor 1/2 on both terms is left out. Fewer than two embeddings give 0, still differentiable.

    With `neg_count` = k (CoLES's contrastive baseline, Babaev et al. 2022), each anchor i keeps every
    positive and only its k hardest negatives N_k(i): the k candidates of another label nearest to it
    (smallest d, so highest s; all of them when it has fewer than k), chosen among every process's
    candidates. The pairs are then ordered, (anchor, partner):

        L = Σ_i [Σ_{p∈P(i)} d_ip² + Σ_{n∈N_k(i)} relu(m − d_in)²] / Σ_i (|P(i)| + |N_k(i)|)

    over every anchor i, P(i) the other embeddings of i's label. It is the same mean over pairs as without
    `neg_count`: with every negative kept, each unordered pair is counted once from each end, which leaves
    the mean unchanged, so a k of at least the number of negatives gives the all-pairs loss. (CoLES's code
    counts each positive pair once, from one end, while a negative is counted from each anchor that picks
    it.) The choice of negatives is not differentiated: the gradient is that of the chosen pairs' terms.

    Args:
        margin: m, positive (distances of unit vectors lie in [0, 2]).
        neg_count: k, the hardest negatives kept per anchor (at least 1), or None for every pair.
        gather_distributed: use every process's embeddings and labels as candidates.
    """

    def __init__(self, margin: float = 0.5, neg_count: int | None = None, gather_distributed: bool = True):
        super().__init__(gather_distributed)
        self.margin = check_positive("margin", margin)
        if neg_count is not None and (
            isinstance(neg_count, bool) or not isinstance(neg_count, int) or neg_count < 1
        ):
            raise ValueError(f"neg_count must be a positive integer or None, got {neg_count!r}")
        self.neg_count = neg_count

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the pair terms over the pairs this process's anchors own, and their number.

        The anchors are consecutive candidate rows (a process's share of the gathered batch).
        """
        if self.neg_count is not None:
            total = blockwise_sum(_hard_negative_kernel, batch, margin=self.margin, neg_count=self.neg_count)
            return total, _hard_negative_pair_count(batch, self.neg_count)
        start = int(batch.self_index[0]) if len(batch.self_index) else 0
        # Pairs (i, j > i) of this process's anchors: T − 1 − i for each global row i.
        count = (len(batch.candidates) - 1 - batch.self_index).sum()
        return blockwise_sum(_contrastive_kernel, batch, start=start, margin=self.margin), count
