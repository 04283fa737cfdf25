"""View pipelines: SimCLR augmentations that turn one uint8 image into several normalised float views.

A preset (`preset_views`) gives one `ViewParams` per view. Two implementations draw the same random
parameters from the same distributions with the same formulas and apply the same operations:

- `CPUViews`: a dataset's per-item transform, for DataLoader workers. One uint8 (C, H, W) image in,
  a list of float views out. Crop and resize run on uint8 first, so every later op touches only the
  small view; the colour jitter and blur are written for speed (see `color_jitter`, `gaussian_blur`)
  and match torchvision's `ColorJitter` and `GaussianBlur` on the same factors.
- `GPUViews`: kornia on whole uint8 (B, C, H, W) batches on the batch's device, every parameter drawn
  independently per image (the colour-jitter order included).

SimCLR's augmentation (Chen et al. 2020, appendix A): random resized crop of area (0.08, 1) and aspect
ratio (3/4, 4/3), horizontal flip, colour jitter of strength s (brightness, contrast, saturation 0.8·s,
hue 0.2·s, in random order) with p = 0.8, grayscale with p = 0.2, Gaussian blur with p = 0.5,
σ ∈ (0.1, 2) and a kernel of 10% of the side (ImageNet only; not for small images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as tnf
from torchvision.transforms import v2

PRESETS = ("simclr",)
DEVICES = ("cpu", "gpu", "auto")

BLUR_MIN_SIZE = 96  # SimCLR blurs ImageNet's 224 px views, not CIFAR-10's 32 px ones
SMALL_CROP_SCALE = (0.05, 0.14)  # SwAV's multi-crop: small views below, large views above 0.14
SMALL_CROP_SIZE_RATIO = 96 / 224  # SwAV's 96 px small views for 224 px large ones
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's luma weights, used by both implementations
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
BLUR_TRUNCATION = 4.0  # blur taps beyond 4σ carry < 1e-4 of the kernel's mass
DRAW_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback


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
    """Where augmentation runs: `cpu`, `gpu`, or `auto` (the GPU when CUDA is available)."""
    if device not in DEVICES:
        raise ValueError(f"unknown augmentation device {device!r}; valid devices: {', '.join(DEVICES)}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return device


# ---------------------------------------------------------------------------------------------------------
# Random parameters. Both implementations turn the same uniform draws (torch's global generator, which the
# DataLoader seeds differently in every worker) into parameters with the same formulas: `_draw_view` in
# plain Python, one view at a time, because a dozen tiny tensor ops would cost more than a 32 px view's
# whole pipeline; `_draw_batch` vectorised, for the GPU path's whole batches. A test checks they agree.

# Columns of one view's uniform draws.
_AREA = slice(0, DRAW_ATTEMPTS)
_RATIO = slice(DRAW_ATTEMPTS, 2 * DRAW_ATTEMPTS)
_TOP, _LEFT = 2 * DRAW_ATTEMPTS, 2 * DRAW_ATTEMPTS + 1
_FLIP, _JITTER, _GRAY, _BLUR, _SOLARIZE = range(_LEFT + 1, _LEFT + 6)
_FACTORS = slice(_SOLARIZE + 1, _SOLARIZE + 5)
_ORDER = slice(_FACTORS.stop, _FACTORS.stop + 4)  # sorting 4 uniforms gives a uniform random permutation
_SIGMA = _ORDER.stop
N_UNIFORMS = _SIGMA + 1


def _draw_uniforms(n: int) -> torch.Tensor:
    """(n, N_UNIFORMS) float64 uniforms on [0, 1): everything random about n views."""
    return torch.rand(n, N_UNIFORMS, dtype=torch.float64)


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's box when no proposal fits: the whole image, its aspect ratio clamped into `ratio`."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class _Draw(NamedTuple):
    """One view's random parameters."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: bool
    factors: list[float]  # brightness, contrast, saturation factors and hue shift in turns
    order: list[int]  # a permutation of range(4), indices into JITTER_OPS
    gray: bool
    blur: bool
    sigma: float
    solarize: bool


