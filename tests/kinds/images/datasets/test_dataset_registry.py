"""The contract every registered dataset honours, checked on each one that needs no download."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from ssl_toolkit.kinds.images.datasets import DATASETS, DatasetNotFoundError, ImageDataset, create_dataset

EXPECTED_NAMES = {
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "stl10",
    "imagefolder",
    "synthetic",
}


@pytest.fixture(
    params=["digits", "fashion_mnist", "mnist", "imagefolder_colour", "imagefolder_gray", "synthetic"]
)
def dataset(request) -> ImageDataset:
    """The test split of each dataset available offline (test splits are the smaller ones)."""
    if request.param == "mnist":
        return create_dataset("mnist", request.getfixturevalue("mnist_root"), "test")
    if request.param.startswith("imagefolder"):
        fixture = "colour_folder" if request.param.endswith("colour") else "gray_folder"
        return create_dataset("imagefolder", request.getfixturevalue(fixture), "test")
    if request.param == "synthetic":
        return create_dataset("synthetic", split="test", num_images=50, image_size=16)
    return create_dataset(request.param, split="test")


def test_registry_names_every_dataset():
    assert set(DATASETS) == EXPECTED_NAMES
    assert DATASETS["stl10"].splits == ("train", "test", "unlabeled", "train+unlabeled")
    assert "image_size" in DATASETS["synthetic"].options()


def test_items_are_uint8_images_with_int_targets(dataset):
    assert len(dataset) == len(dataset.targets) > 0
    assert dataset.targets.dtype == torch.long and dataset.targets.shape == (len(dataset),)
    assert dataset.num_classes == len(dataset.classes)
    assert dataset.channels in (1, 3)
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        image, target = dataset[index]
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == dataset.channels
        assert isinstance(target, int) and target == int(dataset.targets[index])
        assert 0 <= target < dataset.num_classes
        if dataset.fixed_size is not None:
            assert image.shape[1:] == (dataset.fixed_size, dataset.fixed_size)


def test_with_transform_shares_data_and_leaves_the_original_alone(dataset):
    transformed = dataset.with_transform(lambda image: image.float().mean())
    value, target = transformed[0]
    image, original_target = dataset[0]
    assert value == pytest.approx(image.float().mean().item())
    assert target == original_target
    assert dataset.transform is None and transformed.targets is dataset.targets


def test_channel_stats_are_per_channel_and_in_unit_range(dataset):
    mean, std = dataset.channel_stats()
    assert len(mean) == len(std) == dataset.channels
    assert all(0.0 < m < 1.0 for m in mean) and all(0.0 < s < 0.6 for s in std)
    assert dataset.channel_stats() == (mean, std)  # deterministic


def test_channel_stats_match_the_pixels_of_an_in_memory_dataset():
    dataset = create_dataset("synthetic", split="test", num_images=40, image_size=8)
    pixels = dataset.images.transpose(0, 1).reshape(3, -1).double() / 255
    mean, std = dataset.channel_stats()
    assert mean == pytest.approx(pixels.mean(dim=1).tolist(), abs=1e-9)
    assert std == pytest.approx(pixels.std(dim=1, unbiased=False).tolist(), abs=1e-9)


def test_fixed_size_of_in_memory_and_folder_datasets(colour_folder):
    assert create_dataset("digits").fixed_size == 8
    assert create_dataset("synthetic", num_images=10, image_size=12).fixed_size == 12
    assert create_dataset("imagefolder", colour_folder).fixed_size is None  # sizes unknown without decoding


def test_a_data_loader_batches_fixed_size_datasets():
    dataset = create_dataset("digits", split="test")
    images, targets = next(iter(DataLoader(dataset, batch_size=16)))
    assert images.shape == (16, 1, 8, 8) and targets.dtype == torch.long


def test_unknown_name_split_and_option_are_value_errors():
    with pytest.raises(ValueError, match="valid names: cifar10, cifar100, digits"):
        create_dataset("imagenet")
    with pytest.raises(ValueError, match=r"valid splits: train, test, unlabeled, train\+unlabeled"):
        create_dataset("stl10", split="validation")
    with pytest.raises(ValueError, match=r"takes no option colour.*image_size"):
        create_dataset("synthetic", colour=True)


def test_download_and_unreadable_log_are_accepted_by_every_dataset(tmp_path):
    dataset = create_dataset("digits", download=True, unreadable_log=tmp_path / "unreadable.txt")
    assert len(dataset) == 1347


def test_not_found_error_pickles_with_its_message():
    error = DatasetNotFoundError("mnist", ["/nowhere/a", "/nowhere/b"], "set data.root", reason="gone")
    restored = pickle.loads(pickle.dumps(error))
    assert isinstance(restored, FileNotFoundError)
    assert str(restored) == str(error) and restored.searched == ["/nowhere/a", "/nowhere/b"]
