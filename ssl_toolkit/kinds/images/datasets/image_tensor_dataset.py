"""A dataset of images held in memory as one uint8 tensor, decoded once."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ssl_toolkit.kinds.images.datasets.image_dataset import (
    ImageDataset,
    Transform,
    pixel_histogram,
    stats_from_histogram,
)

# Above this many pixel values (CIFAR-10's train split has 153.6M) the statistics come from a sample.
EXACT_STATS_MAX_VALUES = 200_000_000
STATS_CHUNK = 4_096  # images per histogram step, to bound the temporary memory


class ImageTensorDataset(ImageDataset):
    """Images (N, C, H, W) uint8 with integer targets (N,); `transform` maps one uint8 image to a sample.

    Items are `(transform(image), target)`; without a transform the uint8 image itself.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        transform: Transform | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must be ({images.shape[0]},), got {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.long()
        self.classes = list(classes)
        self.transform = transform

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def fixed_size(self) -> int | None:
        height, width = self.images.shape[2:]
        return height if height == width else None

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels scaled to [0, 1]; exact unless the dataset is very large."""
        if self.images.numel() > EXACT_STATS_MAX_VALUES:
            return super().channel_stats()
        chunks = (self.images[start : start + STATS_CHUNK] for start in range(0, len(self), STATS_CHUNK))
        return stats_from_histogram(pixel_histogram(chunks))

    def load_image(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def __len__(self) -> int:
        return self.images.shape[0]