def _draw_view(view: ViewParams, uniforms: list[float], height: int, width: int) -> _Draw:
    """One view's parameters from its uniforms, for an image of `height` × `width` px.

    The crop is torchvision's RandomResizedCrop: up to 10 proposals of area ~ U(scale) and log-uniform
    aspect ratio; the first that fits the image wins, else `_fallback_box`.
    """
    area = height * width
    (s0, s1), (r0, r1) = view.scale, (math.log(view.ratio[0]), math.log(view.ratio[1]))
    box = None
    for u_area, u_ratio in zip(uniforms[_AREA], uniforms[_RATIO], strict=True):
        target_area = area * (s0 + (s1 - s0) * u_area)
        aspect = math.exp(r0 + (r1 - r0) * u_ratio)
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = math.floor(uniforms[_TOP] * (height - crop_h + 1))
            left = math.floor(uniforms[_LEFT] * (width - crop_w + 1))
            box = (top, left, crop_h, crop_w)
            break
    if box is None:
        box = _fallback_box(height, width, view.ratio)
    factors = [
        low + (high - low) * u for (low, high), u in zip(view.jitter_ranges, uniforms[_FACTORS], strict=True)
    ]
    order_keys = uniforms[_ORDER]
    sigma_low, sigma_high = view.blur_sigma
    return _Draw(
        *box,
        flip=uniforms[_FLIP] < view.flip_p,
        jitter=uniforms[_JITTER] < view.jitter_p,
        factors=factors,
        order=sorted(range(4), key=order_keys.__getitem__),
        gray=uniforms[_GRAY] < view.grayscale_p,
        blur=uniforms[_BLUR] < view.blur_p,
        sigma=sigma_low + (sigma_high - sigma_low) * uniforms[_SIGMA],
        solarize=uniforms[_SOLARIZE] < view.solarize_p,
    )


@dataclass(frozen=True)
class _Draws:
    """`_Draw` for a batch: every field has one row per view."""

    top: torch.Tensor  # int64
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor
    factors: torch.Tensor  # (n, 4) float64
    order: torch.Tensor  # (n, 4) int64
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor  # float64
    solarize: torch.Tensor


def _draw_batch(view: ViewParams, uniforms: torch.Tensor, height: int, width: int) -> _Draws:
    """`_draw_view` for every row of `uniforms` (n, N_UNIFORMS) at once, with the same formulas."""
    area = height * width
    (s0, s1), (r0, r1) = view.scale, (math.log(view.ratio[0]), math.log(view.ratio[1]))
    target_area = area * (s0 + (s1 - s0) * uniforms[:, _AREA])
    aspect = torch.exp(r0 + (r1 - r0) * uniforms[:, _RATIO])
    widths = torch.sqrt(target_area * aspect).round()
    heights = torch.sqrt(target_area / aspect).round()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax picks the first fitting proposal
    found = fits.any(dim=1)
    fallback = _fallback_box(height, width, view.ratio)
    crop_h = torch.where(found, heights.gather(1, first).squeeze(1), float(fallback[2]))
    crop_w = torch.where(found, widths.gather(1, first).squeeze(1), float(fallback[3]))
    top = torch.where(found, torch.floor(uniforms[:, _TOP] * (height - crop_h + 1)), float(fallback[0]))
    left = torch.where(found, torch.floor(uniforms[:, _LEFT] * (width - crop_w + 1)), float(fallback[1]))
    low, high = torch.tensor(view.jitter_ranges, dtype=torch.float64).unbind(1)
    sigma_low, sigma_high = view.blur_sigma
    return _Draws(
        top=top.long(),
        left=left.long(),
        height=crop_h.long(),
        width=crop_w.long(),
        flip=uniforms[:, _FLIP] < view.flip_p,
        jitter=uniforms[:, _JITTER] < view.jitter_p,
        factors=low + (high - low) * uniforms[:, _FACTORS],
        order=uniforms[:, _ORDER].argsort(dim=1),
        gray=uniforms[:, _GRAY] < view.grayscale_p,
        blur=uniforms[:, _BLUR] < view.blur_p,
        sigma=sigma_low + (sigma_high - sigma_low) * uniforms[:, _SIGMA],
        solarize=uniforms[:, _SOLARIZE] < view.solarize_p,
    )


