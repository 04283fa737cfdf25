"""Cross-entropy: a linear classifier trained with the encoder, the supervised baseline of SupCon."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.losses.candidates import check_class_labels, global_mean


class CrossEntropyLoss(nn.Module):
    """The cross-entropy baseline of Khosla et al. 2020, "Supervised Contrastive Learning": a linear
    classifier on the embeddings, trained jointly with the encoder by softmax cross-entropy.

    With z_i the embedding as it is (not normalised: a linear classifier reads the features' scale too),
    W (C, D) and b (C,) the classifier's weight and bias, p_i = softmax(W z_i + b), y_i the class of
    sample i and ε the label smoothing:

        ℓ_i = −(1 − ε) · log p_i[y_i] − (ε / C) · Σ_c log p_i[c]
        L = mean of ℓ_i over the samples

    (ε = 0 is plain cross-entropy; ε > 0 is torch's `label_smoothing`, the target (1 − ε)·onehot + ε/C.)
    With `gather_distributed`, the mean is over every process's samples (one all_reduce of their number),
    so processes with different batch sizes still give the global mean. Logits are float32 or wider, even
    under autocast.

    Supervised only: labels are class indices in [0, num_classes). The classifier is a parameter of this
    module, so the module must be handed to the optimizer.

    Args:
        num_classes: number of classes C.
        embedding_dim: size D of the embeddings.
        label_smoothing: ε, in [0, 1).
        gather_distributed: normalise by the number of samples over every process.
    """

    needs_class_labels = True  # class indices in [0, num_classes), not sample ids

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        label_smoothing: float = 0.0,
        gather_distributed: bool = True,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
            # NaN fails the comparison too; ε = 1 would ignore the labels altogether.
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.label_smoothing = float(label_smoothing)
        self.gather_distributed = gather_distributed
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) of embeddings (N, D), in float32 or wider."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"expected embeddings (N, {self.embedding_dim}), got {tuple(embeddings.shape)}")
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        weight, bias = self.classifier.weight.to(dtype), self.classifier.bias.to(dtype)
        return F.linear(embeddings.to(dtype), weight, bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings (N, D) with class labels (N,) in [0, num_classes)."""
        # Half-precision logits lose the small differences between classes that the softmax compares.
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.logits(embeddings)
            check_class_labels(labels, embeddings.shape[0], self.num_classes)
            total = F.cross_entropy(
                logits, labels.long(), reduction="sum", label_smoothing=self.label_smoothing
            )
        return global_mean(total, len(labels), self.gather_distributed)
