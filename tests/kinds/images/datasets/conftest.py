"""Fixtures: small on-disk datasets written into tmp_path."""

from __future__ import annotations

import pytest
from data_files import write_image_folder, write_mnist_split


@pytest.fixture
def mnist_root(tmp_path):
    """An MNIST root with gzipped train files (30 × 28×28) and plain test files (20 × 28×28)."""
    write_mnist_split(tmp_path, "train", 30, (28, 28), compress=True, seed=0)
    write_mnist_split(tmp_path, "t10k", 20, (28, 28), compress=False, seed=1)
    return tmp_path


@pytest.fixture
def colour_folder(tmp_path):
    return write_image_folder(tmp_path / "colour", colour=True)


@pytest.fixture
def gray_folder(tmp_path):
    return write_image_folder(tmp_path / "gray", colour=False)
