"""`data.fraction`: pretraining reads a seeded, stratified share of its split; evaluation reads all of it."""

from __future__ import annotations

import pytest
import torch
from pretraining_runs import pretrain_tiny

from ssl_toolkit.config import load_config
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.kinds.fraction import stratified_indices, stratum_size
from ssl_toolkit.kinds.images.datasets import ImageTensorDataset
from ssl_toolkit.kinds.images.datasets.subset import ImageSubset

DIGITS_TRAIN, DIGITS_TEST = 1347, 450


def _kind(*overrides):
    return create_data_kind(load_config("quickstart", list(overrides)))


def _class_counts(targets: torch.Tensor) -> dict[int, int]:
    values, counts = torch.unique(targets, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize(
    ("size", "fraction", "kept"),
    [
        (10, 0.2, 2),
        (10, 0.7, 7),  # 0.7 × 10 is 7.000000000000001 in floating point: rounded, not ceiled
        (133, 0.5, 67),  # halves round up
        (3, 0.5, 2),
        (5, 0.5, 3),  # not Python's round, which gives 2
        (4, 0.1, 1),  # at least 1: no class present in the split disappears
        (1, 0.01, 1),
        (10, 1.0, 10),
        (0, 0.5, 0),
    ],
)
def test_each_stratum_keeps_its_share_rounded_half_up_and_at_least_one(size, fraction, kept):
    assert stratum_size(size, fraction) == kept


def test_the_indices_are_stratified_with_unlabelled_samples_as_one_stratum():
    targets = torch.tensor([2] * 30 + [0] * 10 + [-1] * 20 + [1] * 3)[torch.randperm(63)]
    indices = stratified_indices(targets, 0.2, seed=0)
    assert torch.equal(indices, indices.unique())  # sorted, no index twice
    assert _class_counts(targets[indices]) == {-1: 4, 0: 2, 1: 1, 2: 6}


def test_the_indices_are_decided_by_the_seed_alone():
    targets = torch.arange(1000) % 7
    first = stratified_indices(targets, 0.3, seed=5)
    torch.manual_seed(123)  # the global random state (the initial weights') plays no part
    assert torch.equal(stratified_indices(targets, 0.3, seed=5), first)
    assert not torch.equal(stratified_indices(targets, 0.3, seed=6), first)


def test_the_global_random_state_is_left_as_it_was():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    stratified_indices(torch.arange(100) % 3, 0.5, seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        stratified_indices(torch.arange(10), fraction, seed=0)


def test_the_pretraining_dataset_is_the_stratified_share_of_every_class():
    kind = _kind("data.fraction=0.2", "seed=3")
    split, subset = kind.pretraining_split(), kind.pretraining_dataset()
    assert isinstance(subset, ImageSubset) and len(split) == DIGITS_TRAIN
    full_counts = _class_counts(split.targets)
    assert _class_counts(subset.targets) == {c: stratum_size(n, 0.2) for c, n in full_counts.items()}
    assert len(subset) == sum(stratum_size(n, 0.2) for n in full_counts.values())
    # The classes keep their indices, and each item is the item of the split it stands for.
    assert subset.num_classes == split.num_classes == 10 and subset.classes == split.classes
    for position in (0, len(subset) // 2, len(subset) - 1):
        image, target = subset[position]
        source_image, source_target = split[int(subset.indices[position])]
        assert torch.equal(image, source_image) and target == source_target == int(subset.targets[position])
    # Another process (another kind built from the same config) reads the same items.
    assert torch.equal(_kind("data.fraction=0.2", "seed=3").pretraining_dataset().indices, subset.indices)
    assert not torch.equal(_kind("data.fraction=0.2", "seed=4").pretraining_dataset().indices, subset.indices)


def test_evaluation_and_the_normalisation_use_the_whole_splits():
    kind, whole = _kind("data.fraction=0.1"), _kind()
    assert len(kind.evaluation_dataset("train")) == DIGITS_TRAIN
    assert len(kind.evaluation_dataset("test")) == DIGITS_TEST
    assert kind.preprocessing() == whole.preprocessing()


def test_a_fraction_of_one_is_the_split_itself():
    kind = _kind("data.fraction=1")
    assert kind.pretraining_dataset() is kind.pretraining_split()


def test_the_subset_keeps_the_views_transform_and_the_image_properties():
    kind = _kind("data.fraction=0.5")
    subset = kind.pretraining_dataset()
    flipped = subset.with_transform(lambda image: image.flip(-1))
    assert flipped.transform is not None and subset.transform is None
    assert torch.equal(flipped[3][0], subset[3][0].flip(-1))
    assert subset.channels == 1 and subset.fixed_size == 8
    assert kind.training_data(subset, torch.device("cpu")).dataset[0][0][0].shape == (1, 16, 16)


class _OneUnreadable(ImageTensorDataset):
    def load_readable(self, index):
        return (None, int(self.targets[index])) if index == 3 else super().load_readable(index)


def test_an_unreadable_image_is_replaced_by_the_next_item_of_the_subset():
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1)
    source = _OneUnreadable(images, torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]), ["a", "b"])
    subset = ImageSubset(source, torch.tensor([1, 3, 6]))
    assert int(subset[1][0]) == 6  # item 6 of the subset, not item 4 of the whole dataset
    assert subset.load_readable(1)[0] is None
    with pytest.raises(IndexError):
        subset[3]


def test_a_tiny_run_pretrains_on_half_and_evaluates_on_all(tmp_path, capsys, monkeypatch):
    from ssl_toolkit.eval.knn import run_knn
    from ssl_toolkit.training import online_knn as online

    seen = {}
    real_init = online.OnlineKNN.__init__

    def spy(self, backbone, bank, queries, *args, **kwargs):
        seen["bank"], seen["queries"] = len(bank), len(queries)
        real_init(self, backbone, bank, queries, *args, **kwargs)

    monkeypatch.setattr(online.OnlineKNN, "__init__", spy)
    run_dir = pretrain_tiny(tmp_path, "half", "data.fraction=0.5", "log.knn_every=2")
    half = sum(stratum_size(n, 0.5) for n in _class_counts(_kind().pretraining_split().targets).values())
    assert abs(half - DIGITS_TRAIN / 2) <= 5
    assert f"on digits: {half} samples," in capsys.readouterr().out
    assert seen == {"bank": DIGITS_TRAIN, "queries": DIGITS_TEST}  # the online kNN: whole splits
    knn = run_knn(run_dir, k=5)
    assert (knn["num_train"], knn["num_test"]) == (DIGITS_TRAIN, DIGITS_TEST)


def test_a_resume_may_not_change_the_fraction_unless_allowed():
    from ssl_toolkit.training.resume_rules import changes_trajectory

    assert changes_trajectory("data.fraction")  # other samples: another run
