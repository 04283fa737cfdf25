"""Blockwise InfoNCE / SupCon sums whose gradient is computed in the forward pass.

NT-Xent and SupCon are, per anchor i with positives P(i) among candidates A(i) = everything but i,

    L_out(i) = logsumexp_{a∈A(i)} l_ia − (1/|P(i)|) Σ_{p∈P(i)} l_ip
    L_in(i)  = logsumexp_{a∈A(i)} l_ia − log((1/|P(i)|) Σ_{p∈P(i)} exp(l_ip)),     l_ia = s_ia / τ.

Materialising the full N×N logits (and the N×N positive mask) is what makes other libraries run out of
memory at a few thousand embeddings. Here anchors are processed in row blocks, so memory grows as
block·N. Since the softmax is at hand in the forward pass, the gradient with respect to anchors and
candidates is accumulated there too (d l / d logits = softmax − positive weights) and backward only
scales it: the same three matmuls as autograd would run, without keeping or recomputing logits.

For L_out the positive term needs no mask at all: Σ_{p∈P(i)} l_ip = a_i · (S_{y_i} − c_i) / τ with
S_y the sum of the candidates of class y, so it costs O(N·D).
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 24  # logits per block: 64 MB in float32


def _row_block(num_candidates: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, num_candidates))


class _InfoNCESum(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, anchors, candidates, anchor_class, candidate_class, self_index, temperature, variant, needs_grad
    ):
        num_anchors = anchors.shape[0]
        num_classes = int(candidate_class.max().item()) + 1 if candidate_class.numel() else 0
        class_count = torch.bincount(candidate_class, minlength=num_classes)
        positives = class_count[anchor_class] - 1  # the anchor itself is among the candidates
        valid = positives > 0
        positives_safe = positives.clamp_min(1).to(anchors.dtype)
        own = candidates[self_index]
        scaled = anchors / temperature
        total = anchors.new_zeros(())
        if variant == "out":
            class_sum = candidates.new_zeros(num_classes, candidates.shape[1])
            class_sum.index_add_(0, candidate_class, candidates)
            positive_sum = class_sum[anchor_class] - own  # (n, D): sum of each anchor's positives
            positive_logit_mean = (scaled * positive_sum).sum(1) / positives_safe
        grad_anchors = torch.zeros_like(anchors) if needs_grad else None
        grad_candidates = torch.zeros_like(candidates) if needs_grad else None

        block = _row_block(candidates.shape[0])
        for begin in range(0, num_anchors, block):
            rows = slice(begin, min(begin + block, num_anchors))
            n_rows = rows.stop - rows.start
            arange = torch.arange(n_rows, device=anchors.device)
            logits = scaled[rows] @ candidates.T  # (b, T)
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
            total = total + torch.where(block_valid, per_anchor, 0.0).sum()
            if not needs_grad:
                continue
            probabilities.div_(row_sum)
            if variant == "in":
                positive_weights = (positive_logits - positive_lse[:, None]).exp_()
                probabilities.sub_(positive_weights)
                del positive_weights, positive_logits, is_positive
            probabilities[~block_valid] = 0.0  # anchors without positives contribute nothing
            probabilities.div_(temperature)
            grad_anchors[rows] = probabilities @ candidates
            grad_candidates.addmm_(probabilities.T, anchors[rows])

        if needs_grad and variant == "out":
            # The −(1/|P(i)|) Σ_p l_ip term, in closed form: its gradient w.r.t. anchor i is
            # −(S_{y_i} − c_i)/(τ|P(i)|); w.r.t. candidate j it is −Σ_{i: y_i=y_j, i≠j} a_i/(τ|P(i)|).
            weight = torch.where(valid, 1.0 / (positives_safe * temperature), 0.0)[:, None]
            grad_anchors -= positive_sum * weight
            weighted = anchors * weight
            class_weighted = anchors.new_zeros(num_classes, anchors.shape[1])
            class_weighted.index_add_(0, anchor_class, weighted)
            grad_candidates -= class_weighted[candidate_class]
            grad_candidates.index_add_(0, self_index, weighted)  # i ≠ j: an anchor is not its own positive
        ctx.save_for_backward(grad_anchors, grad_candidates)
        return total, valid.sum()

    @staticmethod
    def backward(ctx, grad_total, _grad_count):
        grad_anchors, grad_candidates = ctx.saved_tensors
        return grad_anchors * grad_total, grad_candidates * grad_total, None, None, None, None, None, None


def infonce_sum(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    self_index: torch.Tensor,
    *,
    temperature: float,
    variant: str = "out",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of L_out or L_in over anchors that have a positive, and the number of such anchors.

    Args:
        anchors: normalised embeddings (n, D), each also present among the candidates.
        candidates: normalised embeddings (T, D).
        anchor_labels: (n,) labels of the anchors.
        candidate_labels: (T,) labels of the candidates.
        self_index: (n,) row of each anchor among the candidates (excluded from its own sums).
        temperature: τ.
        variant: "out" or "in" (Khosla et al. 2020, eq. 2 and 3).
    """
    # Compact class ids 0..C−1 shared by anchors and candidates (labels may be arbitrary sample ids).
    classes, candidate_class = torch.unique(candidate_labels, return_inverse=True)
    anchor_class = torch.searchsorted(classes, anchor_labels)
    # Decided here: inside forward, grad mode is always off, and under torch.no_grad() the inputs may
    # still require grad; computing gradients nobody asked for would triple the cost of evaluation.
    needs_grad = torch.is_grad_enabled() and (anchors.requires_grad or candidates.requires_grad)
    # Autocast would run the block matmuls in bf16/fp16; these losses promise float32 similarities.
    with torch.autocast(anchors.device.type, enabled=False):
        return _InfoNCESum.apply(
            anchors, candidates, anchor_class, candidate_class, self_index, temperature, variant, needs_grad
        )
