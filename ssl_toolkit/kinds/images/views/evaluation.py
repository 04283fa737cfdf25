"""Deterministic transforms: evaluation's resize, centre crop and normalisation, and the common size the
batch pipeline needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor, rgb_to_grayscale


class AsImageTensor:
    """A PIL image or a uint8 tensor (C, H, W) → a uint8 tensor with `channels` (1 or 3) channels."""

    def __init__(self, channels: int):
        self.channels = channels

    def __repr__(self) -> str:
        return f"AsImageTensor(channels={self.channels})"

    def __call__(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):  # PIL: let it convert palette, alpha and 16-bit modes
            image = pil_to_tensor(image.convert("L" if self.channels == 1 else "RGB"))
        if image.shape[-3] == self.channels:
            return image
        if self.channels == 1:
            return rgb_to_grayscale(image[..., :3, :, :])
        return image[..., :1, :, :].expand(*image.shape[:-3], 3, *image.shape[-2:])


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Deterministic transform for evaluation: resize, centre crop, normalise.

    Takes a uint8 tensor (C, H, W) or a PIL image, converted to the `len(mean)` channels the encoder
    expects; returns a float tensor (C, image_size, image_size).
    """
    return v2.Compose(
        [
            AsImageTensor(len(mean)),
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
