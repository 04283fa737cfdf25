"""Event sequences in memory, the synthetic generator, CoLES slices and padded batches."""

from __future__ import annotations

import pytest
import torch

from ssl_toolkit.kinds.sequences.events import EventSequences, synthetic_events, train_test_clients
from ssl_toolkit.kinds.sequences.views import SliceViews, pad_events, slice_bounds
from ssl_toolkit.training.epoch_seeded import EpochSeededDataset


def test_synthetic_clients_are_seeded_balanced_and_within_their_lengths():
    data = synthetic_events(400, 4, min_length=20, max_length=60, seed=3)
    again = synthetic_events(400, 4, min_length=20, max_length=60, seed=3)
    other = synthetic_events(400, 4, min_length=20, max_length=60, seed=4)
    assert all(torch.equal(data.values[f], again.values[f]) for f in data.fields)
    assert not torch.equal(data.lengths, other.lengths)
    assert torch.bincount(data.targets).tolist() == [100] * 4
    assert int(data.lengths.min()) >= 20 and int(data.lengths.max()) <= 60
    events, target = data[7]
    assert set(events) == {"event_type", "amount", "dt"} and target == int(data.targets[7])
    assert len(events["amount"]) == int(data.lengths[7])
    assert events["event_type"].min() >= 1 and events["event_type"].max() < data.categorical["event_type"]
    assert torch.isfinite(data.values["amount"]).all() and (data.values["dt"] >= 0).all()


def test_classes_differ_in_their_transition_statistics():
    """A class shows in its bigram counts: a nearest-centroid classifier on them is far above chance."""
    data = synthetic_events(800, 4, max_length=200, seed=0)
    types = data.categorical["event_type"]
    counts = torch.zeros(len(data), types * types)
    for index in range(len(data)):
        codes = data[index][0]["event_type"]
        counts[index].index_add_(0, codes[:-1] * types + codes[1:], torch.ones(len(codes) - 1))
    frequencies = counts / counts.sum(1, keepdim=True)
    train, test = train_test_clients(data.targets, 0.25, seed=0)
    centroids = torch.stack([frequencies[train][data.targets[train] == k].mean(0) for k in range(4)])
    predicted = torch.cdist(frequencies[test], centroids).argmin(1)
    assert (predicted == data.targets[test]).float().mean() > 0.6  # chance: 0.25


def test_select_keeps_each_clients_events_in_order():
    data = synthetic_events(50, 2, min_length=3, max_length=9, seed=1)
    indices = torch.tensor([4, 0, 31])
    chosen = data.select(indices)
    assert len(chosen) == 3 and chosen.targets.tolist() == data.targets[indices].tolist()
    for position, index in enumerate(indices.tolist()):
        for name in data.fields:
            assert torch.equal(chosen[position][0][name], data[index][0][name])
    assert chosen.ids == [4, 0, 31]


def test_mismatched_storage_is_refused():
    offsets = torch.tensor([0, 2, 5])
    with pytest.raises(ValueError, match="field 'x' holds"):
        EventSequences({"x": torch.zeros(4)}, offsets, torch.tensor([0, 1]), ["a", "b"], {}, ["x"])
    with pytest.raises(ValueError, match="fields named"):
        EventSequences({"x": torch.zeros(5)}, offsets, torch.tensor([0, 1]), ["a", "b"], {}, ["y"])


def test_the_stratified_split_keeps_unlabelled_clients_for_pretraining():
    targets = torch.tensor([0] * 10 + [1] * 10 + [-1] * 5)
    train, test = train_test_clients(targets, 0.2, seed=0)
    assert sorted(train.tolist() + test.tolist()) == list(range(25))
    assert torch.bincount(targets[test]).tolist() == [2, 2]
    assert (targets[train] == -1).sum() == 5
    assert torch.equal(test, train_test_clients(targets, 0.2, seed=0)[1])


@pytest.mark.parametrize("length", [1, 4, 5, 6, 30, 200])
def test_slices_are_contiguous_within_bounds_or_the_whole_short_sequence(length):
    torch.manual_seed(length)
    for _ in range(50):
        bounds = slice_bounds(length, 5, cnt_min=5, cnt_max=20)
        assert len(bounds) == 5
        for start, stop in bounds:
            assert 0 <= start < stop <= length
            if length <= 5:
                assert (start, stop) == (0, length)
            else:
                assert 5 <= stop - start <= min(20, length)


def test_slices_cover_every_start_and_length_they_may_take():
    torch.manual_seed(0)
    seen = {bound for _ in range(2000) for bound in slice_bounds(8, 1, cnt_min=3, cnt_max=5)}
    assert seen == {(start, start + size) for size in (3, 4, 5) for start in range(8 - size + 1)}


