"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR."""

from __future__ import annotations

import torch
from torch import nn

from ssl_toolkit import distributed
from ssl_toolkit.losses.candidates import LabelBatch, check_positive, global_mean, normalized_float
from ssl_toolkit.losses.infonce import infonce_sum


class NTXentLoss(nn.Module):
    """SimCLR's loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning", Algorithm 1).

    For the 2B views of a batch, with s the cosine similarity and τ the temperature, anchor i with
    positive p(i) has

        ℓ_i = −log( exp(s_{i,p(i)}/τ) / Σ_{k≠i} exp(s_{i,k}/τ) ),

    and the loss is the mean of ℓ_i over all 2B anchors. It equals SupConLoss(variant="out") with
    labels [0..B−1, 0..B−1]. With `gather_distributed`, the candidates k are the views of every
    process and the mean is over every process's anchors.

    Memory grows as block·N rather than N² (see `blockwise`).

    Args:
        temperature: τ.
        gather_distributed: use every process's embeddings as negatives (no-op without a process group).
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss for two views (B, D) and (B, D); row i of `z0` and row i of `z1` are a positive pair."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(f"z0 and z1 must both be (B, D); got {tuple(z0.shape)} and {tuple(z1.shape)}")
        z0, z1 = normalized_float(z0), normalized_float(z1)
        if self.gather_distributed:
            all0, start = distributed.gather_rows(z0)
            all1, _ = distributed.gather_rows(z1)
        else:
            all0, all1, start = z0, z1, 0
        total = all0.shape[0]
        sample_ids = torch.arange(total, device=z0.device)
        local = sample_ids[start : start + z0.shape[0]]
        batch = LabelBatch(
            anchors=torch.cat([z0, z1]),
            candidates=torch.cat([all0, all1]),
            anchor_labels=torch.cat([local, local]),
            candidate_labels=torch.cat([sample_ids, sample_ids]),
            self_index=torch.cat([local, local + total]),
        )
        loss_sum, count = infonce_sum(batch, temperature=self.temperature)
        return global_mean(loss_sum, count, self.gather_distributed)
