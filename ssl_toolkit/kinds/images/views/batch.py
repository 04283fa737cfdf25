"""The per-batch pipeline: kornia on whole uint8 batches, on the batch's device (a GPU, or the CPU).

Every parameter is drawn independently per image, the colour-jitter order included, with the per-image
pipeline's formulas (`sampling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ssl_toolkit.kinds.images.views.params import GRAY_WEIGHTS, ViewParams, check_images, check_views
from ssl_toolkit.kinds.images.views.sampling import draw_batch, draw_uniforms, equal_view_runs


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


class BatchViews(torch.nn.Module):
    """Views of whole batches with kornia: uint8 (B, C, H, W) on any device → list of float (B, C, s, s).

    Parameters are drawn per image on the CPU, with the CPU path's formulas (`draw_batch`), and sent to the
    batch's device in one copy. They come from torch's global CPU generator: processes seeded alike draw
    alike, so seed each process differently (accelerate's `set_seed(seed, device_specific=True)`).

    Crops are resampled bilinearly by kornia's `crop_and_resize`, which maps the crop's corner pixels onto
    the view's; torchvision maps pixel areas and antialiases. The two differ by under half a source pixel
    at the borders, and by aliasing only where a crop is larger than the view
    (at most 1.4× at 224 px from images of up to 320 px).
    """

    def __init__(self, views: Sequence[ViewParams]):
        super().__init__()
        self.views = check_views(views)
        self.channels = self.views[0].channels

    def extra_repr(self) -> str:
        return f"views={self.views!r}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        check_images(images, 4, self.channels)
        # Augmentation is data preparation: no autocast, whatever context the training step runs in.
        with torch.autocast(images.device.type, enabled=False):
            pixels = images.float().div_(255)  # converted once for all views
            out = []
            for view, count in equal_view_runs(self.views):
                uniforms = draw_uniforms(count * len(images))
                out += [self._view(pixels, view, part) for part in uniforms.chunk(count)]
        return out

    @staticmethod
    def _view(pixels: torch.Tensor, view: ViewParams, uniforms: torch.Tensor) -> torch.Tensor:
        from kornia.color import rgb_to_grayscale
        from kornia.filters import gaussian_blur2d
        from kornia.geometry.transform import crop_and_resize

        channels, height, width = pixels.shape[1:]
        device = pixels.device
        draws = draw_batch(view, uniforms, height, width)
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
