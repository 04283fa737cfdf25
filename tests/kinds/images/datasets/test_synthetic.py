"""synthetic: deterministic, balanced, fast, and its classes really are different shapes."""

from __future__ import annotations

import time

import pytest
import torch

from ssl_toolkit.kinds.images.datasets import create_dataset
from ssl_toolkit.kinds.images.datasets.synthetic import SHAPES


def _foreground_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Translation-invariant shape features (N, S*S): |FFT| of each pixel's distance to the median colour."""
    pixels = images.float() / 255
    background = pixels.flatten(2).median(dim=2).values[:, :, None, None]
    foreground = (pixels - background).abs().sum(dim=1)
    return torch.fft.fft2(foreground).abs().flatten(1)


def test_defaults_and_determinism():
    train = create_dataset("synthetic")
    assert (
        train.images.shape == (5_000, 3, 32, 32) and len(create_dataset("synthetic", split="test")) == 1_000
    )
    assert train.classes == list(SHAPES)[:10] and train.channels == 3 and train.fixed_size == 32
    again = create_dataset("synthetic")
    assert torch.equal(train.images, again.images) and torch.equal(train.targets, again.targets)
    other_seed = create_dataset("synthetic", num_images=100, seed=1)
    assert not torch.equal(other_seed.images, train.images[:100])
    test = create_dataset("synthetic", split="test", num_images=100)
    assert not torch.equal(test.images, create_dataset("synthetic", num_images=100).images)


def test_generation_is_fast():
    started = time.perf_counter()
    create_dataset("synthetic", num_images=5_000, image_size=32)
    assert time.perf_counter() - started < 2.5


def test_classes_are_balanced_and_options_apply():
    dataset = create_dataset("synthetic", num_classes=len(SHAPES), image_size=20, num_images=143)
    counts = torch.bincount(dataset.targets, minlength=len(SHAPES))
    assert counts.max() - counts.min() <= 1 and dataset.images.shape == (143, 3, 20, 20)
    with pytest.raises(ValueError, match="num_classes=15 must be between 2 and 14"):
        create_dataset("synthetic", num_classes=15)


def test_shapes_differ_per_class():
    train = create_dataset("synthetic", num_images=1_000)
    test = create_dataset("synthetic", split="test", num_images=300)
    train_features, test_features = _foreground_spectrum(train.images), _foreground_spectrum(test.images)
    centroids = torch.stack([train_features[train.targets == c].mean(0) for c in range(train.num_classes)])
    accuracy = (torch.cdist(test_features, centroids).argmin(1) == test.targets).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1
