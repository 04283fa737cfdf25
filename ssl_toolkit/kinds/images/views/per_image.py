"""The per-image pipeline: a dataset's transform, one uint8 image in and its views out, in DataLoader workers.

Crop and resize run on uint8 first, so every later op touches only the small view; the colour jitter and
blur (`functional`) match torchvision's `ColorJitter` and `GaussianBlur` on the same factors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as tnf

from ssl_toolkit.kinds.images.views.functional import color_jitter_, gaussian_blur, grayscale
from ssl_toolkit.kinds.images.views.params import ViewParams, check_images, check_views
from ssl_toolkit.kinds.images.views.sampling import Draw, draw_uniforms, draw_view


class PerImageViews:
    """A dataset's per-item transform: one uint8 image (C, H, W) → the list of float views (C, s, s).

    Picklable, for DataLoader workers.
    """

    def __init__(self, views: Sequence[ViewParams]):
        self.views = check_views(views)
        self.channels = self.views[0].channels
        # Normalisation as (x − mean) / std = x · (1 / std) − mean / std, two in-place passes.
        self._scales = [1 / torch.tensor(view.std).view(-1, 1, 1) for view in self.views]
        self._shifts = [
            -torch.tensor(view.mean).view(-1, 1, 1) * scale
            for view, scale in zip(self.views, self._scales, strict=True)
        ]

    def __repr__(self) -> str:
        return f"PerImageViews({self.views!r})"

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        check_images(image, 3, self.channels)
        height, width = image.shape[-2:]
        uniforms = draw_uniforms(len(self.views)).tolist()
        return [
            self._view(image, view, draw_view(view, u, height, width), scale, shift)
            for view, u, scale, shift in zip(self.views, uniforms, self._scales, self._shifts, strict=True)
        ]

    @staticmethod
    def _view(
        image: torch.Tensor, view: ViewParams, draw: Draw, scale: torch.Tensor, shift: torch.Tensor
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
            x = color_jitter_(x, draw.factors, draw.order)
        if draw.gray and view.channels == 3:
            x = grayscale(x)  # one channel from here on: the blur runs once, normalisation broadcasts it
        if draw.blur:
            x = gaussian_blur(x, view.blur_kernel_size, draw.sigma)
        if draw.solarize:
            x = torch.where(x >= 0.5, 1 - x, x)
        if x.shape[0] != view.channels:  # grayscale: the one channel becomes three here
            return torch.mul(x, scale).add_(shift)
        return x.mul_(scale).add_(shift)
