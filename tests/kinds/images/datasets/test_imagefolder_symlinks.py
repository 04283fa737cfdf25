"""imagefolder and directory symlinks: each followed once at most, never into another class or a loop."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from data_files import write_image_folder

from ssl_toolkit.kinds.images.datasets import create_dataset
from ssl_toolkit.kinds.images.datasets.errors import SkippedFolderLinkWarning


def _listing(dataset) -> list[tuple[str, str]]:
    """(real path, class name) of every item."""
    return [
        (os.path.realpath(dataset.path(i)), dataset.classes[int(dataset.targets[i])])
        for i in range(len(dataset))
    ]


def _real_class(path: str, root) -> str:
    """The class folder an image file really lives in."""
    return os.path.relpath(path, os.path.realpath(root)).split(os.sep)[1]


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images", colour=True, split_names=("train", "test"), per_class=2)


def _assert_each_image_once_under_its_class(dataset, root, expected_count):
    listing = _listing(dataset)
    assert len(listing) == expected_count
    assert not [path for path, count in Counter(path for path, _ in listing).items() if count > 1]
    assert all(_real_class(path, root) == name for path, name in listing)


def test_a_link_to_its_own_class_folder_is_not_a_loop(folder):
    os.symlink(".", folder / "train" / "apple" / "again")  # apple/again → apple
    with pytest.warns(SkippedFolderLinkWarning, match="again"):
        dataset = create_dataset("imagefolder", folder, "train")
    _assert_each_image_once_under_its_class(dataset, folder, 2 * 3 + 4)


def test_a_link_up_to_the_split_folder_does_not_relabel_the_other_classes(folder):
    os.symlink("..", folder / "train" / "banana" / "everything")  # banana/everything → train
    os.symlink(os.path.realpath(folder), folder / "train" / "cherry" / "root")  # absolute, to the root
    with pytest.warns(SkippedFolderLinkWarning) as caught:
        dataset = create_dataset("imagefolder", folder, "train")
    links = [str(w.message) for w in caught if issubclass(w.category, SkippedFolderLinkWarning)]
    skipped = sorted(message.split(" → ")[0].rsplit("/", 1)[1] for message in links)
    assert skipped == ["everything", "root"]
    _assert_each_image_once_under_its_class(dataset, folder, 2 * 3 + 4)


def test_a_link_into_another_class_is_not_followed(folder):
    os.symlink("../cherry", folder / "train" / "apple" / "cherries")
    with pytest.warns(SkippedFolderLinkWarning, match="cherries"):
        dataset = create_dataset("imagefolder", folder, "train")
    _assert_each_image_once_under_its_class(dataset, folder, 2 * 3 + 4)


def test_two_nested_folders_linking_to_each_other_end(folder):
    outer = folder / "train" / "apple" / "outer"
    outer.mkdir()
    os.symlink("..", outer / "up")  # outer/up → apple, which holds outer: a two-step loop
    with pytest.warns(SkippedFolderLinkWarning, match="up"):
        dataset = create_dataset("imagefolder", folder, "train")
    _assert_each_image_once_under_its_class(dataset, folder, 2 * 3 + 4)


def test_a_linked_folder_outside_the_dataset_is_followed_once(folder, tmp_path):
    extra = tmp_path / "extra_apples"
    extra.mkdir()
    (folder / "train" / "apple" / "img_0.png").rename(extra / "moved.png")
    os.symlink(extra, folder / "train" / "apple" / "more")
    os.symlink(extra, folder / "train" / "apple" / "same_again")
    with pytest.warns(SkippedFolderLinkWarning, match="same_again"):
        dataset = create_dataset("imagefolder", folder, "train")
    paths = [os.path.realpath(dataset.path(i)) for i in range(len(dataset))]
    assert paths.count(str((extra / "moved.png").resolve())) == 1 and len(paths) == 2 * 3 + 4
    assert dataset.path(0).endswith("apple/img_1.jpg") and "more" in dataset.path(1)
