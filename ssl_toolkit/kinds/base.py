"""The seam between the engine and one kind of data: everything that depends on what a sample is.

The pretraining loop, its helpers and evaluation know samples only through a `DataKind`: it loads the
splits, turns items into training views (per item in DataLoader workers and/or per batch on the device),
gives the deterministic evaluation inputs, builds the encoder, prepares each batch for it, offers a
baseline of raw features and a picture of the views. Images are one kind; a kind registers itself with
`register_data_kind` and claims the `data.name` values it reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from ssl_toolkit.config import Config, ConfigError
from ssl_toolkit.kinds.fraction import TargetedSubset, stratified_indices
from ssl_toolkit.run_dir import RunDirectory


@dataclass
class TrainingData:
    """What the training loop reads.

    Attributes:
        dataset: items `(inputs, target)` for the DataLoader, where `inputs` are the sample's views (a list)
            or, with `batch_views`, the raw sample; it has `targets` (N,) (-1 for unlabelled samples) and
            `num_classes`.
        batch_views: makes the list of views (B, ...) from a collated batch of raw samples on the device,
            or None when the items are views already.
        collate: batches the items, where torch's default collation cannot (sequences of many lengths).
    """

    dataset: Dataset
    batch_views: Callable[[Any], list[torch.Tensor]] | None = None
    collate: Callable[[list], Any] | None = None  # None: torch's default collation

    def views(self, inputs: Any) -> list[torch.Tensor]:
        """The views of a batch as the DataLoader yields it."""
        return self.batch_views(inputs) if self.batch_views is not None else list(inputs)


class DataKind(ABC):
    """One kind of data, built from a config (and, for pretraining, the run directory it writes).

    Args:
        config: the run's config.
        run: the run directory of a pretraining run (files it reports, e.g. unreadable inputs), or None.
        preprocessing: what the encoder file stored (`preprocessing()` of the pretraining run), so that
            evaluation transforms inputs exactly as pretraining did; None computes it from the data.
    """

    name: ClassVar[str]  # the kind's name in encoder files, e.g. "image"
    baseline: ClassVar[str]  # the raw-feature baseline's name in probe.json, e.g. "raw_pixels"
    load_errors: ClassVar[tuple[type[Exception], ...]] = (ValueError, FileNotFoundError)  # a bad dataset

    def __init__(self, config: Config, run: RunDirectory | None = None, preprocessing: dict | None = None):
        self.config = config
        self.run = run
        self._preprocessing = preprocessing
        self._pretraining_split: Dataset | None = None
        self._pretraining_dataset: Dataset | None = None

    # -- which datasets ---------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def dataset_names(cls) -> list[str]:
        """The `data.name` values this kind reads."""

    @abstractmethod
    def load_split(self, split: str) -> Dataset:
        """The raw items `(sample, target)` of `split`; ValueError or FileNotFoundError when it cannot."""

    def dataset(self, split: str) -> Dataset:
        """`load_split`, with a missing or unreadable dataset turned into one ConfigError naming it."""
        try:
            return self.load_split(split)
        except self.load_errors as error:
            raise ConfigError(f"data.name={self.config.data.name!r}: {error}") from None

    def pretraining_split(self) -> Dataset:
        """The whole split `data.pretrain_split`, loaded once."""
        if self._pretraining_split is None:
            self._pretraining_split = self.dataset(self.config.data.pretrain_split)
        return self._pretraining_split

    def pretraining_dataset(self) -> Dataset:
        """What pretraining reads: `pretraining_split()`, or with `data.fraction` below 1 its seeded,
        stratified fraction (`stratified_indices`), the same on every process."""
        if self._pretraining_dataset is None:
            split, fraction = self.pretraining_split(), self.config.data.fraction
            if fraction < 1:
                split = self.subset(split, stratified_indices(split.targets, fraction, self.config.seed))
            self._pretraining_dataset = split
        return self._pretraining_dataset

    def subset(self, dataset: Dataset, indices: torch.Tensor) -> Dataset:
        """The items `indices` of `dataset`, with their `targets` and the dataset's `num_classes`."""
        return TargetedSubset(dataset, indices)

    # -- pretraining --------------------------------------------------------------------------------------
    @abstractmethod
    def training_data(self, dataset: Dataset, device: torch.device) -> TrainingData:
        """The pretraining split `dataset` with its views, made on `device` where they are made per batch."""

    def prepare_batch(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views as the encoder takes them (e.g. in its memory format)."""
        return views

    def place_encoder(self, encoder: nn.Module) -> nn.Module:
        """`encoder` laid out as the config trains it (e.g. its memory format), in place; pretraining and
        evaluation both run it so."""
        return encoder

    def view_summary(self, views: list[torch.Tensor]) -> torch.Tensor | None:
        """A uint8 RGB image (3, H, W) of a batch's views for the dashboards, or None."""
        return None

    # -- the encoder --------------------------------------------------------------------------------------
    @abstractmethod
    def encoder_spec(self) -> Any:
        """What `build_encoder` needs, as the config describes it; stored in the encoder file (as a dict)."""

    @classmethod
    @abstractmethod
    def spec_from_dict(cls, spec: dict) -> Any:
        """The spec back from its dict in an encoder file."""

    @classmethod
    @abstractmethod
    def build_encoder(cls, spec: Any) -> nn.Module:
        """An untrained encoder `inputs → (h, z)` with `backbone`, `head` and `feature_dim`."""

    def create_encoder(self) -> nn.Module:
        """The config's encoder, ready to train; a spec the architecture rejects is a ConfigError."""
        try:
            return self.place_encoder(self.build_encoder(self.encoder_spec()))
        except ValueError as error:
            raise ConfigError(str(error)) from None

    # -- evaluation ---------------------------------------------------------------------------------------
    def preprocessing(self) -> dict:
        """What turns raw inputs into the encoder's inputs at evaluation (e.g. size, mean, std)."""
        if self._preprocessing is None:
            self._preprocessing = self.measure_preprocessing()
        return self._preprocessing

    @abstractmethod
    def measure_preprocessing(self) -> dict:
        """`preprocessing()` from the data, for a run that does not have it from an encoder file."""

    @classmethod
    @abstractmethod
    def evaluation_transform(cls, preprocessing: dict) -> Callable:
        """The deterministic transform of one raw sample into the encoder's input."""

    @abstractmethod
    def evaluation_dataset(self, split: str) -> Dataset:
        """`split` (train or test) with the evaluation transform: items `(input, target)`."""

    def evaluation_collate(self, items: list) -> Any:
        """A batch of evaluation items `(input, target, readable)` as the encoder and the loop take it."""
        return default_collate(items)

    def classifier_training_dataset(self, split: str, min_scale: float) -> Dataset | None:
        """`split` as random resized crops (area from `min_scale` to 1) and flips, items `(input, target)`,
        for the protocols that train a classifier on augmented samples (the SGD probe, fine-tuning); None
        where this kind has no such augmentation."""
        return None

    def baseline_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Features (B, F) of a batch of evaluation inputs without any encoder, for the raw baseline."""
        return inputs.flatten(1)

    def cache_key(self) -> dict:
        """What, besides the encoder, decides evaluation features: cached features with another key are
        recomputed."""
        return {"name": self.config.data.name, "root": self.config.data.root}


DATA_KINDS: dict[str, type[DataKind]] = {}


def register_data_kind(kind: type[DataKind]) -> type[DataKind]:
    """Make `kind` available by its name and for the `data.name` values it reads; usable as a decorator."""
    DATA_KINDS[kind.name] = kind
    return kind


def data_kind_class(data_name: str) -> type[DataKind]:
    """The registered kind that reads datasets called `data_name`."""
    for kind in DATA_KINDS.values():
        if data_name in kind.dataset_names():
            return kind
    known = sorted(name for kind in DATA_KINDS.values() for name in kind.dataset_names())
    raise ConfigError(f"data.name={data_name!r} is not a known dataset; valid names: {', '.join(known)}")


def create_data_kind(
    config: Config, run: RunDirectory | None = None, preprocessing: dict | None = None
) -> DataKind:
    """The data kind that reads `data.name` (see `DataKind` for `run` and `preprocessing`)."""
    return data_kind_class(config.data.name)(config, run, preprocessing)


def kind_by_name(name: str) -> type[DataKind]:
    """The registered kind called `name` (as an encoder file records it)."""
    if name not in DATA_KINDS:
        raise ValueError(f"unknown data kind {name!r}; registered kinds: {', '.join(sorted(DATA_KINDS))}")
    return DATA_KINDS[name]
