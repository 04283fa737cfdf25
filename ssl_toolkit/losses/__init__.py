"""Contrastive and metric-learning losses; tensors in, scalar out.

Each loss normalises its inputs (but the cross-entropy classifier, which reads them as they are), computes
similarities in float32 even under autocast and, with `gather_distributed=True`, takes every process's
embeddings as candidates with global means; the contract is in docs/losses.md. `loss_over_views` gives
any of them the views of a batch.
"""

from __future__ import annotations

from torch import nn

from ssl_toolkit.losses.arcface import ArcFaceLoss
from ssl_toolkit.losses.coles import ColesLoss
from ssl_toolkit.losses.contrastive import ContrastiveLoss
from ssl_toolkit.losses.cross_entropy import CrossEntropyLoss
from ssl_toolkit.losses.ntxent import NTXentLoss
from ssl_toolkit.losses.sigmoid import SigmoidLoss
from ssl_toolkit.losses.supcon import SupConLoss
from ssl_toolkit.losses.triplet import TripletLoss
from ssl_toolkit.losses.views import loss_over_views, sample_ids

LOSSES: dict[str, type[nn.Module]] = {
    "ntxent": NTXentLoss,
    "supcon": SupConLoss,
    "coles": ColesLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "sigmoid": SigmoidLoss,
    "arcface": ArcFaceLoss,
    "cross_entropy": CrossEntropyLoss,
}
_ALIASES = {"softmax": "coles"}  # CoLES calls its loss the softmax loss; recipes may too


def registered_name(name: str) -> str:
    """The name `name` is registered under (itself, or what its alias stands for)."""
    return _ALIASES.get(name, name)


def loss_class(name: str) -> type[nn.Module]:
    """The loss class registered as `name` (or an alias of it)."""
    resolved = registered_name(name)
    if resolved not in LOSSES:
        valid = ", ".join(sorted([*LOSSES, *_ALIASES]))
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}")
    return LOSSES[resolved]


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build the loss registered as `name` with its keyword arguments."""
    return loss_class(name)(**kwargs)


__all__ = [
    "LOSSES",
    "ArcFaceLoss",
    "ColesLoss",
    "ContrastiveLoss",
    "CrossEntropyLoss",
    "NTXentLoss",
    "SigmoidLoss",
    "SupConLoss",
    "TripletLoss",
    "create_loss",
    "loss_class",
    "loss_over_views",
    "registered_name",
    "sample_ids",
]
