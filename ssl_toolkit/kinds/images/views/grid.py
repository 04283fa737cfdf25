"""A picture of views for the dashboards: one row per sample, one column per view."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
