"""What every batch loss shares: each process's rows are anchors, every process's rows are candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ssl_toolkit import distributed


def check_positive(name: str, value: float) -> float:
    """`value`, if it is a positive finite number (NaN, ±inf, 0 and below are errors naming `name`)."""
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """`value`, if it is one of `choices` (otherwise an error naming `name` and the choices)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_class_labels(labels: torch.Tensor, num_rows: int, num_classes: int) -> None:
    """Raise ValueError unless `labels` are `num_rows` integer class indices in [0, num_classes)."""
    if labels.shape != (num_rows,):
        raise ValueError(f"expected labels ({num_rows},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, num_classes={num_classes}), "
            f"got values from {labels.min().item()} to {labels.max().item()}"
        )


@dataclass
class Candidates:
    """Embeddings (T, D) and labels (T,) of every process; this process's rows start at row `start`."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    start: int

    def self_index(self, num_anchors: int) -> torch.Tensor:
        """Row of each local anchor among the candidates."""
        return torch.arange(num_anchors, device=self.embeddings.device) + self.start


def anchors_and_candidates(
    embeddings: torch.Tensor, labels: torch.Tensor, gather: bool
) -> tuple[torch.Tensor, Candidates]:
    """This process's normalised embeddings (the anchors) and every process's (the candidates).

    Raises:
        ValueError: embeddings are not (N, D) or labels not (N,).
    """
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            "expected embeddings (N, D) and labels (N,); "
            f"got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    anchors = normalized_float(embeddings)
    return anchors, gather_candidates(anchors, labels, gather)


def gather_candidates(embeddings: torch.Tensor, labels: torch.Tensor, gather: bool) -> Candidates:
    """All processes' embeddings (through a gather that carries gradients) and labels, or just ours."""
    if not gather:
        return Candidates(embeddings, labels, 0)
    all_embeddings, start = distributed.gather_rows(embeddings)
    all_labels, _ = distributed.gather_rows(labels, with_grad=False)
    return Candidates(all_embeddings, all_labels, start)


def global_mean(local_sum: torch.Tensor, local_count: torch.Tensor | int, gather: bool) -> torch.Tensor:
    """Turn this process's sum over terms into its share of the mean over every process's terms.

    With gathering, returns local_sum · W / (terms on all processes): the mean of these over the W
    processes is the global mean, and DDP's gradient averaging gives that global mean's gradient,
    also when processes hold different numbers of terms. No terms anywhere gives 0, still differentiable.
    """
    count = torch.as_tensor(local_count, device=local_sum.device, dtype=local_sum.dtype)
    if gather:
        return local_sum * distributed.world_size() / distributed.global_sum(count).clamp_min(1)
    return local_sum / count.clamp_min(1)


def normalized_float(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows in at least float32 (s/τ loses too much in half precision)."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    return torch.nn.functional.normalize(embeddings.to(dtype), dim=1)


class LabelBatch(NamedTuple):
    """What a label-form loss sums over on one process.

    Attributes:
        anchors: this process's normalised embeddings (n, D), each also among the candidates.
        candidates: every process's normalised embeddings (T, D).
        anchor_labels: (n,) labels of the anchors.
        candidate_labels: (T,) labels of the candidates.
        self_index: (n,) row of each anchor among the candidates.
    """

    anchors: torch.Tensor
    candidates: torch.Tensor
    anchor_labels: torch.Tensor
    candidate_labels: torch.Tensor
    self_index: torch.Tensor


class LabelLoss(nn.Module):
    """A loss of the label form, `loss(embeddings (N, D), labels (N,))`: equal labels are positives.

    This process's rows are the anchors. With `gather_distributed`, every process's rows and labels are the
    candidates (through a gather that carries gradients) and the mean is over every process's terms, so W
    processes with batch B give the loss and, after DDP's averaging, the gradients of one process with W·B.
    Subclasses implement `loss_sum`.
    """

    def __init__(self, gather_distributed: bool = True):
        super().__init__()
        self.gather_distributed = gather_distributed

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, torch.Tensor | int]:
        """The loss summed over this process's terms, and how many terms there are."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings (N, D) with labels (N,); equal labels are positives."""
        anchors, candidates = anchors_and_candidates(embeddings, labels, self.gather_distributed)
        batch = LabelBatch(
            anchors, candidates.embeddings, labels, candidates.labels, candidates.self_index(len(labels))
        )
        total, count = self.loss_sum(batch)
        return global_mean(total, count, self.gather_distributed)
