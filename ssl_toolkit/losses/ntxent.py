"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit import distributed


class NTXentLoss(nn.Module):
    """SimCLR's loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning", Algorithm 1).

    For the 2B views of a batch, with s the cosine similarity and τ the temperature, anchor i with
    positive p(i) has

        ℓ_i = −log( exp(s_{i,p(i)}/τ) / Σ_{k≠i} exp(s_{i,k}/τ) ),

    and the loss is the mean of ℓ_i over all 2B anchors. With `gather_distributed`, the candidates k
    are the views of every process and the mean is over every process's anchors.

    Args:
        temperature: τ.
        gather_distributed: use every process's embeddings as negatives (no-op without a process group).
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss for two views (B, D) and (B, D); row i of `z0` and row i of `z1` are a positive pair."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(f"z0 and z1 must both be (B, D); got {tuple(z0.shape)} and {tuple(z1.shape)}")
        batch = z0.shape[0]
        # Similarities and softmax in float32 (or float64) even for bf16/fp16 inputs: s/τ with a small τ
        # loses too many bits in half precision.
        dtype = torch.promote_types(z0.dtype, torch.float32)
        z0 = F.normalize(z0.to(dtype), dim=1)
        z1 = F.normalize(z1.to(dtype), dim=1)
        if self.gather_distributed:
            all0, start = distributed.gather_rows(z0)
            all1, _ = distributed.gather_rows(z1)
            # The sum over this process's anchors, scaled so that the mean over processes is the global
            # mean over anchors, and DDP's gradient averaging yields the gradient of that global mean.
            scale = distributed.world_size() / (2 * all0.shape[0])
        else:
            all0, all1, start = z0, z1, 0
            scale = 1 / (2 * batch)
        total = all0.shape[0]
        candidates = torch.cat([all0, all1])  # (2T, D): every view 0, then every view 1
        anchors = torch.cat([z0, z1])  # (2B, D)
        logits = anchors @ candidates.T / self.temperature
        local = torch.arange(batch, device=z0.device) + start
        self_index = torch.cat([local, local + total])
        positive_index = torch.cat([local + total, local])
        rows = torch.arange(2 * batch, device=z0.device)
        logits[rows, self_index] = float("-inf")
        return F.cross_entropy(logits, positive_index, reduction="sum") * scale
