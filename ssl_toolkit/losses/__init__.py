"""Contrastive and metric-learning losses; tensors in, scalar out. See DESIGN.md for each contract."""

from __future__ import annotations

from torch import nn

from ssl_toolkit.losses.arcface import ArcFaceLoss
from ssl_toolkit.losses.contrastive import ContrastiveLoss
from ssl_toolkit.losses.ntxent import NTXentLoss
from ssl_toolkit.losses.sigmoid import SigmoidLoss
from ssl_toolkit.losses.softmax import SoftmaxLoss
from ssl_toolkit.losses.supcon import SupConLoss
from ssl_toolkit.losses.triplet import TripletLoss

LOSSES: dict[str, type[nn.Module]] = {
    "ntxent": NTXentLoss,
    "supcon": SupConLoss,
    "softmax": SoftmaxLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "sigmoid": SigmoidLoss,
    "arcface": ArcFaceLoss,
}


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build the loss registered as `name` with its keyword arguments."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)


__all__ = [
    "LOSSES",
    "ArcFaceLoss",
    "ContrastiveLoss",
    "NTXentLoss",
    "SigmoidLoss",
    "SoftmaxLoss",
    "SupConLoss",
    "TripletLoss",
    "create_loss",
]
