"""MNIST and Fashion-MNIST from IDX files: the parser, both layouts, and the Debian package's real data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from data_files import write_idx, write_mnist_split

from ssl_toolkit.kinds.images.datasets import DatasetNotFoundError, create_dataset
from ssl_toolkit.kinds.images.datasets.mnist import FASHION_MNIST_CLASSES, read_idx


@pytest.fixture(scope="module")
def fashion_mnist():
    """Both splits from /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist).

    Not skipped when missing: `make test` installs the package, so its absence is a failure.
    """
    return create_dataset("fashion_mnist", split="train"), create_dataset("fashion_mnist", split="test")


def test_fashion_mnist_from_the_debian_package(fashion_mnist):
    train, test = fashion_mnist
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.classes == list(FASHION_MNIST_CLASSES) and train.classes[0] == "T-shirt/top"
    assert train.channels == 1 and train.fixed_size == 28 and train.num_classes == 10
    # Fashion-MNIST is exactly balanced: 6,000 train and 1,000 test images per class.
    assert torch.bincount(train.targets, minlength=10).tolist() == [6_000] * 10
    assert torch.bincount(test.targets, minlength=10).tolist() == [1_000] * 10
    mean, std = train.channel_stats()
    assert mean[0] == pytest.approx(0.286, abs=0.002) and std[0] == pytest.approx(0.353, abs=0.002)


def test_mnist_reads_gzipped_and_plain_idx_files(mnist_root):
    train = create_dataset("mnist", mnist_root, "train")
    test = create_dataset("mnist", mnist_root, "test")
    assert (len(train), len(test)) == (30, 20)
    assert train.images.shape == (30, 1, 28, 28) and test.fixed_size == 28
    expected_images, expected_labels = write_mnist_split(mnist_root / "check", "t10k", 20, (28, 28), False, 1)
    assert torch.equal(test.images[:, 0], torch.from_numpy(expected_images))
    assert test.targets.tolist() == expected_labels.tolist()
    assert train.classes == [str(digit) for digit in range(10)]


def test_mnist_reads_torchvision_layout_and_non_square_images(tmp_path):
    write_mnist_split(tmp_path / "MNIST" / "raw", "train", 12, (6, 5), compress=True, seed=2)
    dataset = create_dataset("mnist", tmp_path, "train")
    assert dataset.images.shape == (12, 1, 6, 5)
    assert dataset.fixed_size is None


def test_fashion_mnist_reads_a_given_root_in_torchvision_layout(tmp_path):
    write_mnist_split(tmp_path / "FashionMNIST" / "raw", "t10k", 10, (28, 28), compress=False, seed=3)
    dataset = create_dataset("fashion_mnist", tmp_path, "test")
    assert len(dataset) == 10 and dataset.classes[-1] == "Ankle boot"


def test_read_idx_keeps_dtype_and_shape(tmp_path):
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    path = write_idx(tmp_path / "values-idx3-int", values, compress=True)
    parsed = read_idx(path)
    assert parsed.dtype == np.int32 and np.array_equal(parsed, values)


def test_read_idx_rejects_bad_files_naming_them(tmp_path):
    not_idx = tmp_path / "bad-magic"
    not_idx.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad-magic is not an IDX file"):
        read_idx(not_idx)
    truncated = write_idx(tmp_path / "short", np.zeros((4, 3), dtype=np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-2])
    with pytest.raises(ValueError, match="short holds 10 bytes of data"):
        read_idx(truncated)
    broken_gzip = tmp_path / "broken.gz"
    broken_gzip.write_bytes(gzip.compress(b"\x00" * 40)[:15])
    with pytest.raises(ValueError, match=r"cannot read IDX file .*broken\.gz"):
        read_idx(broken_gzip)


def test_missing_idx_files_name_every_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        create_dataset("fashion_mnist", tmp_path / "empty", "train")
    message = str(caught.value)
    assert f"{tmp_path / 'empty'}/train-images-idx3-ubyte[.gz]" in message
    assert f"{tmp_path / 'empty'}/FashionMNIST/raw/train-labels-idx1-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message
    assert caught.value.__context__ is None  # raised directly, not from inside another error

    with pytest.raises(DatasetNotFoundError, match=r"(?s)MNIST/raw/t10k-images.*data\.download=true"):
        create_dataset("mnist", tmp_path, "test")
