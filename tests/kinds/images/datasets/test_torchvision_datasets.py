"""cifar10, cifar100 and stl10 without their files: a DatasetNotFoundError, never a download attempt."""

from __future__ import annotations

import pytest
import torchvision.datasets.utils

from ssl_toolkit.kinds.images.datasets import DatasetNotFoundError, create_dataset


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10, torchvision.datasets.utils):
        monkeypatch.setattr(module, "download_and_extract_archive", refuse)


@pytest.mark.parametrize(
    ("name", "split", "folder"),
    [
        ("cifar10", "train", "cifar-10-batches-py"),
        ("cifar100", "test", "cifar-100-python"),
        ("stl10", "train+unlabeled", "stl10_binary"),
    ],
)
def test_missing_without_download_names_the_folder_and_the_fix(tmp_path, name, split, folder):
    with pytest.raises(DatasetNotFoundError) as caught:
        create_dataset(name, tmp_path, split)
    message = str(caught.value)
    assert f"dataset {name!r} not found" in message and str(tmp_path / folder) in message
    assert "data.download=true" in message and "data.root" in message
    assert caught.value.__suppress_context__  # no traceback from inside torchvision
    assert list(tmp_path.iterdir()) == []


def test_default_root_is_data_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "data" / "cifar-10-batches-py")):
        create_dataset("cifar10")
