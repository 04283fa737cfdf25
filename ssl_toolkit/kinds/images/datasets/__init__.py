"""Dataset registry: `create_dataset(name, root, split)` returns an `ImageDataset`.

Every dataset yields `(image, target)` with image uint8 (C, H, W) before its transform and target an int,
and exposes `classes`, `num_classes`, `channels`, `targets` (N,), `fixed_size`, `channel_stats()`,
`with_transform(transform)` and, for evaluation, `evaluation_items(transform)`, whose items also say
whether their image could be read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssl_toolkit.kinds.images.datasets import digits, imagefolder, mnist, synthetic, torchvision_datasets
from ssl_toolkit.kinds.images.datasets.errors import (
    DatasetNotFoundError,
    NoReadableImagesError,
    UnreadableImageWarning,
)
from ssl_toolkit.kinds.images.datasets.image_dataset import ImageDataset
from ssl_toolkit.kinds.images.datasets.image_tensor_dataset import ImageTensorDataset
from ssl_toolkit.kinds.images.datasets.imagefolder import ImageFolderDataset


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one registered dataset: `load(split, root, **keywords)` and the splits it has."""

    load: Callable[..., ImageDataset]
    splits: tuple[str, ...]

    def options(self) -> list[str]:
        """The keyword arguments `load` takes besides split and root."""
        parameters = inspect.signature(self.load).parameters
        return [name for name in parameters if name not in ("split", "root")]


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(digits.load_digits_dataset, digits.SPLITS),
    "mnist": DatasetEntry(mnist.load_mnist, mnist.SPLITS),
    "fashion_mnist": DatasetEntry(mnist.load_fashion_mnist, mnist.SPLITS),
    "cifar10": DatasetEntry(torchvision_datasets.load_cifar10, torchvision_datasets.CIFAR_SPLITS),
    "cifar100": DatasetEntry(torchvision_datasets.load_cifar100, torchvision_datasets.CIFAR_SPLITS),
    "stl10": DatasetEntry(torchvision_datasets.load_stl10, torchvision_datasets.STL10_SPLITS),
    "imagefolder": DatasetEntry(imagefolder.load_imagefolder, imagefolder.SPLITS),
    "synthetic": DatasetEntry(synthetic.load_synthetic, synthetic.SPLITS),
}


def create_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    *,
    download: bool = False,
    unreadable_log: str | Path | None = None,
    **options,
) -> ImageDataset:
    """Load split `split` of the dataset registered as `name`.

    Args:
        name: A key of `DATASETS`.
        root: Where the dataset's files are; None for each dataset's default location.
        split: One of `DATASETS[name].splits` (e.g. train, test; stl10 also unlabeled, train+unlabeled).
        download: Let torchvision download cifar10/cifar100/stl10/mnist/fashion_mnist when missing;
            ignored by datasets that never download.
        unreadable_log: imagefolder only (ignored elsewhere): file that collects unreadable image paths.
        **options: The dataset's own keyword arguments, e.g. `image_size` for synthetic, `channels` for
            imagefolder; see `DATASETS[name].options()`.

    Raises:
        ValueError: Unknown name, split or option.
        DatasetNotFoundError: The files are missing; the message names the paths and how to get them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    entry = DATASETS[name]
    if split not in entry.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(entry.splits)}")
    accepted = entry.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ValueError(f"dataset {name!r} takes no option {', '.join(unknown)}; its options: {valid}")
    # download and unreadable_log go only to the loaders that use them, so a config can always set them.
    common = {"download": download, "unreadable_log": unreadable_log}
    keywords = {key: value for key, value in common.items() if key in accepted} | options
    return entry.load(split=split, root=None if root is None else str(root), **keywords)


__all__ = [
    "DATASETS",
    "DatasetEntry",
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageTensorDataset",
    "NoReadableImagesError",
    "UnreadableImageWarning",
    "create_dataset",
]