def test_views_are_reproducible_from_seed_epoch_and_index():
    data = synthetic_events(20, 2, min_length=30, max_length=80, seed=0)
    views = SliceViews(split_count=4, cnt_min=10, cnt_max=25, numeric=("amount", "dt"), event_dropout=0.1,
                       numeric_noise=0.05)  # fmt: skip

    class Viewed(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            events, target = data[index]
            return views(events), target

    seeded = EpochSeededDataset(Viewed(), seed=7)
    first = seeded[3][0]
    torch.rand(5)  # whatever ran before must not matter
    assert all(torch.equal(a[name], b[name]) for a, b in zip(first, seeded[3][0], strict=True) for name in a)
    seeded.set_epoch(1)
    assert any(not torch.equal(a["amount"], b["amount"]) for a, b in zip(first, seeded[3][0], strict=True))
    assert len(first) == 4 and all(1 <= len(view["dt"]) <= 25 for view in first)


def test_a_view_without_dropout_or_noise_is_a_slice_of_the_client():
    data = synthetic_events(5, 2, min_length=40, max_length=40, seed=2)
    events, _ = data[1]
    torch.manual_seed(0)
    for view in SliceViews(split_count=3, cnt_min=5, cnt_max=12)(events):
        size = len(view["event_type"])
        windows = events["event_type"].unfold(0, size, 1)
        matches = (windows == view["event_type"]).all(1).nonzero().flatten().tolist()
        assert any(torch.equal(events["amount"][s : s + size], view["amount"]) for s in matches)


def test_view_settings_are_checked():
    with pytest.raises(ValueError, match="cnt_min"):
        SliceViews(split_count=2, cnt_min=10, cnt_max=5)
    with pytest.raises(ValueError, match="split_count"):
        SliceViews(split_count=0, cnt_min=1, cnt_max=5)
    with pytest.raises(ValueError, match="event_dropout"):
        SliceViews(split_count=2, cnt_min=1, cnt_max=5, event_dropout=1.0)


def test_padding_keeps_values_lengths_and_a_mask():
    batch = pad_events([
        {"event_type": torch.tensor([3, 1]), "amount": torch.tensor([0.5, 1.5])},
        {"event_type": torch.tensor([2, 2, 4]), "amount": torch.tensor([1.0, 2.0, 3.0])},
    ])  # fmt: skip
    assert batch.lengths.tolist() == [2, 3] and len(batch) == 2
    assert batch.fields["event_type"].tolist() == [[3, 1, 0], [2, 2, 4]]
    assert batch.fields["amount"][0].tolist() == [0.5, 1.5, 0.0]
    assert batch.mask.tolist() == [[True, True, False], [True, True, True]]
    moved = batch.to("cpu")
    assert moved.fields["event_type"].dtype == torch.long and torch.equal(moved.lengths, batch.lengths)


def test_padded_batches_concatenate_and_split_by_rows_as_the_engine_needs():
    data = synthetic_events(6, 2, min_length=3, max_length=12, seed=5)
    first = pad_events([data[i][0] for i in range(3)])
    second = pad_events([data[i][0] for i in range(3, 6)])
    joined = torch.cat([first, second])  # what the training step does with the views of a batch
    assert joined.shape == (6, max(first.shape[1], second.shape[1]))
    assert joined.lengths.tolist() == data.lengths.tolist()
    for row in range(6):
        events = data[row][0]
        kept = joined.fields["amount"][row, : len(events["amount"])]
        assert torch.equal(kept, events["amount"])
        assert (joined.fields["event_type"][row, len(events["amount"]) :] == 0).all()
    rows = joined[2:4]
    assert rows.shape[0] == 2 and rows.lengths.tolist() == data.lengths[2:4].tolist()


def test_windowed_items_collate_to_the_same_batch_as_sliced_events():
    from ssl_toolkit.kinds.sequences.kind import ViewedSequences, collate_views

    clients = synthetic_events(40, 2, min_length=5, max_length=60, seed=3)
    views = SliceViews(split_count=4, cnt_min=10, cnt_max=30)  # some clients shorter than cnt_min
    windowed = ViewedSequences(clients, views)
    assert windowed.windowed
    torch.manual_seed(7)
    fast = windowed.collate([windowed[i] for i in range(len(clients))])
    torch.manual_seed(7)  # the same draws, client by client, through the events path
    slow = collate_views([(views(clients[i][0]), int(clients.targets[i])) for i in range(len(clients))])
    assert torch.equal(fast[1], slow[1])
    for a, b in zip(fast[0], slow[0], strict=True):
        assert torch.equal(a.lengths, b.lengths) and a.shape == b.shape
        for name in b.fields:
            assert a.fields[name].dtype == b.fields[name].dtype
            assert torch.equal(a.fields[name], b.fields[name]), name


def test_views_with_dropout_or_noise_keep_their_events_in_the_items():
    from ssl_toolkit.kinds.sequences.kind import ViewedSequences

    clients = synthetic_events(8, 2, seed=0)
    noisy = ViewedSequences(clients, SliceViews(2, 5, 10, numeric=("amount",), numeric_noise=0.1))
    assert not noisy.windowed
    views, _ = noisy[0]
    assert len(views) == 2 and isinstance(views[0], dict)
    batch, _ = noisy.collate([noisy[i] for i in range(8)])
    assert len(batch) == 2 and batch[0].shape[0] == 8
