"""The encoder every data kind builds: a backbone f and a projection head g, x → (h = f(x), z = g(h)).

`Encoder` and `ProjectionHead` take any backbone that maps a batch to features (N, F); the engine, the
checkpoints and evaluation rely on `backbone`, `head` and `feature_dim`.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR's MLP head g(h): Linear → BatchNorm → ReLU → Linear, (N, in_dim) → (N, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim


class Encoder(nn.Module):
    """backbone f and projection head g: x → (h = f(x), z = g(h))."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        return self.head.in_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(images)
        return h, self.head(h)
