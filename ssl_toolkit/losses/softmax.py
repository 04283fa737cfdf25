"""CoLES softmax loss: each positive pair against its anchor's negatives only, computed in row blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ssl_toolkit.losses.candidates import anchors_and_candidates, global_mean

BLOCK_ELEMENTS = 1 << 24  # (anchor, candidate) pairs per block: 64 MB per float32 intermediate


def _row_block(num_candidates: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, num_candidates))


class _SoftmaxSum(torch.autograd.Function):
    """Sum of the CoLES terms over every (anchor, positive) pair, with its gradient computed in the forward.

    With l_aj = s_aj/τ and G_a = log Σ_{n∈N(a)} exp(l_an) (−inf without negatives), the term of a pair is
    −log(exp(l_ap) / (exp(l_ap) + exp(G_a))) = softplus(G_a − l_ap), so

        ∂/∂l_ap = −σ(G_a − l_ap)    and    ∂/∂l_an = (Σ_p σ(G_a − l_ap)) · exp(l_an − G_a).

    Keeping these per block instead of the logits is what keeps memory at block·T rather than N·T. One
    (block, T) buffer holds the logits, then the negatives' weights, then the gradient, so that each block
    costs the matmuls and a few in-place passes; positive pairs, usually few, are handled as a list.
    """

    @staticmethod
    def forward(
        ctx, anchors, candidates, anchor_labels, candidate_labels, self_index, temperature, needs_grad
    ):
        num_anchors, num_candidates = anchors.shape[0], candidates.shape[0]
        scaled = anchors / temperature
        total = anchors.new_zeros(())
        grad_anchors = torch.zeros_like(anchors) if needs_grad else None
        grad_candidates = torch.zeros_like(candidates) if needs_grad else None

        block = min(_row_block(num_candidates), max(num_anchors, 1))
        # Reused across blocks: a fresh 64 MB tensor per step costs as much in page faults as the step.
        work = anchors.new_empty(block, num_candidates)
        same_work = torch.empty(block, num_candidates, dtype=torch.bool, device=anchors.device)
        for begin in range(0, num_anchors, block):
            rows = slice(begin, min(begin + block, num_anchors))
            n_rows = rows.stop - rows.start
            diagonal = (torch.arange(n_rows, device=anchors.device), self_index[rows])
            logits = torch.mm(scaled[rows], candidates.T, out=work[:n_rows])  # (b, T)
            same = torch.eq(anchor_labels[rows, None], candidate_labels[None, :], out=same_work[:n_rows])
            same[diagonal] = False
            positive = same.view(-1).nonzero().squeeze(1)  # flat index of each (anchor, positive) pair
            positive_row = positive // num_candidates
            positive_logits = logits.view(-1)[positive]
            same[diagonal] = True  # the anchor is not its own negative either
            logits.masked_fill_(same, float("-inf"))
            # A row without negatives has max −inf; shifting by 0 then keeps exp at 0 instead of NaN.
            row_max = logits.amax(dim=1).nan_to_num_(neginf=0.0)
            negative_weights = logits.sub_(row_max[:, None]).exp_()  # exp(l_an − max), 0 off the negatives
            negative_sum = negative_weights.sum(dim=1)  # 0 or ≥ 1 thanks to the shift
            log_negatives = row_max + negative_sum.log()  # G_a, −inf without negatives
            gap = log_negatives[positive_row] - positive_logits  # G_a − l_ap
            # softplus(−inf) = 0: an anchor without negatives adds log(1) = 0 per positive, as in the formula.
            total = total + F.softplus(gap).sum()
            if not needs_grad:
                continue
            positive_grad = torch.sigmoid(gap)  # −∂/∂l_ap
            per_anchor = torch.zeros_like(negative_sum).index_add_(0, positive_row, positive_grad)
            # Without negatives the weights row is all 0, so clamping the 0 sum to 1 just avoids 0/0.
            negative_scale = per_anchor / (negative_sum.clamp_min(1.0) * temperature)
            grad_logits = negative_weights.mul_(negative_scale[:, None])
            grad_logits.view(-1)[positive] = -positive_grad / temperature  # these held exp(−inf) = 0
            torch.mm(grad_logits, candidates, out=grad_anchors[rows])
            grad_candidates.addmm_(grad_logits.T, anchors[rows])

        if needs_grad:
            ctx.save_for_backward(grad_anchors, grad_candidates)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad_anchors, grad_candidates = ctx.saved_tensors
        return grad_anchors * grad_total, grad_candidates * grad_total, None, None, None, None, None


def softmax_sum(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    self_index: torch.Tensor,
    *,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the CoLES terms over ordered positive pairs, and the number of such pairs.

    Args:
        anchors: normalised embeddings (n, D), each also present among the candidates.
        candidates: normalised embeddings (T, D).
        anchor_labels: (n,) labels of the anchors.
        candidate_labels: (T,) labels of the candidates.
        self_index: (n,) row of each anchor among the candidates (never its own positive).
        temperature: τ.
    """
    classes, candidate_class = torch.unique(candidate_labels, return_inverse=True)
    class_count = torch.bincount(candidate_class, minlength=len(classes))
    # Every anchor is a candidate, so its class is counted once too many.
    count = (class_count[torch.searchsorted(classes, anchor_labels)] - 1).sum()
    needs_grad = torch.is_grad_enabled() and (anchors.requires_grad or candidates.requires_grad)
    # Autocast would run the block matmuls in bf16/fp16; these losses promise float32 similarities.
    with torch.autocast(anchors.device.type, enabled=False):
        total = _SoftmaxSum.apply(
            anchors, candidates, anchor_labels, candidate_labels, self_index, temperature, needs_grad
        )
    return total, count


class SoftmaxLoss(nn.Module):
    """Babaev et al. 2022, "CoLES: Contrastive Learning for Event Sequences with Self-Supervision".

    With s the cosine similarity, τ the temperature, and for each ordered pair (a, p), a ≠ p, of equal
    labels, N(a) the samples whose label differs from a's:

        L_ap = −log( exp(s_ap/τ) / (exp(s_ap/τ) + Σ_{n∈N(a)} exp(s_an/τ)) )

    Unlike NT-Xent / SupCon, the other positives of a are not in the denominator. The loss is the mean of
    L_ap over all such pairs; an anchor without negatives gives L_ap = log 1 = 0 for each of its pairs,
    and with no positive pair at all the loss is 0, still differentiable.

    Args:
        temperature: τ.
        gather_distributed: use every process's embeddings and labels as candidates.
    """

    def __init__(self, temperature: float = 0.05, gather_distributed: bool = True):
        super().__init__()
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings (N, D) with labels (N,); equal labels are positives."""
        anchors, candidates = anchors_and_candidates(embeddings, labels, self.gather_distributed)
        total, count = softmax_sum(
            anchors,
            candidates.embeddings,
            labels,
            candidates.labels,
            candidates.self_index(len(labels)),
            temperature=self.temperature,
        )
        return global_mean(total, count, self.gather_distributed)
