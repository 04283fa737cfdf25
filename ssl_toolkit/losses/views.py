"""The loss of several views of each sample, in any training loop, on one process or many."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssl_toolkit import distributed
from ssl_toolkit.losses.ntxent import NTXentLoss

# Sample ids of process r are r·2³² + i: unique across processes whatever their batch sizes, without a
# collective to agree on offsets.
_PROCESS_ID_STRIDE = 1 << 32


def sample_ids(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """One label per sample of this process's batch (B,), different from every other process's."""
    return torch.arange(batch_size, device=device) + distributed.rank() * _PROCESS_ID_STRIDE


def loss_over_views(
    loss: nn.Module, view_embeddings: Sequence[torch.Tensor], class_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """`loss` of the embeddings (B, D) of each view of B samples; views of one sample are positives.

    With `class_labels` (B,), samples of one class are positives too (SupCon, ArcFace). Without them, every
    sample gets an id unique across processes, so a label-based loss such as SupCon over any number of views
    equals NT-Xent's SimCLR objective, negatives from every process included. NT-Xent itself takes exactly
    two views and no class labels.

    Raises:
        ValueError: NT-Xent with other than two views or with class labels; a loss that needs class labels
            (ArcFace) without them; views of unequal batch sizes.
    """
    views = list(view_embeddings)
    batch = views[0].shape[0] if views else 0
    if not views or any(view.shape[0] != batch for view in views):
        raise ValueError(f"expected views of equal batch size, got {[tuple(v.shape) for v in views]}")
    if isinstance(loss, NTXentLoss):
        if len(views) != 2 or class_labels is not None:
            raise ValueError(
                "NTXentLoss takes two views and no class labels; use SupConLoss for more views or classes"
            )
        return loss(*views)
    if class_labels is None:
        if getattr(loss, "needs_class_labels", False):
            raise ValueError(f"{type(loss).__name__} needs class labels")
        class_labels = sample_ids(batch, views[0].device)
    return loss(torch.cat(views), class_labels.repeat(len(views)))
