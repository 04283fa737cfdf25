"""Event sequences: clients' events, CoLES slice views, GRU / 1-D CNN / Transformer encoders, padded
batches, and per-client aggregate features as the raw baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ssl_toolkit.config import ConfigError
from ssl_toolkit.kinds.base import DataKind, TrainingData, register_data_kind
from ssl_toolkit.kinds.sequences.encoders import (
    SequenceEncoderSpec,
    create_sequence_encoder,
    longest_sequence,
)
from ssl_toolkit.kinds.sequences.events import Events, EventSequences, synthetic_events, train_test_clients
from ssl_toolkit.kinds.sequences.tables import LABELS_FILE, read_events
from ssl_toolkit.kinds.sequences.ucr import UCR_DATASETS, load_ucr
from ssl_toolkit.kinds.sequences.views import PaddedEvents, SliceViews, pad_events

SPLITS = ("train", "test")
SYNTHETIC_CLIENTS = 2000  # data.num_samples=null
SYNTHETIC_CLASSES = 4
DATA_SEED = 0  # the generated clients and the train/test split do not change with the run's seed
TEST_FRACTION = 0.2
EMBEDDING_DIM = 16  # per categorical field; model.backbone_args.embedding_dim changes it


class ViewedSequences(Dataset):
    """Items `(views, target)`: each client's events through `views`; `targets` and `num_classes` kept.

    When the views are plain slices (no event dropout, no numeric noise), an item is only its client and
    its slices' windows, drawn as `views` would draw them, and `collate` cuts every slice of the batch
    from the clients' flat storage in one gather per field; otherwise items hold the views' events.
    """

    def __init__(self, clients: EventSequences, views: Callable[[Events], list[Events]]):
        self.clients, self.views = clients, views
        self.targets, self.num_classes = clients.targets, clients.num_classes
        self.windowed = isinstance(views, SliceViews) and views.plain

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, index: int) -> tuple[list[Events] | SliceWindows, int]:
        if self.windowed:
            length = int(self.clients.offsets[index + 1] - self.clients.offsets[index])
            windows = torch.tensor(self.views.windows(length))  # (split_count, 2): start, stop
            return SliceWindows(index, windows), int(self.targets[index])
        events, target = self.clients[index]
        return self.views(events), target

    def collate(self, items: list) -> tuple[list[PaddedEvents], torch.Tensor]:
        if not self.windowed:
            return collate_views(items)
        targets = torch.tensor([target for _, target in items])
        batch, num_views = len(items), len(items[0][0].windows)
        clients = torch.tensor([item.client for item, _ in items])
        windows = torch.stack([item.windows for item, _ in items])  # (B, V, 2)
        # View-major rows, as collate_views lays them out: view v of every client, then view v + 1.
        windows = windows.transpose(0, 1).reshape(-1, 2)
        starts = self.clients.offsets[clients].repeat(num_views) + windows[:, 0]
        lengths = windows[:, 1] - windows[:, 0]
        steps = torch.arange(int(lengths.max()))
        present = steps[None, :] < lengths[:, None]
        positions = torch.where(present, starts[:, None] + steps[None, :], 0)
        fields = {
            name: torch.where(present, column[positions], torch.zeros((), dtype=column.dtype))
            for name, column in self.clients.values.items()
        }
        padded = PaddedEvents(fields, lengths)
        return [padded[view * batch : (view + 1) * batch] for view in range(num_views)], targets


@dataclass(frozen=True)
class SliceWindows:
    """A training item of plain slices: the client's index and its (split_count, 2) start / stop windows."""

    client: int
    windows: torch.Tensor


class EvaluationSequences(Dataset):
    """Items `(events, target, readable)` of whole sequences, every client readable."""

    def __init__(self, clients: EventSequences, fields: list[str]):
        self.clients, self.fields = clients, fields
        self.targets, self.classes, self.num_classes = clients.targets, clients.classes, clients.num_classes

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, index: int) -> tuple[Events, int, bool]:
        events, target = self.clients[index]
        return {name: events[name] for name in self.fields}, target, True


def collate_views(items: list[tuple[list[Events], int]]) -> tuple[list[PaddedEvents], torch.Tensor]:
    """Training items → one padded batch per view, and the targets.

    Every view is padded to the longest slice of the batch: views of one shape share a forward pass, so the
    head's BatchNorm sees the whole batch, as for images, whatever lengths the slices happen to have.
    """
    batch, num_views = len(items), len(items[0][0])
    padded = pad_events([item[0][view] for view in range(num_views) for item in items])
    views = [padded[view * batch : (view + 1) * batch] for view in range(num_views)]
    return views, torch.tensor([target for _, target in items])


