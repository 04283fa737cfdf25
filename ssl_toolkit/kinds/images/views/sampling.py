"""The random draws both pipelines share.

Both pipelines turn the same uniform draws (torch's global generator, which the DataLoader seeds
differently in every worker) into parameters with the same formulas: `draw_view` in plain Python, one view
at a time, because a dozen tiny tensor ops would cost more than a 32 px view's whole pipeline;
`draw_batch` vectorised, for whole batches. A test checks they agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ssl_toolkit.kinds.images.views.params import ViewParams

DRAW_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback

# Columns of one view's uniform draws.
_AREA = slice(0, DRAW_ATTEMPTS)
_RATIO = slice(DRAW_ATTEMPTS, 2 * DRAW_ATTEMPTS)
_TOP, _LEFT = 2 * DRAW_ATTEMPTS, 2 * DRAW_ATTEMPTS + 1
_FLIP, _JITTER, _GRAY, _BLUR, _SOLARIZE = range(_LEFT + 1, _LEFT + 6)
_FACTORS = slice(_SOLARIZE + 1, _SOLARIZE + 5)
_ORDER = slice(_FACTORS.stop, _FACTORS.stop + 4)  # sorting 4 uniforms gives a uniform random permutation
_SIGMA = _ORDER.stop
N_UNIFORMS = _SIGMA + 1


def draw_uniforms(n: int) -> torch.Tensor:
    """(n, N_UNIFORMS) float64 uniforms on [0, 1): everything random about n views."""
    return torch.rand(n, N_UNIFORMS, dtype=torch.float64)


def fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's box when no proposal fits: the whole image, its aspect ratio clamped into `ratio`."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class Draw(NamedTuple):
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


def draw_view(view: ViewParams, uniforms: list[float], height: int, width: int) -> Draw:
    """One view's parameters from its uniforms, for an image of `height` × `width` px.

    The crop is torchvision's RandomResizedCrop: up to 10 proposals of area ~ U(scale) and log-uniform
    aspect ratio; the first that fits the image wins, else `fallback_box`.
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
        box = fallback_box(height, width, view.ratio)
    factors = [
        low + (high - low) * u for (low, high), u in zip(view.jitter_ranges, uniforms[_FACTORS], strict=True)
    ]
    order_keys = uniforms[_ORDER]
    sigma_low, sigma_high = view.blur_sigma
    return Draw(
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
class Draws:
    """`Draw` for a batch: every field has one row per view."""

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


def draw_batch(view: ViewParams, uniforms: torch.Tensor, height: int, width: int) -> Draws:
    """`draw_view` for every row of `uniforms` (n, N_UNIFORMS) at once, with the same formulas."""
    area = height * width
    (s0, s1), (r0, r1) = view.scale, (math.log(view.ratio[0]), math.log(view.ratio[1]))
    target_area = area * (s0 + (s1 - s0) * uniforms[:, _AREA])
    aspect = torch.exp(r0 + (r1 - r0) * uniforms[:, _RATIO])
    widths = torch.sqrt(target_area * aspect).round()
    heights = torch.sqrt(target_area / aspect).round()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax picks the first fitting proposal
    found = fits.any(dim=1)
    fallback = fallback_box(height, width, view.ratio)
    crop_h = torch.where(found, heights.gather(1, first).squeeze(1), float(fallback[2]))
    crop_w = torch.where(found, widths.gather(1, first).squeeze(1), float(fallback[3]))
    top = torch.where(found, torch.floor(uniforms[:, _TOP] * (height - crop_h + 1)), float(fallback[0]))
    left = torch.where(found, torch.floor(uniforms[:, _LEFT] * (width - crop_w + 1)), float(fallback[1]))
    low, high = torch.tensor(view.jitter_ranges, dtype=torch.float64).unbind(1)
    sigma_low, sigma_high = view.blur_sigma
    return Draws(
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


def equal_view_runs(views: Sequence[ViewParams]) -> list[tuple[ViewParams, int]]:
    """Consecutive equal views as (view, count), so the GPU path draws each run's parameters in one go."""
    runs: list[tuple[ViewParams, int]] = []
    for view in views:
        if runs and runs[-1][0] == view:
            runs[-1] = (view, runs[-1][1] + 1)
        else:
            runs.append((view, 1))
    return runs
