"""CoLES loss: each positive pair against its anchor's negatives only, blockwise (see `blockwise`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_toolkit.losses.blockwise import Gradients, WorkBuffers, blockwise_sum, row_blocks
from ssl_toolkit.losses.candidates import LabelBatch, LabelLoss, check_positive


def _coles_kernel(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    *,
    gradients: Gradients | None,
    batch: LabelBatch,
    temperature: float,
) -> torch.Tensor:
    """Sum of the CoLES terms over every (anchor, positive) pair.

    With l_aj = s_aj/τ and G_a = log Σ_{n∈N(a)} exp(l_an) (−inf without negatives), the term of a pair is
    −log(exp(l_ap) / (exp(l_ap) + exp(G_a))) = softplus(G_a − l_ap), so

        ∂/∂l_ap = −σ(G_a − l_ap)    and    ∂/∂l_an = (Σ_p σ(G_a − l_ap)) · exp(l_an − G_a).

    One (block, T) buffer holds the logits, then the negatives' weights, then the gradient; positive pairs,
    usually few, are handled as a list.
    """
    anchor_labels, candidate_labels, self_index = (
        batch.anchor_labels,
        batch.candidate_labels,
        batch.self_index,
    )
    num_candidates = candidates.shape[0]
    scaled = anchors / temperature
    total = torch.zeros((), dtype=torch.float64, device=anchors.device)
    buffers = WorkBuffers(len(anchors), num_candidates, anchors)
    for rows in row_blocks(len(anchors), num_candidates):
        n_rows = rows.stop - rows.start
        diagonal = (torch.arange(n_rows, device=anchors.device), self_index[rows])
        logits = torch.mm(scaled[rows], candidates.T, out=buffers.take("logits", n_rows))
        same = torch.eq(
            anchor_labels[rows, None], candidate_labels[None, :], out=buffers.take("same", n_rows, torch.bool)
        )
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
        total += F.softplus(gap).sum()
        if gradients is None:
            continue
        positive_grad = torch.sigmoid(gap)  # −∂/∂l_ap
        per_anchor = torch.zeros_like(negative_sum).index_add_(0, positive_row, positive_grad)
        # Without negatives the weights row is all 0, so clamping the 0 sum to 1 just avoids 0/0.
        negative_scale = per_anchor / (negative_sum.clamp_min(1.0) * temperature)
        grad_logits = negative_weights.mul_(negative_scale[:, None])
        grad_logits.view(-1)[positive] = -positive_grad / temperature  # these held exp(−inf) = 0
        torch.mm(grad_logits, candidates, out=gradients.anchors[rows])
        gradients.candidates.addmm_(grad_logits.T, anchors[rows])
    return total.to(anchors.dtype)


class ColesLoss(LabelLoss):
    """Babaev et al. 2022, "CoLES: Contrastive Learning for Event Sequences with Self-Supervision".

    With s the cosine similarity, τ the temperature, and for each ordered pair (a, p), a ≠ p, of equal
    labels, N(a) the samples whose label differs from a's:

        L_ap = −log( exp(s_ap/τ) / (exp(s_ap/τ) + Σ_{n∈N(a)} exp(s_an/τ)) )

    Unlike NT-Xent / SupCon, the other positives of a are not in the denominator. The loss is the mean of
    L_ap over all such pairs; an anchor without negatives gives L_ap = log 1 = 0 for each of its pairs,
    and with no positive pair at all the loss is 0, still differentiable. CoLES calls it the softmax loss;
    `softmax` is an alias of `coles` in the registry.

    Args:
        temperature: τ.
        gather_distributed: use every process's embeddings and labels as candidates.
    """

    def __init__(self, temperature: float = 0.05, gather_distributed: bool = True):
        super().__init__(gather_distributed)
        self.temperature = check_positive("temperature", temperature)

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the CoLES terms over ordered positive pairs (an anchor is never its own positive), and the
        number of such pairs."""
        classes, class_count = torch.unique(batch.candidate_labels, return_counts=True)
        # Every anchor is a candidate, so its class is counted once too many.
        count = (class_count[torch.searchsorted(classes, batch.anchor_labels)] - 1).sum()
        return blockwise_sum(_coles_kernel, batch, temperature=self.temperature), count