@register_data_kind
class SequenceKind(DataKind):
    """Clients' event sequences (`EventSequences`); `preprocessing()` names the fields, the number of codes
    of each categorical one and the mean and std of each numeric one."""

    name = "sequence"
    baseline = "aggregates"

    @classmethod
    def dataset_names(cls) -> list[str]:
        return ["synthetic_events", "events", *UCR_DATASETS]

    # -- which data -------------------------------------------------------------------------------------
    def _clients(self) -> EventSequences:
        """Every client of the data, once; and `self._splits`, the indices of each split."""
        if not hasattr(self, "_all_clients"):
            data = self.config.data
            if data.name == "events":
                if data.root is None:  # a ValueError: `dataset` makes it one ConfigError naming data.name
                    raise ValueError("it needs data.root: the folder with events.csv or events.parquet")
                self._all_clients, self._splits = read_events(data.root, data.categorical, data.numeric)
            else:
                count = data.num_samples or SYNTHETIC_CLIENTS
                self._all_clients = synthetic_events(count, SYNTHETIC_CLASSES, seed=DATA_SEED)
                train, test = train_test_clients(self._all_clients.targets, TEST_FRACTION, DATA_SEED)
                self._splits = {"train": train, "test": test}
        return self._all_clients

    def load_split(self, split: str) -> EventSequences:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)} (data.pretrain_split)")
        if self.config.data.name in UCR_DATASETS:  # the archive's own train and test files
            return load_ucr(UCR_DATASETS[self.config.data.name], split, self.config.data.root)
        clients = self._clients()
        return clients.select(self._splits[split])

    def subset(self, dataset: EventSequences, indices: torch.Tensor) -> EventSequences:
        return dataset.select(indices)

    def fields(self) -> tuple[list[str], list[str]]:
        """The categorical and numeric fields the encoder reads: those of data.categorical and
        data.numeric, or every field of the data when both are empty."""
        data, clients = self.config.data, self.pretraining_split()
        if not data.categorical and not data.numeric:
            return list(clients.categorical), list(clients.numeric)
        for key, names, known in (
            ("data.categorical", data.categorical, clients.categorical),
            ("data.numeric", data.numeric, clients.numeric),
        ):
            unknown = [name for name in names if name not in known]
            if unknown:
                raise ConfigError(
                    f"{key}={names}: {', '.join(map(repr, unknown))} not among the fields of "
                    f"{data.name} ({', '.join(known) or 'none'})"
                )
        return list(data.categorical), list(data.numeric)

    # -- pretraining ----------------------------------------------------------------------------------------
    def slice_views(self) -> SliceViews:
        augment = self.config.augment
        if augment.small_crops:
            raise ConfigError("augment.small_crops is for images; event sequences take augment.split_count")
        try:
            return SliceViews(
                split_count=self.config.views_per_sample,
                cnt_min=augment.cnt_min,
                cnt_max=augment.cnt_max,
                numeric=tuple(self.fields()[1]),
                event_dropout=augment.event_dropout,
                numeric_noise=augment.numeric_noise,
            )
        except ValueError as error:
            raise ConfigError(f"augment: {error}") from None

    def training_data(self, dataset: EventSequences, device: torch.device) -> TrainingData:
        items = ViewedSequences(dataset, self.slice_views())
        return TrainingData(items, collate=items.collate)

    # -- the encoder --------------------------------------------------------------------------------------
    def encoder_spec(self) -> SequenceEncoderSpec:
        model, stats = self.config.model, self.preprocessing()
        arguments = dict(model.backbone_args)
        embedding_dim = arguments.pop("embedding_dim", EMBEDDING_DIM)
        return SequenceEncoderSpec(
            backbone=model.backbone,
            categorical=stats["categorical"],
            numeric=stats["numeric"],
            embedding_dim=embedding_dim,
            backbone_args=arguments,
            proj_hidden_dim=model.proj_hidden_dim,
            proj_dim=model.proj_dim,
        )

    @classmethod
    def spec_from_dict(cls, spec: dict) -> SequenceEncoderSpec:
        return SequenceEncoderSpec(**spec)

    @classmethod
    def build_encoder(cls, spec: SequenceEncoderSpec | dict) -> nn.Module:
        return create_sequence_encoder(
            spec if isinstance(spec, SequenceEncoderSpec) else cls.spec_from_dict(spec)
        )

    def create_encoder(self) -> nn.Module:
        # Pretraining reads slices, evaluation whole clients: a client longer than the encoder takes would
        # fail only at the probe, after the whole pretraining. The table's clients are all in memory; a UCR
        # archive's test file is left to the evaluation, which checks it too.
        clients = self.pretraining_split()
        if self.config.data.name not in UCR_DATASETS:
            clients = self._clients()
        self._check_lengths(clients, "", "set model.backbone_args.max_length={length} or more")
        return super().create_encoder()

    def _check_lengths(self, clients: EventSequences, where: str, fix: str) -> None:
        """A ConfigError when a client of `clients` is longer than the encoder takes (the transformer's
        max_length); `where` names the clients' split in the message, `fix` says what to do (`{length}`: the
        longest client's)."""
        limit = longest_sequence(self.encoder_spec())
        if limit is None or len(clients) == 0 or int(clients.lengths.max()) <= limit:
            return
        longest = int(clients.lengths.argmax())
        length = int(clients.lengths[longest])
        raise ConfigError(
            f"model.backbone_args.max_length={limit}, but client {clients.ids[longest]!r}{where} has "
            f"{length} events and evaluation embeds each client whole; {fix.format(length=length)}"
        )

    # -- evaluation ---------------------------------------------------------------------------------------
    def measure_preprocessing(self) -> dict:
        # The whole pretraining split even with data.fraction, as for images' normalisation.
        categorical, numeric = self.fields()
        clients = self.pretraining_split()
        stats = {}
        for name in numeric:
            values = clients.values[name].double()
            stats[name] = [values.mean().item(), values.std().item() if len(values) > 1 else 1.0]
        return {
            "categorical": {name: clients.categorical[name] for name in categorical},
            "numeric": stats,
        }

    @classmethod
    def evaluation_transform(cls, preprocessing: dict) -> Callable:
        fields = [*preprocessing["categorical"], *preprocessing["numeric"]]
        return lambda events: {name: events[name] for name in fields}

    def evaluation_dataset(self, split: str) -> EvaluationSequences:
        """The labelled clients of `split`, whole: unlabelled ones pretrain only, as no probe can score them.

        Raises:
            ConfigError: `split` has no labelled client, or a client longer than the encoder takes.
        """
        stats = self.preprocessing()
        clients = self.dataset(split)
        if bool((clients.targets < 0).any()):
            clients = clients.select(torch.nonzero(clients.targets >= 0).squeeze(1))
        if len(clients) == 0:
            raise ConfigError(self._no_labelled_clients(split))
        fix = (
            "pretrain again with a larger model.backbone_args.max_length (the transformer's positions are "
            "learned), or leave that client's oldest events out of the table"
        )
        self._check_lengths(clients, f" of the {split} split", fix)
        return EvaluationSequences(clients, [*stats["categorical"], *stats["numeric"]])

    def _no_labelled_clients(self, split: str) -> str:
        """Why `split` has no labelled client to evaluate, and how to give it some."""
        data = self.config.data
        if data.name != "events":
            return f"data.name={data.name!r}: the {split} split has no labelled client to evaluate"
        labels = Path(data.root) / LABELS_FILE
        if not labels.is_file():
            return (
                f"{labels} does not exist, so no client has a class to evaluate; write it with columns id, "
                "target and optionally split (train or test)"
            )
        if split == "test":
            return (
                f"{labels} puts no client in the test split, which evaluation scores: give it a split column "
                "(train or test) with some test rows (without one, a seeded 80/20 split takes test clients "
                "only from the classes with 2 or more clients)"
            )
        return (
            f"{labels} puts no client in the train split, which evaluation fits on: give some of its rows "
            "split train"
        )

    def evaluation_collate(self, items: list) -> tuple[PaddedEvents, torch.Tensor, torch.Tensor]:
        events, targets, readable = zip(*items, strict=True)
        return pad_events(list(events)), torch.tensor(targets), torch.tensor(readable)

    def baseline_features(self, inputs: PaddedEvents) -> torch.Tensor:
        """Per client: its number of events; per numeric field the mean, std, min and max; per categorical
        field the share of its events with each code (CoLES's hand-made aggregate baseline)."""
        stats = self.preprocessing()
        mask = inputs.mask
        present = mask.float()
        count = present.sum(1).clamp_min(1)
        parts = [torch.log1p(present.sum(1, keepdim=True))]
        for name in stats["numeric"]:
            values = inputs.fields[name].float() * present
            mean = values.sum(1) / count
            spread = ((values - mean[:, None]).square() * present).sum(1) / count
            low = inputs.fields[name].float().masked_fill(~mask, float("inf")).amin(1)
            high = inputs.fields[name].float().masked_fill(~mask, float("-inf")).amax(1)
            parts.append(torch.stack([mean, spread.sqrt(), low, high], dim=1))
        for name, codes in stats["categorical"].items():
            shares = torch.zeros(len(mask), codes, device=mask.device)
            shares.scatter_add_(1, inputs.fields[name].long(), present)
            parts.append(shares[:, 1:] / count[:, None])  # code 0 is padding
        return torch.cat(parts, dim=1)

    def cache_key(self) -> dict:
        return {**super().cache_key(), "num_samples": self.config.data.num_samples}
