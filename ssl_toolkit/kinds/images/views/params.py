"""What a view is: `ViewParams`, the presets that choose them, and the checks both pipelines share.

SimCLR's augmentation (Chen et al. 2020, appendix A): random resized crop of area (0.08, 1) and aspect
ratio (3/4, 4/3), horizontal flip, colour jitter of strength s (brightness, contrast, saturation 0.8·s,
hue 0.2·s, in random order) with p = 0.8, grayscale with p = 0.2, Gaussian blur with p = 0.5,
σ ∈ (0.1, 2) and a kernel of 10% of the side (ImageNet only; not for small images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PRESETS = ("simclr",)
DEVICES = ("cpu", "gpu", "auto")

BLUR_MIN_SIZE = 96  # SimCLR blurs ImageNet's 224 px views, not CIFAR-10's 32 px ones
SMALL_CROP_SCALE = (0.05, 0.14)  # SwAV's multi-crop: small views below, large views above 0.14
SMALL_CROP_SIZE_RATIO = 96 / 224  # SwAV's 96 px small views for 224 px large ones
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's luma weights, used by both pipelines
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True, kw_only=True)
class ViewParams:
    """One view's augmentation parameters, shared by both implementations.

    Attributes:
        size: side of the square view in pixels.
        scale: range of the crop's area as a fraction of the image's area.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_strength: colour-jitter strength s: brightness, contrast and saturation factors in
            [1 − 0.8·s, 1 + 0.8·s], hue shift in ±0.2·s turns (saturation and hue on 3 channels only).
        jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of converting to grayscale (3 channels only).
        blur_p: probability of a Gaussian blur with a kernel of about 10% of `size`.
        blur_sigma: range of the blur's σ in pixels, sampled uniformly.
        solarize_p: probability of inverting the pixels at or above half intensity.
        mean: per-channel mean for normalisation, of pixels scaled to [0, 1].
        std: per-channel standard deviation for normalisation.
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float
    jitter_strength: float
    jitter_p: float
    grayscale_p: float
    blur_p: float
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"view size must be positive, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.jitter_strength < 0:
            raise ValueError(f"jitter strength must be non-negative, got {self.jitter_strength}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def blur_kernel_size(self) -> int:
        """About 10% of the side, odd, at least 3 (SimCLR: 23 px at 224 px)."""
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)

    @property
    def jitter_ranges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of the brightness, contrast, saturation factors and of the hue shift in turns."""
        spread = 0.8 * self.jitter_strength
        hue = min(0.2 * self.jitter_strength, 0.5)  # a shift of half a turn already reaches every hue
        factor = (max(0.0, 1 - spread), 1 + spread)
        return factor, factor, factor, (-hue, hue)


def preset_views(
    preset: str,
    *,
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    n_views: int = 2,
    strength: float = 1.0,
    min_scale: float | None = None,
    flip_p: float | None = None,
    blur_p: float | None = None,
    solarize_p: float | None = None,
    small_crops: int = 0,
    small_size: int | None = None,
) -> list[ViewParams]:
    """The views of `preset` for `image_size` px views: `n_views` large ones, then `small_crops` small ones.

    Unset (None) arguments take the preset's value. `simclr`: crop area (0.08, 1), flip 0.5, colour jitter
    of strength `strength` with p = 0.8, grayscale 0.2 (colour images only), blur with p = 0.5 for views of
    96 px and more, no solarize. With small crops (SwAV's multi-crop) the large views take areas
    (0.14, 1) and the small ones (0.05, 0.14) at `small_size` px (default 96/224 of `image_size`);
    `min_scale` then moves the boundary between them.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if channels != len(mean) or channels != len(std):
        raise ValueError(f"channels={channels} but mean has {len(mean)} values and std {len(std)}")
    if n_views < 1:
        raise ValueError(f"n_views must be at least 1, got {n_views}")
    if small_crops < 0:
        raise ValueError(f"small_crops must be non-negative, got {small_crops}")
    if small_crops:
        boundary = min_scale if min_scale is not None else SMALL_CROP_SCALE[1]
        if boundary <= SMALL_CROP_SCALE[0]:
            raise ValueError(
                f"min_scale={boundary} must exceed {SMALL_CROP_SCALE[0]}, the small crops' least area"
            )
        large_scale, small_scale = (boundary, 1.0), (SMALL_CROP_SCALE[0], boundary)
    else:
        large_scale = (min_scale if min_scale is not None else 0.08, 1.0)
    if small_size is None:
        small_size = max(1, round(image_size * SMALL_CROP_SIZE_RATIO))

    def view(size: int, scale: tuple[float, float]) -> ViewParams:
        return ViewParams(
            size=size,
            scale=scale,
            flip_p=0.5 if flip_p is None else flip_p,
            jitter_strength=strength,
            jitter_p=0.8,
            grayscale_p=0.2 if channels == 3 else 0.0,
            blur_p=blur_p if blur_p is not None else (0.5 if size >= BLUR_MIN_SIZE else 0.0),
            solarize_p=0.0 if solarize_p is None else solarize_p,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
        )

    views = [view(image_size, large_scale)] * n_views
    if small_crops:
        views += [view(small_size, small_scale)] * small_crops
    return views


def resolve_device(device: str) -> str:
    """Where augmentation runs: `cpu` (per image, in DataLoader workers), `gpu` (per batch, on the
    accelerator) or `auto` (`gpu` when CUDA is available)."""
    if device not in DEVICES:
        raise ValueError(f"unknown augmentation device {device!r}; valid devices: {', '.join(DEVICES)}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return device


def check_views(views: Sequence[ViewParams]) -> list[ViewParams]:
    views = list(views)
    if not views:
        raise ValueError("at least one view is needed")
    if len({view.channels for view in views}) != 1:
        raise ValueError("all views must have the same number of channels (mean/std lengths differ)")
    return views


def check_images(images: torch.Tensor, ndim: int, channels: int) -> None:
    shape = "(C, H, W)" if ndim == 3 else "(B, C, H, W)"
    if images.dtype != torch.uint8 or images.ndim != ndim or images.shape[-3] != channels:
        raise ValueError(
            f"expected uint8 {shape} images with C={channels}, got {images.dtype} {tuple(images.shape)}"
        )
