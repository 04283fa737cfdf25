"""CoLES views of an event sequence: random contiguous slices, optional event dropout and numeric noise;
and the padded batches the sequence encoders take.

Randomness comes from torch's global generator, which training seeds per (seed, epoch, index) before each
item (`EpochSeededDataset`), so a run resumed mid-epoch slices every client as the uninterrupted run did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_toolkit.kinds.sequences.events import Events


def slice_bounds(length: int, split_count: int, cnt_min: int, cnt_max: int) -> list[tuple[int, int]]:
    """`split_count` (start, stop) windows of a sequence of `length` events, as CoLES's SampleSlices.

    Each window's length is uniform in [cnt_min, min(cnt_max, length)] and its start uniform over the
    places it fits; a sequence shorter than `cnt_min` is taken whole by every window.
    """
    if not 1 <= cnt_min <= cnt_max:
        raise ValueError(f"slices need 1 ≤ cnt_min ≤ cnt_max, got cnt_min={cnt_min}, cnt_max={cnt_max}")
    if split_count < 1:
        raise ValueError(f"split_count must be at least 1, got {split_count}")
    if length <= cnt_min:
        return [(0, length)] * split_count
    longest = min(cnt_max, length)
    sizes = torch.randint(cnt_min, longest + 1, (split_count,))
    starts = (torch.rand(split_count) * (length - sizes + 1)).long()
    return [(start, start + size) for start, size in zip(starts.tolist(), sizes.tolist(), strict=True)]


@dataclass
class SliceViews:
    """Events of one client → `split_count` views, each a contiguous slice (see `slice_bounds`).

    `event_dropout` drops each event of a view with that probability (keeping at least one);
    `numeric_noise` adds Gaussian noise of that std to the numeric `fields` of a view.
    """

    split_count: int
    cnt_min: int
    cnt_max: int
    numeric: tuple[str, ...] = ()
    event_dropout: float = 0.0
    numeric_noise: float = 0.0

    def __post_init__(self) -> None:
        slice_bounds(self.cnt_max, self.split_count, self.cnt_min, self.cnt_max)  # checks the arguments
        if not 0 <= self.event_dropout < 1:
            raise ValueError(f"event_dropout must be in [0, 1), got {self.event_dropout}")
        if self.numeric_noise < 0:
            raise ValueError(f"numeric_noise must be ≥ 0, got {self.numeric_noise}")

    @property
    def plain(self) -> bool:
        """Slices only: a view is its window of the client's events, nothing else drawn."""
        return self.event_dropout == 0 and self.numeric_noise == 0

    def windows(self, length: int) -> list[tuple[int, int]]:
        """The (start, stop) windows of a client of `length` events, drawn as `__call__` draws them."""
        return slice_bounds(length, self.split_count, self.cnt_min, self.cnt_max)

    def __call__(self, events: Events) -> list[Events]:
        length = len(next(iter(events.values())))
        views = []
        for start, stop in self.windows(length):
            view = {name: values[start:stop] for name, values in events.items()}
            if self.event_dropout > 0 and stop - start > 1:
                keep = torch.rand(stop - start) >= self.event_dropout
                keep[torch.randint(0, stop - start, ())] = True
                view = {name: values[keep] for name, values in view.items()}
            if self.numeric_noise > 0:
                for name in self.numeric:
                    view[name] = view[name] + self.numeric_noise * torch.randn(len(view[name]))
            views.append(view)
        return views


@dataclass
class PaddedEvents:
    """A batch of sequences padded to the longest: `fields` name → (B, T), `lengths` (B,).

    Padding is 0 (the categorical fields' reserved code); `to(device)` moves it as Accelerate moves a
    batch, leaving every dtype as it is.
    """

    fields: dict[str, torch.Tensor]
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def shape(self) -> torch.Size:
        """(B, T): the engine groups views of one shape into one forward, and chunks them by rows."""
        return next(iter(self.fields.values())).shape[:2]

    @property
    def device(self) -> torch.device:
        return self.lengths.device

    def __getitem__(self, rows: slice) -> PaddedEvents:
        return PaddedEvents({name: values[rows] for name, values in self.fields.items()}, self.lengths[rows])

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # torch.cat of views, as the engine joins the views of a batch for one forward pass.
        if func is torch.cat and not (kwargs or {}).get("dim") and len(args) == 1:
            return concatenate_padded(list(args[0]))
        return NotImplemented

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PaddedEvents:
        return PaddedEvents(
            {name: values.to(device, non_blocking=non_blocking) for name, values in self.fields.items()},
            self.lengths.to(device, non_blocking=non_blocking),
        )

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) True where an event is, False at padding."""
        steps = next(iter(self.fields.values())).shape[1]
        return torch.arange(steps, device=self.lengths.device)[None, :] < self.lengths[:, None]


def pad_events(sequences: list[Events]) -> PaddedEvents:
    """Sequences of possibly different lengths → one `PaddedEvents` batch, in order."""
    if not sequences:
        raise ValueError("no sequences to batch")
    lengths = torch.tensor([len(next(iter(events.values()))) for events in sequences])
    fields = {
        name: torch.nn.utils.rnn.pad_sequence([events[name] for events in sequences], batch_first=True)
        for name in sequences[0]
    }
    return PaddedEvents(fields, lengths)


def concatenate_padded(batches: list[PaddedEvents]) -> PaddedEvents:
    """Padded batches, one after the other, padded again to the longest of them."""
    steps = max(batch.shape[1] for batch in batches)
    fields = {
        name: torch.cat(
            [torch.nn.functional.pad(batch.fields[name], (0, steps - batch.shape[1])) for batch in batches]
        )
        for name in batches[0].fields
    }
    return PaddedEvents(fields, torch.cat([batch.lengths for batch in batches]))
