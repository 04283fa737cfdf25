"""CIFAR-10, CIFAR-100 and STL-10 through torchvision.datasets, held in memory as one uint8 tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.kinds.images.datasets.errors import DatasetNotFoundError
from ssl_toolkit.kinds.images.datasets.image_tensor_dataset import ImageTensorDataset

DEFAULT_ROOT = "data"  # relative to the working directory, like torchvision's own examples
CIFAR_SPLITS = ("train", "test")
STL10_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def _how_to_get(folder: str) -> str:
    return (
        "set data.download=true on a machine with internet access (torchvision downloads it into data.root), "
        f"or set data.root to a folder that holds {folder}/."
    )


def _open_torchvision(dataset_name: str, folder: str, root: str | None, download: bool, build):
    """Call `build(root)`, turning torchvision's not-found and download errors into DatasetNotFoundError."""
    root_path = Path(root if root is not None else DEFAULT_ROOT)
    try:
        return build(str(root_path))
    except (RuntimeError, OSError) as error:  # not found / corrupted (RuntimeError), no network (URLError)
        reason = (
            f"download failed: {error}"
            if download
            else "missing or incomplete (torchvision checks every file's MD5); download is off"
        )
        raise DatasetNotFoundError(
            dataset_name, [(root_path / folder).resolve()], _how_to_get(folder), reason=reason
        ) from None


def _cifar(dataset_name: str, class_name: str, folder: str, split: str, root: str | None, download: bool):
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, class_name)
    source = _open_torchvision(
        dataset_name,
        folder,
        root,
        download,
        lambda path: dataset_class(path, train=split == "train", download=download),
    )
    # torchvision stores (N, H, W, C); the contract is (N, C, H, W).
    images = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()
    return ImageTensorDataset(images, torch.as_tensor(source.targets, dtype=torch.long), source.classes)


def load_cifar10(split: str, root: str | None = None, *, download: bool = False) -> ImageTensorDataset:
    """CIFAR-10: 50,000 train / 10,000 test images of 3×32×32 in 10 classes; `root` defaults to `data`."""
    return _cifar("cifar10", "CIFAR10", "cifar-10-batches-py", split, root, download)


def load_cifar100(split: str, root: str | None = None, *, download: bool = False) -> ImageTensorDataset:
    """CIFAR-100: 50,000 train / 10,000 test images of 3×32×32 in 100 fine classes."""
    return _cifar("cifar100", "CIFAR100", "cifar-100-python", split, root, download)


def load_stl10(split: str, root: str | None = None, *, download: bool = False) -> ImageTensorDataset:
    """STL-10: 5,000 train / 8,000 test labelled and 100,000 unlabeled images of 3×96×96 in 10 classes.

    Splits: train, test, unlabeled, train+unlabeled; unlabeled images have target -1.
    """
    import torchvision.datasets

    source = _open_torchvision(
        "stl10",
        "stl10_binary",
        root,
        download,
        lambda path: torchvision.datasets.STL10(path, split=split, download=download),
    )
    # STL-10's binary files are already (N, C, H, W) (stored column-major; torchvision transposes them).
    images = torch.from_numpy(np.ascontiguousarray(source.data))
    return ImageTensorDataset(images, torch.from_numpy(source.labels.astype(np.int64)), STL10_CLASSES)
