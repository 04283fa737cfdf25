"""Per-image operations equal to torchvision's, written for speed on one small image.

On a 32 px view every torch call costs about as much as its arithmetic, so these functions use as few
calls as they can.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as tnf

from ssl_toolkit.kinds.images.views.params import GRAY_WEIGHTS

BLUR_TRUNCATION = 4.0  # blur taps beyond 4σ carry < 1e-4 of the kernel's mass

_GRAY_ROW = torch.tensor([GRAY_WEIGHTS])  # (1, 3)
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)  # n_c of (R, G, B) in `_shift_hue`


def grayscale(image: torch.Tensor) -> torch.Tensor:
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


def color_jitter_(image: torch.Tensor, factors: Sequence[float], order: Sequence[int]) -> torch.Tensor:
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
            luma = grayscale(image)  # before the in-place multiply changes the image
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
    return color_jitter_(image.clone(), factors, order)


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
