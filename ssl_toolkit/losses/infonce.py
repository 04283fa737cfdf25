"""The InfoNCE / SupCon sum behind NT-Xent and SupCon, blockwise (see `blockwise`).

NT-Xent and SupCon are, per anchor i with positives P(i) among candidates A(i) = everything but i,

    L_out(i) = logsumexp_{a∈A(i)} l_ia − (1/|P(i)|) Σ_{p∈P(i)} l_ip
    L_in(i)  = logsumexp_{a∈A(i)} l_ia − log((1/|P(i)|) Σ_{p∈P(i)} exp(l_ip)),     l_ia = s_ia / τ.

The softmax of each row is at hand in the forward, so the gradient (d l / d logits = softmax − positive
weights) is added there: the same three matmuls as autograd would run, without keeping the logits.
For L_out the positive term needs no mask at all: Σ_{p∈P(i)} l_ip = a_i · (S_{y_i} − c_i) / τ with S_y the
sum of the candidates of class y, so it costs O(N·D).
"""

from __future__ import annotations

import torch

from ssl_toolkit.losses.blockwise import Gradients, WorkBuffers, blockwise_sum, row_blocks
from ssl_toolkit.losses.candidates import LabelBatch


def _infonce_kernel(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    *,
    gradients: Gradients | None,
    batch: LabelBatch,
    anchor_class: torch.Tensor,
    candidate_class: torch.Tensor,
    temperature: float,
    variant: str,
) -> torch.Tensor:
    self_index = batch.self_index
    num_classes = int(candidate_class.max().item()) + 1 if candidate_class.numel() else 0
    class_count = torch.bincount(candidate_class, minlength=num_classes)
    positives = class_count[anchor_class] - 1  # the anchor itself is among the candidates
    valid = positives > 0
    positives_safe = positives.clamp_min(1).to(anchors.dtype)
    scaled = anchors / temperature
    total = torch.zeros((), dtype=torch.float64, device=anchors.device)
    if variant == "out":
        class_sum = candidates.new_zeros(num_classes, candidates.shape[1])
        class_sum.index_add_(0, candidate_class, candidates)
        positive_sum = class_sum[anchor_class] - candidates[self_index]  # (n, D): each anchor's positives
        positive_logit_mean = (scaled * positive_sum).sum(1) / positives_safe

    buffers = WorkBuffers(len(anchors), len(candidates), anchors)
    for rows in row_blocks(len(anchors), len(candidates)):
        n_rows = rows.stop - rows.start
        arange = torch.arange(n_rows, device=anchors.device)
        logits = torch.mm(scaled[rows], candidates.T, out=buffers.take("logits", n_rows))
        logits[arange, self_index[rows]] = float("-inf")
        if variant == "in":
            is_positive = anchor_class[rows, None] == candidate_class[None, :]
            is_positive[arange, self_index[rows]] = False
            positive_logits = logits.masked_fill(~is_positive, float("-inf"))
            positive_lse = torch.logsumexp(positive_logits, dim=1)
        row_max = logits.amax(dim=1, keepdim=True)
        probabilities = logits.sub_(row_max).exp_()  # in place: the logits are not needed again
        row_sum = probabilities.sum(dim=1, keepdim=True)
        lse = (row_max + row_sum.log()).squeeze(1)
        if variant == "out":
            per_anchor = lse - positive_logit_mean[rows]
        else:
            per_anchor = lse - positive_lse + positives_safe[rows].log()
        block_valid = valid[rows]
        total += torch.where(block_valid, per_anchor, 0.0).sum()
        if gradients is None:
            continue
        probabilities.div_(row_sum)
        if variant == "in":
            probabilities.sub_((positive_logits - positive_lse[:, None]).exp_())
        probabilities[~block_valid] = 0.0  # anchors without positives contribute nothing
        probabilities.div_(temperature)
        torch.mm(probabilities, candidates, out=gradients.anchors[rows])
        gradients.candidates.addmm_(probabilities.T, anchors[rows])

    if gradients is not None and variant == "out":
        # The −(1/|P(i)|) Σ_p l_ip term, in closed form: its gradient w.r.t. anchor i is
        # −(S_{y_i} − c_i)/(τ|P(i)|); w.r.t. candidate j it is −Σ_{i: y_i=y_j, i≠j} a_i/(τ|P(i)|).
        weight = torch.where(valid, 1.0 / (positives_safe * temperature), 0.0)[:, None]
        gradients.anchors -= positive_sum * weight
        weighted = anchors * weight
        class_weighted = anchors.new_zeros(num_classes, anchors.shape[1])
        class_weighted.index_add_(0, anchor_class, weighted)
        gradients.candidates -= class_weighted[candidate_class]
        gradients.candidates.index_add_(0, self_index, weighted)  # i ≠ j: an anchor is not its own positive
    return total.to(anchors.dtype)


def infonce_sum(
    batch: LabelBatch, *, temperature: float, variant: str = "out"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of L_out or L_in (Khosla et al. 2020, eq. 2 and 3) over anchors that have a positive, and the
    number of such anchors; each anchor is excluded from its own sums."""
    # Compact class ids 0..C−1 shared by anchors and candidates (labels may be arbitrary sample ids).
    classes, candidate_class, class_count = torch.unique(
        batch.candidate_labels, return_inverse=True, return_counts=True
    )
    anchor_class = torch.searchsorted(classes, batch.anchor_labels)
    count = (class_count[anchor_class] > 1).sum()
    total = blockwise_sum(
        _infonce_kernel,
        batch,
        anchor_class=anchor_class,
        candidate_class=candidate_class,
        temperature=temperature,
        variant=variant,
    )
    return total, count
