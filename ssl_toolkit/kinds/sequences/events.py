"""Clients' event sequences held in memory, and a seeded generator of them for tests and benchmarks.

A client is one sample: its events sorted by time, each event a value per field. Fields are categorical
(int64 codes, 0 kept for padding, so codes start at 1) or numeric (float32). All clients' events are
stored back to back per field with one offset per client, so 100,000 clients of 400 events are a handful
of flat tensors rather than 100,000 small ones.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

Events = dict[str, torch.Tensor]  # field → (L,) values of one client, or (B, T) of a padded batch


class EventSequences(Dataset):
    """Items `(events, target)`: `events` maps each field to the client's (L,) values, in time order.

    Args:
        values: field → the concatenated values of every client (sum of lengths,).
        offsets: (N + 1,) client i's events are `values[field][offsets[i]:offsets[i + 1]]`.
        targets: (N,) class index per client, -1 for an unlabelled one.
        classes: the class names.
        categorical: the categorical fields, with the number of codes of each (padding 0 included).
        numeric: the numeric fields.
        ids: each client's id as the source named it.
    """

    def __init__(
        self,
        values: dict[str, torch.Tensor],
        offsets: torch.Tensor,
        targets: torch.Tensor,
        classes: list[str],
        categorical: dict[str, int],
        numeric: list[str],
        ids: list | None = None,
    ):
        fields = [*categorical, *numeric]
        if sorted(values) != sorted(fields):
            raise ValueError(f"values hold fields {sorted(values)}, the fields named are {sorted(fields)}")
        total = int(offsets[-1])
        for name, column in values.items():
            if column.shape != (total,):
                raise ValueError(f"field {name!r} holds {tuple(column.shape)} values, offsets say {total}")
        if len(targets) != len(offsets) - 1:
            raise ValueError(f"{len(targets)} targets for {len(offsets) - 1} clients")
        self.values = values
        self.offsets = offsets.long()
        self.targets = targets.long()
        self.classes = list(classes)
        self.categorical = dict(categorical)
        self.numeric = list(numeric)
        self.ids = list(ids) if ids is not None else list(range(len(targets)))

    @property
    def fields(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) events per client."""
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Events, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"client {index} of {len(self)}")
        index %= len(self)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return {name: column[start:stop] for name, column in self.values.items()}, int(self.targets[index])

    def select(self, indices: torch.Tensor) -> EventSequences:
        """The clients `indices`, in that order, as a dataset of their own."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[indices]
        offsets = torch.zeros(len(indices) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        # One gather per field: the positions of every kept event, client after client.
        starts = self.offsets[indices]
        within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], lengths)
        positions = torch.repeat_interleave(starts, lengths) + within
        return EventSequences(
            {name: column[positions] for name, column in self.values.items()},
            offsets,
            self.targets[indices],
            self.classes,
            self.categorical,
            self.numeric,
            [self.ids[i] for i in indices.tolist()],
        )


def synthetic_events(
    num_clients: int = 2000,
    num_classes: int = 4,
    *,
    num_event_types: int = 16,
    min_length: int = 20,
    max_length: int = 400,
    class_signal: float = 0.6,
    seed: int = 0,
) -> EventSequences:
    """Clients of `num_classes` balanced classes whose event types follow class-dependent Markov chains.

    Every class shares one random transition matrix, moved per class by `class_signal` × standard normal
    noise on its logits, so a class shows only in the statistics of many transitions (no single event gives
    it away). Each event also has an `amount` (log-normal, its mean set by class and event type) and a `dt`,
    the time since the previous event (exponential, its rate set by class). Lengths are uniform in
    [`min_length`, `max_length`]. Fields: `event_type` (categorical, codes 1…num_event_types), `amount`
    and `dt` (numeric, `log1p` of the raw values, as event models usually take them).

    The generator owns its random state: the same arguments give the same clients on every machine, and the
    global random state is left alone.
    """
    if num_clients < num_classes or num_classes < 2:
        raise ValueError(f"need num_classes ≥ 2 and at least one client per class, got {num_clients}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"lengths must satisfy 1 ≤ min_length ≤ max_length, got {min_length}, {max_length}")
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    types = num_event_types
    shared = normal(types, types)
    transitions = torch.softmax(shared + class_signal * normal(num_classes, types, types), dim=-1)
    log_amount = normal(types) + 0.3 * normal(num_classes, types)  # (K, E) mean of log(amount)
    rate = torch.exp(0.3 * normal(num_classes))  # (K,) events per unit of time

    targets = torch.randperm(num_clients, generator=generator) % num_classes
    lengths = torch.randint(min_length, max_length + 1, (num_clients,), generator=generator)
    steps = int(lengths.max())
    # Every client's chain advances one event per step; events past a client's length are cut below.
    state = torch.randint(0, types, (num_clients,), generator=generator)
    chain = torch.empty(num_clients, steps, dtype=torch.long)
    for step in range(steps):
        chain[:, step] = state
        state = torch.multinomial(transitions[targets, state], 1, generator=generator).squeeze(1)
    amount = torch.exp(log_amount[targets[:, None], chain] + 0.5 * normal(num_clients, steps))
    uniform = torch.rand(num_clients, steps, generator=generator).clamp_min(1e-12)
    dt = -torch.log(uniform) / rate[targets, None]

    kept = torch.arange(steps)[None, :] < lengths[:, None]
    offsets = torch.zeros(num_clients + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    values = {
        "event_type": chain[kept] + 1,  # row-major: client after client, each in time order
        "amount": torch.log1p(amount[kept]).float(),
        "dt": torch.log1p(dt[kept]).float(),
    }
    classes = [f"class_{k}" for k in range(num_classes)]
    return EventSequences(values, offsets, targets, classes, {"event_type": types + 1}, ["amount", "dt"])


def train_test_clients(targets: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Sorted indices of a seeded split stratified by target: (train, test); unlabelled clients (-1) all
    go to train, where pretraining uses them."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for value in torch.unique(targets).tolist():
        members = torch.nonzero(targets == value).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        count = (
            0 if value < 0 else min(len(members) - 1, max(1, math.floor(test_fraction * len(members) + 0.5)))
        )
        test.append(members[:count])
        train.append(members[count:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values
