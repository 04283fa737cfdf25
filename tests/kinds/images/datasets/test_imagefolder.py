"""imagefolder: lazy decoding, channel handling, the test/val split folder, and unreadable files."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from data_files import corrupt_file, write_image_folder
from torch.utils.data import DataLoader

from ssl_toolkit.kinds.images.datasets import (
    DatasetNotFoundError,
    NoReadableImagesError,
    UnreadableImageWarning,
    create_dataset,
)


def _every_item(dataset) -> list[tuple[torch.Tensor, int]]:
    return list(dataset)  # the legacy iteration protocol: stops at IndexError


def test_colour_folder_lists_sorted_classes_and_decodes_every_format_to_rgb(colour_folder):
    dataset = create_dataset("imagefolder", colour_folder, "train")
    assert dataset.classes == ["apple", "banana", "cherry"] and dataset.channels == 3
    assert len(dataset) == 9 + 4  # 3 per class, plus gray, RGBA, palette and BMP; no .txt or hidden file
    assert torch.bincount(dataset.targets).tolist() == [3, 7, 3]
    paths = [dataset.path(i) for i in range(len(dataset))]
    assert paths == sorted(paths) and paths[0].endswith("apple/img_0.png")
    for image, _target in _every_item(dataset):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
    by_name = {"/".join(path.split("/")[-2:]): dataset[i][0] for i, path in enumerate(paths)}
    gray = by_name["banana/z_gray.png"]
    assert gray.shape == (3, 9, 9) and gray.unique().tolist() == [120]
    assert by_name["banana/z_rgba.png"][:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped
    assert by_name["banana/z_palette.png"][:, 0, 0].tolist() == [200, 0, 0]
    assert by_name["banana/z_bitmap.BMP"][:, 0, 0].tolist() == [0, 200, 0]  # decoded by PIL
    assert by_name["apple/img_0.png"].shape == (3, 10, 12)  # (C, H, W) from a 12×10 (W×H) file


def test_gray_folder_is_one_channel_unless_an_image_has_colour(gray_folder):
    assert create_dataset("imagefolder", gray_folder, "test").channels == 3  # its one colour file
    dataset = create_dataset("imagefolder", gray_folder, "test", channels=1)
    assert dataset.channels == 1
    images = {dataset.path(i).rsplit("/", 1)[1]: image for i, (image, _) in enumerate(_every_item(dataset))}
    assert all(image.shape[0] == 1 for image in images.values())
    assert images["z_16bit.png"].unique().tolist() == [round(40000 / 257)]  # 16-bit scaled to 8-bit
    assert images["z_colour.png"].shape == (1, 9, 9)
    for split in ("train", "test"):
        (gray_folder / split / "banana" / "z_colour.png").unlink()
    assert create_dataset("imagefolder", gray_folder, "test").channels == 1
    assert create_dataset("imagefolder", gray_folder, "test", channels=3)[0][0].shape[0] == 3


def test_channel_stats_sample_decoded_images(gray_folder):
    dataset = create_dataset("imagefolder", gray_folder, "train", channels=1)
    pixels = torch.cat([image.flatten() for image, _ in _every_item(dataset)]).double() / 255
    mean, std = dataset.channel_stats()
    assert mean[0] == pytest.approx(pixels.mean().item()) and std[0] == pytest.approx(
        pixels.std().item(), rel=1e-2
    )


def test_val_folder_is_the_test_split_when_test_is_absent(tmp_path):
    root = write_image_folder(tmp_path, colour=True, split_names=("train", "val"), per_class=1)
    dataset = create_dataset("imagefolder", root, "test")
    assert dataset.split_dir == str(root / "val") and len(dataset) == 3 + 4


def test_class_indices_come_from_train_when_test_lacks_a_class(colour_folder):
    for path in (colour_folder / "test" / "apple").iterdir():
        path.unlink()
    (colour_folder / "test" / "apple").rmdir()
    test = create_dataset("imagefolder", colour_folder, "test")
    assert test.classes == ["apple", "banana", "cherry"] and set(test.targets.tolist()) == {1, 2}


def test_a_corrupt_file_is_skipped_reported_logged_and_counted(colour_folder, tmp_path):
    bad = corrupt_file(colour_folder / "train" / "apple" / "img_1.png")
    log = tmp_path / "logs" / "unreadable.txt"
    dataset = create_dataset("imagefolder", colour_folder, "train", unreadable_log=log)
    bad_index = [dataset.path(i) for i in range(len(dataset))].index(str(bad))

    with pytest.warns(UnreadableImageWarning, match=str(bad)) as caught:
        items = _every_item(dataset)
    assert len(items) == len(dataset)
    unreadable_warnings = [w for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert len(unreadable_warnings) == 1
    # Its place is taken by the next readable image, with that image's target.
    assert torch.equal(items[bad_index][0], items[bad_index + 1][0])
    assert items[bad_index][1] == items[bad_index + 1][1]
    assert dataset.num_unreadable == 1 and list(dataset.unreadable) == [str(bad)]
    assert log.read_text().splitlines() == [str(bad)]

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadableImageWarning)  # warned once per file, not per epoch
        _every_item(dataset.with_transform(lambda image: image))
    assert log.read_text().splitlines() == [str(bad)]


def test_data_loader_workers_survive_and_append_to_the_log(colour_folder, tmp_path):
    bad = corrupt_file(colour_folder / "train" / "cherry" / "img_2.png")
    log = tmp_path / "unreadable.txt"
    dataset = create_dataset("imagefolder", colour_folder, "train", unreadable_log=log)
    resize = lambda image: image[:, :8, :8]  # noqa: E731 - every file is at least 9×9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        loader = DataLoader(dataset.with_transform(resize), batch_size=2, num_workers=2)
        batches = list(loader)
    assert sum(len(targets) for _, targets in batches) == len(dataset)
    assert set(log.read_text().splitlines()) == {str(bad)}
    assert pickle.loads(pickle.dumps(dataset)).path(0) == dataset.path(0)


def test_a_split_with_no_readable_image_is_a_clear_error(tmp_path):
    for index in range(2):
        folder = tmp_path / "train" / f"class_{index}"
        folder.mkdir(parents=True)
        corrupt_file(folder / "broken.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        with pytest.raises(NoReadableImagesError, match="none of the 2 images"):
            create_dataset("imagefolder", tmp_path, "train")
        dataset = create_dataset("imagefolder", tmp_path, "train", channels=3)
        with pytest.raises(NoReadableImagesError, match="none of the 2 images"):
            dataset[0]


def test_missing_folders_name_the_paths_and_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)data\.root is not set.*\{root\}/train/<class>"):
        create_dataset("imagefolder", None, "train")
    write_image_folder(tmp_path, colour=True, split_names=("train",), per_class=1)
    with pytest.raises(DatasetNotFoundError) as caught:
        create_dataset("imagefolder", tmp_path, "test")
    message = str(caught.value)
    assert str(tmp_path / "test") in message and str(tmp_path / "val") in message
    assert "{root}/test/<class>/<image>" in message
    empty = tmp_path / "empty"
    (empty / "train" / "some_class").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no image files in class folders"):
        create_dataset("imagefolder", empty, "train")
