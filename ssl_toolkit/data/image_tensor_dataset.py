"""A dataset of images held in memory as one uint8 tensor, decoded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset):
    """Images (N, C, H, W) uint8 with integer targets (N,); `transform` maps one uint8 image to a sample.

    Items are `(transform(image), target)`; without a transform the uint8 image itself.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], object] | None = None,
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
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels scaled to [0, 1]."""
        pixels = self.images.transpose(0, 1).reshape(self.channels, -1).float() / 255.0
        return pixels.mean(dim=1).tolist(), pixels.std(dim=1).tolist()

    def with_transform(self, transform: Callable[[torch.Tensor], object] | None) -> ImageTensorDataset:
        return ImageTensorDataset(self.images, self.targets, self.classes, transform)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform is not None else image), self.targets[index]
