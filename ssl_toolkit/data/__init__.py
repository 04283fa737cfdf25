"""Dataset registry: `create_dataset(name, root, split)` returns an ImageTensorDataset."""

from __future__ import annotations

from collections.abc import Callable

from ssl_toolkit.data.digits import load_digits_dataset
from ssl_toolkit.data.image_tensor_dataset import ImageTensorDataset

DATASETS: dict[str, Callable[..., ImageTensorDataset]] = {
    "digits": load_digits_dataset,
}
SPLITS = ("train", "test")


def create_dataset(name: str, root: str | None = None, split: str = "train") -> ImageTensorDataset:
    """Load split `train` or `test` of the dataset registered as `name`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return DATASETS[name](split=split, root=root)


__all__ = ["DATASETS", "ImageTensorDataset", "create_dataset"]
