"""What every batch loss shares: each process's rows are anchors, every process's rows are candidates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_toolkit import distributed


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
