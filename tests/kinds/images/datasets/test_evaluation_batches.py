"""Evaluation items fetched a batch at a time equal the items one at a time, readable flags included."""

from __future__ import annotations

import pytest
import torch
from data_files import corrupt_file, write_image_folder
from torch.utils.data import DataLoader

from ssl_toolkit.kinds.images.datasets import create_dataset
from ssl_toolkit.kinds.images.views.evaluation import eval_transform


def _one_at_a_time(items) -> list[tuple[torch.Tensor, int, bool]]:
    return [items[index] for index in range(len(items))]


def _batch_at_a_time(items, batch_size: int) -> list[tuple[torch.Tensor, int, bool]]:
    fetched = []
    for inputs, targets, readable in DataLoader(items, batch_size=batch_size):
        fetched += zip(inputs, targets.tolist(), readable.tolist(), strict=True)
    return fetched


def _assert_same(batched, single) -> None:
    assert len(batched) == len(single)
    for (image, target, readable), (expected, expected_target, expected_readable) in zip(
        batched, single, strict=True
    ):
        assert torch.equal(image, expected)
        assert (target, readable) == (expected_target, expected_readable)


def test_images_of_one_size_are_transformed_as_a_batch_with_the_same_result():
    digits = create_dataset("digits", split="test")  # 8×8 images, resized to 12 with antialiasing
    items = digits.evaluation_items(eval_transform(12, [0.3], [0.2]))
    batch = items.__getitems__(list(range(40)))
    assert [target for _, target, _ in batch] == digits.targets[:40].tolist()
    _assert_same(_batch_at_a_time(items, 64), _one_at_a_time(items))


@pytest.mark.filterwarnings("ignore::ssl_toolkit.kinds.images.datasets.UnreadableImageWarning")
def test_a_batch_with_other_sizes_or_an_unreadable_image_goes_one_at_a_time(tmp_path):
    root = write_image_folder(tmp_path / "folder", colour=True)
    corrupt_file(root / "train" / "apple" / "img_1.png")
    folder = create_dataset("imagefolder", root, "train")
    items = folder.evaluation_items(eval_transform(8, [0.5] * 3, [0.25] * 3))
    batched = _batch_at_a_time(items, 4)
    assert [readable for _, _, readable in batched].count(False) == 1
    _assert_same(batched, _one_at_a_time(items))
