"""imagefolder channels: one decision for the whole dataset (every split), `data.channels` forcing it, and
palette and 16-bit files decoded to the right 8-bit pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.kinds.images.datasets import create_dataset
from ssl_toolkit.kinds.images.datasets.imagefolder import decode_image_file

RED, GREEN = (200, 0, 0), (10, 200, 30)


def _folder(root, colour_files, gray_files, splits=("train", "test")):
    """Two classes per split; `colour_files` / `gray_files` name (split, class, file name) to write."""
    for split in splits:
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
    for split, name, file_name in colour_files:
        Image.new("RGB", (9, 9), RED).save(root / split / name / file_name)
    for split, name, file_name in gray_files:
        Image.new("L", (9, 9), 90).save(root / split / name / file_name)
    return root


def _palette_image(colour=GREEN) -> Image.Image:
    image = Image.new("P", (9, 9), 1)
    image.putpalette([0, 0, 0, *colour] + [0] * (256 * 3 - 6))
    return image


def test_a_grayscale_file_first_in_sort_order_keeps_a_colour_folder_in_colour(tmp_path):
    colour = [(split, name, f"img_{i}.png") for split in ("train", "test") for name in "ab" for i in range(3)]
    root = _folder(tmp_path, colour, [("train", "a", "000_gray.png"), ("test", "a", "000_gray.png")])
    for split in ("train", "test"):
        dataset = create_dataset("imagefolder", root, split)
        assert dataset.channels == 3, split
        assert dataset[0][0].shape == (3, 9, 9) and dataset[0][0][:, 0, 0].tolist() == [90, 90, 90]


def test_colour_in_the_test_split_alone_makes_every_split_colour(tmp_path):
    gray = [(split, name, f"img_{i}.png") for split in ("train", "test") for name in "ab" for i in range(2)]
    root = _folder(tmp_path, [("test", "b", "img_9.png")], gray)
    assert create_dataset("imagefolder", root, "train").channels == 3
    assert create_dataset("imagefolder", root, "test").channels == 3


def test_colour_in_the_val_split_counts_when_test_is_absent(tmp_path):
    gray = [(split, name, "img_0.png") for split in ("train", "val") for name in "ab"]
    root = _folder(tmp_path, [("val", "a", "img_1.png")], gray, splits=("train", "val"))
    assert create_dataset("imagefolder", root, "train").channels == 3


def test_only_a_wholly_grayscale_dataset_is_one_channel(tmp_path):
    gray = [(split, name, f"img_{i}.png") for split in ("train", "test") for name in "ab" for i in range(2)]
    root = _folder(tmp_path, [], gray)
    Image.fromarray(np.full((9, 9), 40000, dtype=np.uint16)).save(root / "train" / "a" / "z_16bit.png")
    Image.new("LA", (9, 9), (70, 128)).save(root / "test" / "b" / "z_alpha.png")
    assert create_dataset("imagefolder", root, "train").channels == 1
    assert create_dataset("imagefolder", root, "test").channels == 1


def test_a_palette_image_counts_as_colour_and_decodes_to_its_palette_colours(tmp_path):
    gray = [(split, name, "img_0.png") for split in ("train", "test") for name in "ab"]
    root = _folder(tmp_path, [], gray)
    _palette_image().save(root / "train" / "b" / "z_palette.png")
    dataset = create_dataset("imagefolder", root, "train")
    assert dataset.channels == 3
    assert dataset[len(dataset) - 1][0][:, 0, 0].tolist() == list(GREEN)
    assert create_dataset("imagefolder", root, "test").channels == 3


@pytest.mark.parametrize("suffix", [".png", ".gif", ".bmp", ".tif"])
def test_a_palette_file_decodes_to_colour_with_its_natural_channels(tmp_path, suffix):
    path = tmp_path / f"palette{suffix}"
    _palette_image().save(path)
    image = decode_image_file(path)  # natural channels: colour, not the palette indices
    assert image.shape == (3, 9, 9) and image[:, 0, 0].tolist() == list(GREEN)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])
def test_16_bit_files_scale_to_8_bit(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(np.array([[0, 257 * 100, 40000, 65535]], dtype=np.uint16)).save(path)
    for channels in (None, 1, 3):
        image = decode_image_file(path, channels)
        assert image.shape[0] == (channels or 1)
        assert image[0, 0].tolist() == [0, 100, 156, 255], (suffix, channels)  # value / 257, not clipped


def _image_kind(root, *overrides):
    config = load_config(None, ["data.name=imagefolder", f"data.root={root}", *overrides])
    return create_data_kind(config)


def test_data_channels_forces_the_channel_count(tmp_path):
    colour = [(split, name, "img_0.png") for split in ("train", "test") for name in "ab"]
    root = _folder(tmp_path, colour, [("train", "a", "img_1.png")])
    assert _image_kind(root).dataset("train").channels == 3
    kind = _image_kind(root, "data.channels=1")
    assert kind.dataset("train").channels == 1 and kind.dataset("test").channels == 1
    assert kind.preprocessing()["channels"] == 1 and len(kind.preprocessing()["mean"]) == 1
    assert kind.evaluation_dataset("test")[0][0].shape[0] == 1


def test_data_channels_on_a_dataset_without_the_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.channels.*imagefolder"):
        create_data_kind(load_config(None, ["data.name=digits", "data.channels=3"])).dataset("train")