def _runs(views: Sequence[ViewParams]) -> list[tuple[ViewParams, int]]:
    """Consecutive equal views as (view, count), so the GPU path draws each run's parameters in one go."""
    runs: list[tuple[ViewParams, int]] = []
    for view in views:
        if runs and runs[-1][0] == view:
            runs[-1] = (view, runs[-1][1] + 1)
        else:
            runs.append((view, 1))
    return runs


def _check_views(views: Sequence[ViewParams]) -> list[ViewParams]:
    views = list(views)
    if not views:
        raise ValueError("at least one view is needed")
    if len({view.channels for view in views}) != 1:
        raise ValueError("all views must have the same number of channels (mean/std lengths differ)")
    return views


def _check_images(images: torch.Tensor, ndim: int, channels: int) -> None:
    shape = "(C, H, W)" if ndim == 3 else "(B, C, H, W)"
    if images.dtype != torch.uint8 or images.ndim != ndim or images.shape[-3] != channels:
        raise ValueError(
            f"expected uint8 {shape} images with C={channels}, got {images.dtype} {tuple(images.shape)}"
        )


# ---------------------------------------------------------------------------------------------------------
# CPU implementation: one image at a time, for DataLoader workers. On a 32 px view every torch call costs
# about as much as its arithmetic, so these functions use as few calls as they can.

_GRAY_ROW = torch.tensor([GRAY_WEIGHTS])  # (1, 3)
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)  # n_c of (R, G, B) in `_shift_hue`


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """Luma (1, H, W) of a float RGB image (3, H, W), with torchvision's weights."""
    return torch.matmul(_GRAY_ROW, image.reshape(3, -1)).view(1, *image.shape[-2:])


def _shift_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """torchvision's `adjust_hue` (an HSV hue rotation by `shift` turns) of a float RGB image (3, H, W).

    Without building an HSV image: a hue rotation keeps each pixel's max M and min m, and channel c of
    hue h (in sixths of a turn) is m + (M − m)·clamp(d_c − 1, 0, 1), d_c being the distance on the circle
    of length 6 from h + n_c to 2 with n = (5, 3, 1) for (R, G, B). That is the HSV→RGB formula with
    V = M and V·S = M − m, and it is continuous in h, so rounding at sextant borders cannot flip a colour.
    Written with few, mostly in-place operations: at 224 px each new tensor costs as much as its arithmetic.
    """
    top = image.amax(dim=-3, keepdim=True)
    bottom = image.amin(dim=-3, keepdim=True)
    chroma = (top - bottom).clamp_min_(1e-12)  # the clamp only keeps gray pixels from dividing by zero
    # Channels rescaled to [0, 1]: the maximum becomes exactly 1, as (M − m) / (M − m).
    unit = (image - bottom).div_(chroma)
    red, green, blue = unit.unbind(-3)
    # Which channel is the maximum, from floor(1) = 1; red before green before blue on ties, as torchvision.
    red_max = red.floor()
    green_max = green.floor()
    green_max.addcmul_(green_max, red_max, value=-1)
    # The hue is 4 + r − g when blue is the maximum, g − b when red is, 2 + b − r when green is.
    red_minus_green = red - green
    green_minus_blue = torch.sub(green, blue, out=blue)
    hue = red_minus_green + 4  # blue's formula, then corrected where red or green is the maximum:
    correction = (green_minus_blue - red_minus_green).sub_(4)  # red's formula − blue's
    hue.addcmul_(red_max, correction)
    torch.add(green_minus_blue, red_minus_green, alpha=2, out=correction).add_(2)  # blue's − green's
    hue.addcmul_(green_max, correction, value=-1)
    # unit's storage is free again: d_c = |(h + n_c + 1) mod 6 − 3| computed in it, then the output.
    distance = torch.add(hue.unsqueeze(-3), _HUE_OFFSETS + (6 * shift + 1), out=unit)
    distance.sub_(distance.mul(1 / 6).floor_(), alpha=6).sub_(3).abs_()
    return torch.addcmul(bottom, chroma, distance.sub_(1).clamp_(0, 1), out=distance)


