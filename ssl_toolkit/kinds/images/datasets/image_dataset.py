"""The contract of every registered dataset: uint8 images, integer targets, a swappable transform."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import torch
from torch.utils.data import Dataset

Transform = Callable[[torch.Tensor], object]

STATS_SAMPLE_SIZE = 2_000
STATS_SEED = 0  # fixed, so the normalisation of a dataset is the same in every run and every evaluation


class ImageDataset(Dataset, ABC):
    """Items are `(transform(image), target)`: image uint8 (C, H, W) before the transform, target an int.

    Subclasses set `classes` (list of names), `targets` (LongTensor (N,); -1 for unlabelled images)
    and `transform`, and implement `load_image`, `channels` and `__len__`.
    """

    classes: list[str]
    targets: torch.Tensor
    transform: Transform | None

    @abstractmethod
    def load_image(self, index: int) -> tuple[torch.Tensor, int]:
        """The untransformed uint8 image (C, H, W) of item `index` and its target."""

    def load_readable(self, index: int) -> tuple[torch.Tensor | None, int]:
        """Item `index` itself, with None for the image when it cannot be read; never another item.

        Images held in memory can always be read; datasets that decode files override this.
        """
        return self.load_image(index)

    def class_location(self, class_index: int) -> str:
        """Where the images of a class come from, for messages (an image folder names the class folder)."""
        return f"class {self.classes[class_index]!r}"

    @property
    @abstractmethod
    def channels(self) -> int:
        """Channels of every image: 1 (grayscale) or 3 (colour)."""

    @property
    def fixed_size(self) -> int | None:
        """The common height = width when every image has the same square size, else None."""
        return None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image, target = self.load_image(index)
        return (self.transform(image) if self.transform is not None else image), target

    def with_transform(self, transform: Transform | None) -> ImageDataset:
        """The same images and targets (shared, not copied) with another per-item transform."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def evaluation_items(self, transform: Transform) -> EvaluationItems:
        """Items `(transform(image), target, readable)`, each image its own (see `EvaluationItems`)."""
        return EvaluationItems(self, transform)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels scaled to [0, 1], from a fixed, seeded sample of images.

        At most `STATS_SAMPLE_SIZE` images are decoded, so this stays quick on ImageNet-sized folders.
        """
        count = min(len(self), STATS_SAMPLE_SIZE)
        generator = torch.Generator().manual_seed(STATS_SEED)
        sample = torch.randperm(len(self), generator=generator)[:count].sort().values
        return stats_from_histogram(pixel_histogram(self.load_image(int(index))[0] for index in sample))


class EvaluationItems(Dataset):
    """Items `(transform(image), target, readable)` of an image dataset, for evaluation.

    Training lets the next readable image stand in for an unreadable one; evaluation must not, or it would
    count one sample (and its label) twice. Here an unreadable image gives a blank image and readable
    False, so that feature extraction drops it, also when several processes share the items.

    Attributes:
        images: the dataset; `classes`, `num_classes` and `targets` are its own.
    """

    def __init__(self, images: ImageDataset, transform: Transform):
        self.images = images
        self.transform = transform

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    @property
    def targets(self) -> torch.Tensor:
        return self.images.targets

    def class_location(self, class_index: int) -> str:
        return self.images.class_location(class_index)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[object, int, bool]:
        image, target = self.images.load_readable(index)
        readable = image is not None
        if not readable:
            # The evaluation transform resizes every image, so a 1×1 blank batches with the others.
            image = torch.zeros(self.images.channels, 1, 1, dtype=torch.uint8)
        return self.transform(image), target, readable

    def __getitems__(self, indices: list[int]) -> list[tuple[object, int, bool]]:
        """The items of a DataLoader batch: images of one size go through the transform as one batch
        (the same arithmetic per image, at a fraction of the per-call cost of small images)."""
        loaded = [self.images.load_readable(index) for index in indices]
        images = [image for image, _ in loaded]
        if any(image is None for image in images) or len({tuple(image.shape) for image in images}) != 1:
            return [self[index] for index in indices]
        transformed = self.transform(torch.stack(images))
        return [(image, target, True) for image, (_, target) in zip(transformed, loaded, strict=True)]


def pixel_histogram(images: Iterable[torch.Tensor]) -> torch.Tensor:
    """Counts (C, 256) of each uint8 value per channel over images (C, H, W) or batches (N, C, H, W)."""
    counts = None
    for image in images:
        channels = image.shape[-3]
        per_channel = image.transpose(0, -3).reshape(channels, -1)
        image_counts = torch.stack([torch.bincount(values, minlength=256) for values in per_channel])
        counts = image_counts if counts is None else counts + image_counts
    if counts is None:
        raise ValueError("no images to compute channel statistics from")
    return counts


def stats_from_histogram(counts: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and (population) std per channel, in [0, 1] units, from value counts (C, 256)."""
    counts = counts.double()
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * levels).sum(dim=1) / total
    variance = (counts * levels**2).sum(dim=1) / total - mean**2
    return mean.tolist(), variance.clamp_min(0).sqrt().tolist()
