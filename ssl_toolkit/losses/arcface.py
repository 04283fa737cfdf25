"""ArcFace: softmax over learnable class centres with an additive angular margin on the true class."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.losses.candidates import check_class_labels, check_positive, normalized_float


class ArcFaceLoss(nn.Module):
    """Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", eq. 3.

    With ẑ the L2-normalised embedding, ŵ_j the L2-normalised centre of class j, θ_j the angle between
    them (cos θ_j = ŵ_j·ẑ), y the true class, margin m and scale s:

        L = −log( exp(s·cos(θ_y + m)) / (exp(s·cos(θ_y + m)) + Σ_{j≠y} exp(s·cos θ_j)) )

    averaged over the batch. The margin is applied to the true class only. cos(θ + m) is computed as
    cos θ cos m − sin θ sin m. Where θ_y + m > π, cos(θ_y + m) would rise again as θ_y grows and reward
    moving away from the centre, so there (cos θ_y < cos(π − m)) the true-class logit is
    s·(cos θ_y − m·sin m) instead, as in the reference implementation (insightface): monotonic in θ_y, but
    not continuous with cos(θ_y + m) at θ_y = π − m.

    Supervised only: labels are class indices in [0, num_classes). The centres are a parameter of this
    module, so the module must be handed to the optimizer.

    Args:
        num_classes: number of classes C.
        embedding_dim: size D of the embeddings.
        margin: m, in radians.
        scale: s, the inverse temperature of the softmax.
    """

    needs_class_labels = True  # class indices in [0, num_classes), not sample ids

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 64.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, π/2) radians, got {margin}")
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.margin = margin
        self.scale = check_positive("scale", scale)
        self.centres = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.centres)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (N, C) for embeddings (N, D) with class labels (N,), margin on the true class."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"expected embeddings (N, {self.embedding_dim}), got {tuple(embeddings.shape)}")
        check_class_labels(labels, embeddings.shape[0], self.num_classes)
        z = normalized_float(embeddings)
        centres = F.normalize(self.centres.to(z.dtype), dim=1)
        cosine = (z @ centres.T).clamp(-1.0, 1.0)  # rounding can step just outside [−1, 1]
        labels = labels.long()
        true_cos = cosine.gather(1, labels[:, None])
        # sqrt has an infinite slope at 0 (θ = 0 or π); a floor at the dtype's rounding step of 1 − cos²θ
        # keeps the gradient finite and moves nothing that the rounding had not already moved.
        true_sin = (1.0 - true_cos.square()).clamp_min(torch.finfo(true_cos.dtype).eps).sqrt()
        with_margin = true_cos * math.cos(self.margin) - true_sin * math.sin(self.margin)
        fallback = true_cos - self.margin * math.sin(self.margin)
        with_margin = torch.where(true_cos >= math.cos(math.pi - self.margin), with_margin, fallback)
        return cosine.scatter(1, labels[:, None], with_margin) * self.scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings (N, D) with class labels (N,) in [0, num_classes)."""
        # A sum over max(N, 1) rather than a mean, so that an empty batch gives 0 rather than NaN.
        # Angles from half-precision cosines are too coarse for a margin of a few tenths of a radian.
        with torch.autocast(embeddings.device.type, enabled=False):
            total = F.cross_entropy(self.logits(embeddings, labels), labels.long(), reduction="sum")
        return total / max(len(labels), 1)
