"""Pairwise sigmoid loss (binary cross-entropy on every pair) with a learnable scale and bias, blockwise."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_toolkit.losses.blockwise import Gradients, WorkBuffers, blockwise_sum, row_blocks
from ssl_toolkit.losses.candidates import LabelBatch, LabelLoss, check_positive


def _sigmoid_kernel(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    gradients: Gradients | None,
    batch: LabelBatch,
) -> torch.Tensor:
    """Sum of BCE(σ(t·s_ij + b), y_ij) over pairs i ≠ j.

    With z = t·s + b and u = (1 − 2y)·z, a pair's BCE is −log σ(−u) = softplus(u) and ∂/∂z = σ(z) − y =
    (1 − 2y)·σ(u), so ∂/∂s = t(σ(z) − y), ∂/∂t = Σ s(σ(z) − y) and ∂/∂b = Σ (σ(z) − y).
    """
    anchor_labels, candidate_labels, self_index = (
        batch.anchor_labels,
        batch.candidate_labels,
        batch.self_index,
    )
    total = torch.zeros((), dtype=torch.float64, device=anchors.device)
    zero, one = anchors.new_zeros(()), anchors.new_ones(())
    buffers = WorkBuffers(len(anchors), len(candidates), anchors)
    for rows in row_blocks(len(anchors), len(candidates)):
        n_rows = rows.stop - rows.start
        diagonal = (torch.arange(n_rows, device=anchors.device), self_index[rows])
        similarity = torch.mm(anchors[rows], candidates.T, out=buffers.take("similarity", n_rows))  # (b, T)
        same = torch.eq(
            anchor_labels[rows, None], candidate_labels[None, :], out=buffers.take("same", n_rows, torch.bool)
        )
        sign = torch.where(same, -one, one, out=buffers.take("sign", n_rows))  # 1 − 2y
        signed = torch.mul(similarity, scale, out=buffers.take("signed", n_rows)).add_(bias).mul_(sign)  # u
        signed[diagonal] = float("-inf")  # i = j is not a pair: softplus(−∞) = σ(−∞) = 0
        # logaddexp(u, 0) = softplus(u) = −log σ(−u) through log1p: exact for tiny terms, where
        # log(σ(·)) would underflow and binary_cross_entropy_with_logits (log, not log1p) loses them.
        total += torch.logaddexp(signed, zero, out=buffers.take("loss", n_rows)).sum()
        if gradients is None:
            continue
        grad_logits = signed.sigmoid_().mul_(sign)  # σ(z) − y
        grad_scale, grad_bias = gradients.parameters
        grad_bias += grad_logits.sum()
        grad_scale += torch.dot(grad_logits.view(-1), similarity.view(-1))
        grad_similarity = grad_logits.mul_(scale)
        torch.mm(grad_similarity, candidates, out=gradients.anchors[rows])
        gradients.candidates.addmm_(grad_similarity.T, anchors[rows])
    return total.to(anchors.dtype)


class SigmoidLoss(LabelLoss):
    """Pairwise sigmoid loss as in Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (SigLIP).

    A siamese binary classifier on every ordered pair i ≠ j, with s the cosine similarity, y_ij = 1 when
    the labels of i and j are equal (else 0), and a learnable scale t = exp(log_t) > 0 and bias b:

        L = mean_{i≠j} BCE(σ(t·s_ij + b), y_ij) = mean_{i≠j} −log σ((2y_ij − 1)(t·s_ij + b))

    The negative bias at initialisation offsets the many more negative than positive pairs. Unlike
    SigLIP, which averages over anchors, this averages over pairs. t and b are parameters of this module,
    so the module must be handed to the optimizer (and wrapped with the model where DDP needs it).

    Args:
        gather_distributed: use every process's embeddings and labels as candidates.
        init_scale: initial t (the log is what is learned).
        init_bias: initial b.
    """

    def __init__(self, gather_distributed: bool = True, init_scale: float = 10.0, init_bias: float = -10.0):
        super().__init__(gather_distributed)
        check_positive("init_scale", init_scale)
        if not math.isfinite(init_bias):
            raise ValueError(f"init_bias must be finite, got {init_bias}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def scale(self) -> torch.Tensor:
        """t = exp(log_t)."""
        return self.log_scale.exp()

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, int]:
        scale, bias = self.scale.to(batch.anchors.dtype), self.bias.to(batch.anchors.dtype)
        total = blockwise_sum(_sigmoid_kernel, batch, scale, bias)
        return total, len(batch.anchor_labels) * (len(batch.candidate_labels) - 1)
