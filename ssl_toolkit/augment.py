"""View pipelines: SimCLR augmentations that turn one uint8 image into several float views."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

PRESETS = ("simclr",)


class MultiViewTransform:
    """Apply `transform` `n_views` times to one image; returns the list of views."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], n_views: int = 2):
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.transform = transform
        self.n_views = n_views

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [self.transform(image) for _ in range(self.n_views)]


def simclr_view_transform(
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    strength: float = 1.0,
    min_scale: float = 0.08,
    flip_p: float = 0.5,
) -> v2.Compose:
    """SimCLR's augmentation (Chen et al. 2020, appendix A) for uint8 (C, H, W) images.

    Random resized crop (scale `min_scale`..1), horizontal flip, colour jitter of strength s with
    p = 0.8, grayscale with p = 0.2 (colour images only), Gaussian blur with p = 0.5 for inputs of
    96 px and more, then float conversion and per-channel normalisation.
    """
    s = strength
    jitter = (
        v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        if channels == 3
        else v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s)  # hue and saturation need colour
    )
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(p=flip_p),
        v2.RandomApply([jitter], p=0.8),
    ]
    if channels == 3:
        steps.append(v2.RandomGrayscale(p=0.2))
    if image_size >= 96:
        kernel = int(0.1 * image_size) // 2 * 2 + 1  # about 10% of the side, odd
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Deterministic transform for evaluation: resize, centre crop, normalise."""
    return v2.Compose(
        [
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def create_view_transform(
    preset: str,
    *,
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    n_views: int = 2,
    strength: float = 1.0,
    min_scale: float = 0.08,
    flip_p: float = 0.5,
) -> MultiViewTransform:
    """The multi-view transform of `preset` for images of `channels` channels."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    view = simclr_view_transform(
        image_size, channels, mean, std, strength=strength, min_scale=min_scale, flip_p=flip_p
    )
    return MultiViewTransform(view, n_views)
