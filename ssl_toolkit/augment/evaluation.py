"""Deterministic transforms: evaluation's resize, centre crop and normalisation, and the common size the
batch pipeline needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Deterministic transform for evaluation: resize, centre crop, normalise; uint8 (C, H, W) → float."""
    return v2.Compose(
        [
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def common_size_transform(image_size: int) -> v2.Compose:
    """Resize and centre-crop uint8 images of any size to one size, so that they batch for the batch views.

    The side is image_size·8/7 (256 for 224), leaving the random resized crop room to act.
    """
    side = max(image_size, round(image_size * 8 / 7))
    return v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(side)])
