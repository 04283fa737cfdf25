"""Triplet margin loss over every valid triplet or over each anchor's hardest pair, without N³ memory.

With d the Euclidean distance of normalised embeddings, the `all` loss sums relu(d_ap + m − d_an) over
every anchor a, positive p and negative n. A triplet tensor would be N³; instead, per anchor, the
derivative of its sum with respect to each distance is a count of active triplets:

    ∂/∂d_ap = #{n : d_an < d_ap + m}          (negatives inside p's margin)
    ∂/∂d_an = −#{p : d_ap + m > d_an}         (positives whose margin n is inside)

With few positives per anchor (self-supervised views) the counts come from comparing the row with each
positive's d_ap + m in turn; otherwise from one sort of the row by key (d_ap + m for a positive, d_an
for a negative), where they are the negatives sorted before a positive and the positives sorted after a
negative. The sum is piecewise linear and homogeneous in those keys, so it equals Σ_j key_j · ∂/∂d_j
(summed per row, then over rows in float64). Anchors are processed in row blocks with the gradient
accumulated in the forward (see `blockwise`), so memory grows as block·T.
"""

from __future__ import annotations

import torch

from ssl_toolkit.losses.blockwise import Gradients, blockwise_sum, row_blocks
from ssl_toolkit.losses.candidates import LabelBatch, LabelLoss, check_choice, check_positive

