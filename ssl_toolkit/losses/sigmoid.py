"""Pairwise sigmoid loss (binary cross-entropy on every pair) with a learnable scale and bias."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ssl_toolkit.losses.candidates import anchors_and_candidates, global_mean

BLOCK_ELEMENTS = 1 << 24  # (anchor, candidate) pairs per block: 64 MB per float32 intermediate


def _row_block(num_candidates: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, num_candidates))


class _SigmoidSum(torch.autograd.Function):
    """Sum of BCE(σ(t·s_ij + b), y_ij) over pairs i ≠ j, with its gradient computed in the forward.

    With z = t·s + b and u = (1 − 2y)·z, a pair's BCE is −log σ(−u) = softplus(u) and ∂/∂z = σ(z) − y =
    (1 − 2y)·σ(u), so ∂/∂s = t(σ(z) − y), ∂/∂t = Σ s(σ(z) − y) and ∂/∂b = Σ (σ(z) − y). Accumulating
    these per block keeps memory at block·T rather than N·T; the (block, T) buffers are reused across
    blocks, so that each block costs the matmuls and a few in-place passes.
    """

    @staticmethod
    def forward(
        ctx, anchors, candidates, anchor_labels, candidate_labels, self_index, scale, bias, needs_grad
    ):
        num_anchors, num_candidates = anchors.shape[0], candidates.shape[0]
        total = anchors.new_zeros(())
        grad_anchors = torch.zeros_like(anchors) if needs_grad else None
        grad_candidates = torch.zeros_like(candidates) if needs_grad else None
        grad_scale = anchors.new_zeros(())
        grad_bias = anchors.new_zeros(())
        zero, one = anchors.new_zeros(()), anchors.new_ones(())

        block = min(_row_block(num_candidates), max(num_anchors, 1))
        # Reused across blocks: a fresh 64 MB tensor per step costs as much in page faults as the step.
        similarity_work, signed_work, sign_work, loss_work = (
            anchors.new_empty(block, num_candidates) for _ in range(4)
        )
        same_work = torch.empty(block, num_candidates, dtype=torch.bool, device=anchors.device)
        for begin in range(0, num_anchors, block):
            rows = slice(begin, min(begin + block, num_anchors))
            n_rows = rows.stop - rows.start
            diagonal = (torch.arange(n_rows, device=anchors.device), self_index[rows])
            similarity = torch.mm(anchors[rows], candidates.T, out=similarity_work[:n_rows])  # (b, T)
            same = torch.eq(anchor_labels[rows, None], candidate_labels[None, :], out=same_work[:n_rows])
            sign = torch.where(same, -one, one, out=sign_work[:n_rows])  # 1 − 2y
            signed = torch.mul(similarity, scale, out=signed_work[:n_rows]).add_(bias).mul_(sign)  # u
            signed[diagonal] = float("-inf")  # i = j is not a pair: softplus(−∞) = σ(−∞) = 0
            # logaddexp(u, 0) = softplus(u) = −log σ(−u) through log1p: exact for tiny terms, where
            # log(σ(·)) would underflow and binary_cross_entropy_with_logits (log, not log1p) loses them.
            total = total + torch.logaddexp(signed, zero, out=loss_work[:n_rows]).sum()
            if not needs_grad:
                continue
            grad_logits = signed.sigmoid_().mul_(sign)  # σ(z) − y
            grad_bias += grad_logits.sum()
            grad_scale += torch.dot(grad_logits.view(-1), similarity.view(-1))
            grad_similarity = grad_logits.mul_(scale)
            torch.mm(grad_similarity, candidates, out=grad_anchors[rows])
            grad_candidates.addmm_(grad_similarity.T, anchors[rows])

        if needs_grad:
            ctx.save_for_backward(grad_anchors, grad_candidates, grad_scale, grad_bias)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad_anchors, grad_candidates, grad_scale, grad_bias = ctx.saved_tensors
        return (
            grad_anchors * grad_total,
            grad_candidates * grad_total,
            None,
            None,
            None,
            grad_scale * grad_total,
            grad_bias * grad_total,
            None,
        )


class SigmoidLoss(nn.Module):
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
        super().__init__()
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        if not math.isfinite(init_bias):
            raise ValueError(f"init_bias must be finite, got {init_bias}")
        self.gather_distributed = gather_distributed
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def scale(self) -> torch.Tensor:
        """t = exp(log_t)."""
        return self.log_scale.exp()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings (N, D) with labels (N,); equal labels make positive pairs."""
        anchors, candidates = anchors_and_candidates(embeddings, labels, self.gather_distributed)
        scale = self.scale.to(anchors.dtype)
        bias = self.bias.to(anchors.dtype)
        needs_grad = torch.is_grad_enabled() and any(
            tensor.requires_grad for tensor in (anchors, candidates.embeddings, scale, bias)
        )
        # Autocast would run the block matmuls in bf16/fp16; these losses promise float32 similarities.
        with torch.autocast(anchors.device.type, enabled=False):
            total = _SigmoidSum.apply(
                anchors,
                candidates.embeddings,
                labels,
                candidates.labels,
                candidates.self_index(len(labels)),
                scale,
                bias,
                needs_grad,
            )
        count = len(labels) * (len(candidates.labels) - 1)
        return global_mean(total, count, self.gather_distributed)
