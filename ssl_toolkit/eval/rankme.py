"""RankMe: the effective rank of a set of embeddings, a label-free measure of their collapse.

Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained self-supervised
representations by their rank": with σ the singular values of the embeddings (N, D) and
p_k = σ_k / ‖σ‖₁ + ε, RankMe = exp(−Σ p_k log p_k). It runs from 1 (every embedding on one line: complete
collapse) to min(N, D) (all directions used alike), and tracks linear-probe accuracy across runs of one
method without any label.
"""

from __future__ import annotations

import torch

EPSILON = 1e-7  # the paper's
MAX_SAMPLES = 25_600  # the paper's sample size; more rows change the estimate little and cost more
COLLAPSE_FRACTION = 0.05  # a RankMe under this share of min(N, D): most directions of h carry nothing


@torch.no_grad()
def rankme(embeddings: torch.Tensor) -> float:
    """RankMe of embeddings (N, D), from at most `MAX_SAMPLES` evenly spaced rows, in float64."""
    x = embeddings.detach().to(torch.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be (N, D) with N ≥ 1, got {tuple(embeddings.shape)}")
    if len(x) > MAX_SAMPLES:
        x = x[torch.linspace(0, len(x) - 1, MAX_SAMPLES, device=x.device).long()]
    # The singular values from the smaller Gram matrix: (D, D) when N > D, else (N, N).
    gram = x.T @ x if x.shape[0] > x.shape[1] else x @ x.T
    singular_values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = singular_values / singular_values.sum().clamp_min(torch.finfo(torch.float64).tiny) + EPSILON
    return float(torch.exp(-(p * p.log()).sum()))


def rankme_warning(value: float, feature_dim: int, num_samples: int | None = None) -> str | None:
    """A one-line warning when RankMe `value` of (N, `feature_dim`) embeddings shows collapse, else None."""
    ceiling = min(feature_dim, num_samples) if num_samples is not None else feature_dim
    if value >= max(1.5, COLLAPSE_FRACTION * ceiling):
        return None
    return (
        f"warning: RankMe of h is {value:.1f} of at most {ceiling}: the features span few directions "
        "(collapse); check the loss's temperature, the projection head and the learning rate"
    )