MINING = ("all", "hard")
# Up to this many positives per anchor (at most 255), a pass over the row per positive beats a row sort.
LOOP_MAX_POSITIVES = 8
# Floor of 2 − 2s under the square root: below float32's rounding of 2 − 2s, it only matters for
# (near-)duplicate embeddings, where it keeps d differentiable with |∂d/∂s| = 1/d at most 1e4.
EPS = 1e-8
# Non-negative floats sort like their bit patterns read as integers, and integer sorts are faster.
_SORT_AS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _distances(anchors: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (b, T) of unit rows, and where 2 − 2s is at the floor (there ∂d/∂s = 0)."""
    squared = torch.addmm(anchors.new_tensor(2.0), anchors, candidates.T, alpha=-2)
    clamped = squared <= EPS
    return squared.clamp_min_(EPS).sqrt_(), clamped


def _positive_columns(candidate_class, class_size, anchor_class, self_index, num_positives):
    """Candidate rows (n, P) of each anchor's positives, P the most any anchor has, and which are real."""
    members = candidate_class.argsort(stable=True)  # candidate rows grouped by class
    class_start = class_size.cumsum(0) - class_size
    rank = torch.empty_like(members)
    rank[members] = torch.arange(len(members), device=members.device)
    self_rank = rank[self_index] - class_start[anchor_class]
    slot = torch.arange(int(num_positives.max()), device=members.device)
    offset = slot + (slot >= self_rank[:, None])  # skip the anchor itself within its class
    columns = members[(class_start[anchor_class, None] + offset).clamp_max(len(members) - 1)]
    return columns, slot < num_positives[:, None]


def _triplet_hinges_by_loop(distance, is_negative, positive_columns, positive_valid, margin):
    """Σ relu(d_ap + m − d_an) over a block's triplets and its gradient ∂/∂d (b, T), a positive at a time."""
    rows = torch.arange(distance.shape[0], device=distance.device)
    negative_count = torch.zeros(distance.shape, dtype=torch.uint8, device=distance.device)
    positive_count = torch.zeros(positive_columns.shape, dtype=distance.dtype, device=distance.device)
    for slot in range(positive_columns.shape[1]):
        key = distance[rows, positive_columns[:, slot]] + margin
        key.masked_fill_(~positive_valid[:, slot], float("-inf"))  # padding: no negative is inside
        inside = (distance < key[:, None]).logical_and_(is_negative).view(torch.uint8)
        negative_count += inside
        positive_count[:, slot] = inside.sum(1, dtype=torch.int32)
    grad_distance = negative_count.to(distance.dtype).neg_()
    # Padding may point at a real positive's column too: scatter_add_ sums where `+=` would overwrite.
    grad_distance.scatter_add_(1, positive_columns, positive_count)
    # Σ_j key_j ∂/∂d_j with key = d, plus m on the positives.
    hinge_sum = (grad_distance * distance).sum(1).sum(dtype=torch.float64) + margin * positive_count.sum()
    return hinge_sum, grad_distance


def _triplet_hinges_by_sort(distance, is_positive, self_column, num_positives, margin):
    """Σ relu(d_ap + m − d_an) over a block's triplets and its gradient ∂/∂d (b, T), from one sort per row."""
    rows = torch.arange(distance.shape[0], device=distance.device)
    key = distance.add(is_positive.to(distance.dtype), alpha=margin)
    key[rows, self_column] = float("inf")  # the anchor itself sorts last and gets no gradient
    order = key.view(_SORT_AS[key.dtype]).sort(dim=1).indices
    positive = is_positive.gather(1, order)
    positives_so_far = positive.cumsum(1, dtype=distance.dtype)  # counts < 2^24 are exact in float32
    position = torch.arange(1, distance.shape[1] + 1, device=distance.device, dtype=distance.dtype)
    # A positive has position − positives_so_far negatives before it (the anchor is last); a negative
    # has num_positives − positives_so_far positives after it.
    grad_sorted = torch.where(
        positive, position - positives_so_far, positives_so_far - num_positives[:, None].to(distance.dtype)
    )
    grad_distance = torch.empty_like(distance).scatter_(1, order, grad_sorted)
    key[rows, self_column] = 0.0
    return (grad_distance * key).sum(1).sum(dtype=torch.float64), grad_distance


def _triplet_kernel(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    *,
    gradients: Gradients | None,
    batch: LabelBatch,
    num_positives: torch.Tensor,
    num_negatives: torch.Tensor,
    positive_columns: tuple[torch.Tensor, torch.Tensor] | None,
    margin: float,
    mining: str,
) -> torch.Tensor:
    """Sum of the hinges over every valid triplet (`all`) or each anchor's hardest pair (`hard`)."""
    anchor_labels, candidate_labels, self_index = (
        batch.anchor_labels,
        batch.candidate_labels,
        batch.self_index,
    )
    total = torch.zeros((), dtype=torch.float64, device=anchors.device)
    for rows in row_blocks(len(anchors), len(candidates)):
        arange = torch.arange(rows.stop - rows.start, device=anchors.device)
        distance, clamped = _distances(anchors[rows], candidates)
        same = anchor_labels[rows, None] == candidate_labels[None, :]

        if mining == "all":
            if positive_columns is not None:
                columns, valid_columns = positive_columns
                hinge_sum, grad_distance = _triplet_hinges_by_loop(
                    distance, ~same, columns[rows], valid_columns[rows], margin
                )
            else:
                same[arange, self_index[rows]] = False
                hinge_sum, grad_distance = _triplet_hinges_by_sort(
                    distance, same, self_index[rows], num_positives[rows], margin
                )
            total += hinge_sum
            if gradients is not None:
                grad_similarity = grad_distance.div_(distance).neg_().masked_fill_(clamped, 0.0)
                gradients.anchors[rows] = grad_similarity @ candidates
                gradients.candidates.addmm_(grad_similarity.T, anchors[rows])
            continue

        positive_distance = torch.where(same, distance, float("-inf"))
        positive_distance[arange, self_index[rows]] = float("-inf")
        hardest_positive, positive_index = positive_distance.max(1)
        hardest_negative, negative_index = torch.where(same, float("inf"), distance).min(1)
        valid = (num_positives[rows] > 0) & (num_negatives[rows] > 0)
        hinge = (hardest_positive - hardest_negative + margin).clamp_min(0)
        total += torch.where(valid, hinge, 0.0).sum()
        if gradients is not None:
            # Only the two chosen distances of an anchor with an active hinge get a gradient:
            # ±1 · ∂d/∂s, with ∂d/∂s = −1/d above the floor.
            active = valid & (hinge > 0)
            positive_weight = torch.where(
                active & ~clamped[arange, positive_index], -1 / hardest_positive, 0.0
            )
            negative_weight = torch.where(
                active & ~clamped[arange, negative_index], 1 / hardest_negative, 0.0
            )
            gradients.anchors[rows] = (
                positive_weight[:, None] * candidates[positive_index]
                + negative_weight[:, None] * candidates[negative_index]
            )
            gradients.candidates.index_add_(0, positive_index, positive_weight[:, None] * anchors[rows])
            gradients.candidates.index_add_(0, negative_index, negative_weight[:, None] * anchors[rows])
    return total.to(anchors.dtype)


class TripletLoss(LabelLoss):
    """Schroff et al. 2015, "FaceNet", and Hermans et al. 2017, "In Defense of the Triplet Loss".

    With d_ij = sqrt(max(2 − 2 s_ij, ε)) the Euclidean distance of the L2-normalised embeddings
    (s the cosine similarity, ε = 1e-8), m the margin, P(a) the other samples sharing a's label and N(a) the
    samples with another label:

        all:  L = mean over every (a, p, n), p ∈ P(a), n ∈ N(a), of relu(d_ap − d_an + m)
        hard: L = mean over anchors with P(a), N(a) non-empty of
                  relu(max_{p∈P(a)} d_ap − min_{n∈N(a)} d_an + m)

    `all` is Hermans et al.'s "batch all" as a mean, triplets that already satisfy the margin included
    (not their "BA≠0", which averages over the active ones only); `hard` is their "batch hard". No
    valid triplet gives 0, still differentiable.

    Args:
        margin: m, positive.
        mining: "all" (every triplet) or "hard" (hardest positive and negative per anchor).
        gather_distributed: use every process's embeddings and labels as candidates.
    """

    def __init__(self, margin: float = 0.2, mining: str = "all", gather_distributed: bool = True):
        super().__init__(gather_distributed)
        self.mining = check_choice("mining", mining, MINING)
        self.margin = check_positive("margin", margin)

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the hinges over this process's anchors and the number of terms (triplets or anchors)."""
        _, candidate_class, class_size = torch.unique(
            batch.candidate_labels, return_inverse=True, return_counts=True
        )
        anchor_class = candidate_class[batch.self_index]
        num_positives = class_size[anchor_class] - 1
        num_negatives = len(batch.candidates) - class_size[anchor_class]
        positive_columns = None
        if (
            self.mining == "all"
            and len(batch.anchors) > 0
            and num_positives.max() <= min(LOOP_MAX_POSITIVES, 255)
        ):
            positive_columns = _positive_columns(
                candidate_class, class_size, anchor_class, batch.self_index, num_positives
            )
        if self.mining == "all":
            count = (num_positives * num_negatives).sum()
        else:
            count = ((num_positives > 0) & (num_negatives > 0)).sum()
        total = blockwise_sum(
            _triplet_kernel,
            batch,
            num_positives=num_positives,
            num_negatives=num_negatives,
            positive_columns=positive_columns,
            margin=self.margin,
            mining=self.mining,
        )
        return total, count