def _color_jitter_(image: torch.Tensor, factors: Sequence[float], order: Sequence[int]) -> torch.Tensor:
    """`color_jitter` in place where it can be (the hue returns a new tensor)."""
    colour = image.shape[-3] == 3
    for op in order:
        factor = float(factors[op])
        if op == 0:
            image = image.mul_(factor).clamp_max_(1)  # factors are never negative
        elif op == 1:
            # The mean of the luma is the luma of the channel means.
            channel_means = image.mean(dim=(-2, -1))
            mean = float(_GRAY_ROW[0] @ channel_means) if colour else float(channel_means.mean())
            image = image.mul_(factor).add_(mean * (1 - factor)).clamp_(0, 1)
        elif op == 2 and colour:
            luma = _grayscale(image)  # before the in-place multiply changes the image
            image = image.mul_(factor).add_(luma, alpha=1 - factor).clamp_(0, 1)
        elif op == 3 and colour:
            image = _shift_hue(image, factor)
    return image


def color_jitter(image: torch.Tensor, factors: Sequence[float], order: Sequence[int]) -> torch.Tensor:
    """torchvision's ColorJitter with fixed factors, faster; float image (C, H, W) in [0, 1] → a new one.

    Args:
        image: float (C, H, W) in [0, 1]; saturation and hue apply only when C == 3 (as torchvision).
        factors: brightness, contrast and saturation factors and the hue shift in turns.
        order: the order of the operations, as indices into `JITTER_OPS`.
    """
    return _color_jitter_(image.clone(), factors, order)


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """torchvision's `gaussian_blur` (reflect padding), separable; float (C, H, W) → a new (C, H, W).

    Taps further than 4σ from the centre are dropped (less than 1e-4 of the kernel's mass), so a σ of 0.5
    costs 5 taps instead of the 23 of a 224 px view's kernel.
    """
    height, width = image.shape[-2:]
    radius = min(kernel_size // 2, math.ceil(BLUR_TRUNCATION * sigma), height - 1, width - 1)
    if radius < 1:
        return image.clone()
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(radius + 1)]
    total = 2 * sum(taps) - taps[0]
    taps = [tap / total for tap in taps]  # taps[k] weighs the offsets ±k
    padded = tnf.pad(image.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")[0]
    # Shifted slices summed with their weights: plain adds beat a depthwise conv2d on one small image.
    rows = padded[..., radius : radius + width] * taps[0]
    for k in range(1, radius + 1):
        rows.add_(padded[..., radius + k : radius + k + width], alpha=taps[k])
        rows.add_(padded[..., radius - k : radius - k + width], alpha=taps[k])
    out = rows[..., radius : radius + height, :] * taps[0]
    for k in range(1, radius + 1):
        out.add_(rows[..., radius + k : radius + k + height, :], alpha=taps[k])
        out.add_(rows[..., radius - k : radius - k + height, :], alpha=taps[k])
    return out


class CPUViews:
    """A dataset's per-item transform: one uint8 image (C, H, W) → the list of float views (C, s, s).

    Picklable, for DataLoader workers.
    """

    def __init__(self, views: Sequence[ViewParams]):
        self.views = _check_views(views)
        self.channels = self.views[0].channels
        # Normalisation as (x − mean) / std = x · (1 / std) − mean / std, two in-place passes.
        self._scales = [1 / torch.tensor(view.std).view(-1, 1, 1) for view in self.views]
        self._shifts = [
            -torch.tensor(view.mean).view(-1, 1, 1) * scale
            for view, scale in zip(self.views, self._scales, strict=True)
        ]

    def __repr__(self) -> str:
        return f"CPUViews({self.views!r})"

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        _check_images(image, 3, self.channels)
        height, width = image.shape[-2:]
        uniforms = _draw_uniforms(len(self.views)).tolist()
        return [
            self._view(image, view, _draw_view(view, u, height, width), scale, shift)
            for view, u, scale, shift in zip(self.views, uniforms, self._scales, self._shifts, strict=True)
        ]

    @staticmethod
    def _view(
        image: torch.Tensor, view: ViewParams, draw: _Draw, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        crop = image[:, draw.top : draw.top + draw.height, draw.left : draw.left + draw.width].unsqueeze(0)
        # torch's uint8 antialiased resize works on channels-last; converting the small crop first is cheaper
        # than letting it convert. uint8 in, uint8 out, as torchvision's RandomResizedCrop on uint8 images.
        crop = crop.contiguous(memory_format=torch.channels_last)
        size = (view.size, view.size)
        resized = tnf.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if draw.flip:
            resized = resized.flip(-1)
        x = resized.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 255)
        if draw.jitter:
            x = _color_jitter_(x, draw.factors, draw.order)
        if draw.gray and view.channels == 3:
            x = _grayscale(x)  # one channel from here on: the blur runs once, normalisation broadcasts it
        if draw.blur:
            x = gaussian_blur(x, view.blur_kernel_size, draw.sigma)
        if draw.solarize:
            x = torch.where(x >= 0.5, 1 - x, x)
        if x.shape[0] != view.channels:  # grayscale: the one channel becomes three here
            return torch.mul(x, scale).add_(shift)
        return x.mul_(scale).add_(shift)


# ---------------------------------------------------------------------------------------------------------
# GPU implementation: kornia on whole batches, on the batch's device (the CPU too).


def color_jitter_batch(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Colour jitter with per-image factors and order, with kornia; float (B, C, H, W) in [0, 1] → new.

    Args:
        images: float (B, C, H, W) in [0, 1]; saturation and hue apply only when C == 3.
        factors: (B, 4) brightness, contrast and saturation factors and hue shift in turns.
        order: (B, 4) on the CPU: row b is the order of image b's operations, as indices into `JITTER_OPS`.
    """
    import kornia.enhance as ke

    colour = images.shape[1] == 3
    operations = (
        ke.adjust_brightness_accumulative,
        ke.adjust_contrast_with_mean_subtraction,
        ke.adjust_saturation_with_gray_subtraction if colour else None,
        (lambda x, shift: ke.adjust_hue(x, shift * (2 * math.pi))) if colour else None,
    )
    # Each image runs each operation once, at its own step: the images doing operation k at step t are
    # gathered, adjusted together and put back. The index lists are built on the CPU and sent in one copy,
    # so choosing the images never waits on the device.
    groups = [(step, op) for step in range(4) for op in range(4) if operations[op] is not None]
    index_lists = [torch.nonzero(order[:, step] == op).squeeze(1) for step, op in groups]
    lengths = [len(index) for index in index_lists]
    indices = torch.cat(index_lists).to(images.device, non_blocking=True).split(lengths)
    images = images.clone()
    factors = factors.to(images.device, images.dtype)
    for (_, op), index, length in zip(groups, indices, lengths, strict=True):
        if length:
            adjusted = operations[op](images.index_select(0, index), factors.index_select(0, index)[:, op])
            images.index_copy_(0, index, adjusted)
    return images


class GPUViews(torch.nn.Module):
    """Views of whole batches with kornia: uint8 (B, C, H, W) on any device → list of float (B, C, s, s).

    Parameters are drawn per image on the CPU, with the CPU path's formulas (`_draw_batch`), and sent to the
    batch's device in one copy. They come from torch's global CPU generator: processes seeded alike draw
    alike, so seed each process differently (accelerate's `set_seed(seed, device_specific=True)`).

    Crops are resampled bilinearly by kornia's `crop_and_resize`, which maps the crop's corner pixels onto
    the view's; torchvision maps pixel areas and antialiases. The two differ by under half a source pixel
    at the borders, and by aliasing only where a crop is larger than the view
    (at most 1.4× at 224 px from images of up to 320 px).
    """

    def __init__(self, views: Sequence[ViewParams]):
        super().__init__()
        self.views = _check_views(views)
        self.channels = self.views[0].channels

    def extra_repr(self) -> str:
        return f"views={self.views!r}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        _check_images(images, 4, self.channels)
        # Augmentation is data preparation: no autocast, whatever context the training step runs in.
        with torch.autocast(images.device.type, enabled=False):
            pixels = images.float().div_(255)  # converted once for all views
            out = []
            for view, count in _runs(self.views):
                uniforms = _draw_uniforms(count * len(images))
                out += [self._view(pixels, view, part) for part in uniforms.chunk(count)]
        return out

    @staticmethod
    def _view(pixels: torch.Tensor, view: ViewParams, uniforms: torch.Tensor) -> torch.Tensor:
        from kornia.color import rgb_to_grayscale
        from kornia.filters import gaussian_blur2d
        from kornia.geometry.transform import crop_and_resize

        channels, height, width = pixels.shape[1:]
        device = pixels.device
        draws = _draw_batch(view, uniforms, height, width)
        # Everything per image in one host-to-device copy: box corners (x, y), coins, factors, σ.
        right = draws.left + draws.width - 1
        bottom = draws.top + draws.height - 1
        corners = torch.stack([draws.left, draws.top, right, draws.top, right, bottom, draws.left, bottom], 1)
        coins = torch.stack([draws.flip, draws.gray, draws.solarize], 1)
        packed = torch.cat([corners.double(), coins.double(), draws.factors, draws.sigma.unsqueeze(1)], 1)
        packed = packed.float().to(device, non_blocking=True)
        boxes, coins, factors, sigma = packed.split([8, 3, 4, 1], dim=1)
        flip, gray, solarize = (coins[:, k].bool().view(-1, 1, 1, 1) for k in range(3))

        x = crop_and_resize(pixels, boxes.reshape(-1, 4, 2), (view.size, view.size), align_corners=True)
        x = torch.where(flip, x.flip(-1), x)
        # Colour jitter and blur run on the images that draw them only; their indices are known on the CPU.
        jittered = draws.jitter.nonzero().squeeze(1)
        if len(jittered):
            index = jittered.to(device, non_blocking=True)
            jitter_factors = factors.index_select(0, index)
            adjusted = color_jitter_batch(x.index_select(0, index), jitter_factors, draws.order[jittered])
            x = x.index_copy(0, index, adjusted)
        if channels == 3 and view.grayscale_p > 0:
            luma = rgb_to_grayscale(x, rgb_weights=x.new_tensor(GRAY_WEIGHTS))
            x = torch.where(gray, luma.expand_as(x), x)
        blurred = draws.blur.nonzero().squeeze(1)
        if len(blurred):
            index = blurred.to(device, non_blocking=True)
            kernel = view.blur_kernel_size
            sigmas = sigma.index_select(0, index).expand(-1, 2)
            x = x.index_copy(0, index, gaussian_blur2d(x.index_select(0, index), (kernel, kernel), sigmas))
        if view.solarize_p > 0:
            x = torch.where(solarize & (x >= 0.5), 1 - x, x)
        mean = torch.tensor(view.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(view.std, device=device).view(1, -1, 1, 1)
        return (x - mean).div_(std)


# ---------------------------------------------------------------------------------------------------------
# Evaluation and display.


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


def view_grid(
    views: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float], max_images: int = 8
) -> torch.Tensor:
    """An RGB uint8 image (3, H, W) of views: one row per sample, one column per view.

    Args:
        views: normalised float views, each (B, C, s, s) (or (C, s, s) for one sample); smaller views are
            centred on the largest view's cell, so multi-crop shows the crops' relative sizes.
        mean: per-channel mean used to normalise the views.
        std: per-channel standard deviation used to normalise the views.
        max_images: at most this many samples (rows).
    """
    if not views:
        raise ValueError("no views to show")
    batches = [view.unsqueeze(0) if view.ndim == 3 else view for view in views]
    rows = min(max_images, min(batch.shape[0] for batch in batches))
    cell = max(batch.shape[-1] for batch in batches)
    gap = 2
    mean_ = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_ = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    grid = torch.full(
        (3, rows * (cell + gap) + gap, len(batches) * (cell + gap) + gap), 255, dtype=torch.uint8
    )
    for column, batch in enumerate(batches):
        pixels = (
            (batch[:rows].detach().float().cpu() * std_ + mean_)
            .clamp_(0, 1)
            .mul_(255)
            .round_()
            .to(torch.uint8)
        )
        if pixels.shape[1] != 3:  # gray (or other) images show their first channel in gray
            pixels = pixels[:, :1].expand(-1, 3, -1, -1)
        size_h, size_w = pixels.shape[-2:]
        for row in range(rows):
            y = gap + row * (cell + gap) + (cell - size_h) // 2
            x = gap + column * (cell + gap) + (cell - size_w) // 2
            grid[:, y : y + size_h, x : x + size_w] = pixels[row]
    return grid
