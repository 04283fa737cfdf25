"""Some items of an image dataset as an image dataset: what pretraining reads with `data.fraction`."""

from __future__ import annotations

import torch

from ssl_toolkit.kinds.images.datasets.errors import NoReadableImagesError
from ssl_toolkit.kinds.images.datasets.image_dataset import ImageDataset


class ImageSubset(ImageDataset):
    """The items `indices` of an image dataset, in that order, with its classes and their own targets.

    `num_classes` and `classes` stay those of the whole dataset, so class indices keep their meaning.
    An unreadable image is replaced by the next readable item of the subset, never by one outside it.
    """

    def __init__(self, source: ImageDataset, indices: torch.Tensor):
        self.source = source
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.classes = source.classes
        self.targets = source.targets[self.indices]
        self.transform = source.transform

    @property
    def channels(self) -> int:
        return self.source.channels

    @property
    def fixed_size(self) -> int | None:
        return self.source.fixed_size

    def class_location(self, class_index: int) -> str:
        return self.source.class_location(class_index)

    def __len__(self) -> int:
        return len(self.indices)

    def load_readable(self, index: int) -> tuple[torch.Tensor | None, int]:
        return self.source.load_readable(int(self.indices[index]))

    def load_image(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        for offset in range(len(self)):
            image, target = self.load_readable((index + offset) % len(self))
            if image is not None:
                return image, target
        raise NoReadableImagesError(f"none of the {len(self)} images of the data.fraction subset can be read")
