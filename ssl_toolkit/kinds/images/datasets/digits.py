"""scikit-learn's handwritten digits (1,797 images of 8x8 px): real data that ships with scikit-learn."""

from __future__ import annotations

import torch

from ssl_toolkit.kinds.images.datasets.image_tensor_dataset import ImageTensorDataset

SPLITS = ("train", "test")
TEST_FRACTION = 0.25
SPLIT_SEED = 0  # fixed, so every run and every evaluation sees the same train/test split


def load_digits_dataset(split: str, root: str | None = None) -> ImageTensorDataset:
    """The train (1,347 images) or test (450 images) split, stratified; `root` is unused."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; spread them over 0..255 like any other 8-bit image.
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    targets = torch.from_numpy(digits.target)
    train_index, test_index = train_test_split(
        torch.arange(len(targets)).numpy(),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )
    index = torch.from_numpy(train_index if split == "train" else test_index)
    return ImageTensorDataset(images[index], targets[index], [str(c) for c in range(10)])
