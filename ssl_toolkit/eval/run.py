"""A finished pretraining run opened for evaluation: its config, frozen encoder, data and cached features."""

from __future__ import annotations

import functools
import hashlib
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from ssl_toolkit import distributed, tracking
from ssl_toolkit.config import Config, ConfigError, load_config
from ssl_toolkit.encoder_file import FEATURES, EncoderFileError, load_encoder
from ssl_toolkit.eval.features import FeatureCache, extract_features_and_readable
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.run_dir import RunDirectory

SPLITS = ("train", "test")
RANDOM_INIT = "random_init"  # the baseline of the same architecture, untrained


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's own config.yaml, with `section.key=value` overrides (e.g. data.root=...)."""
    run = RunDirectory(run_dir)
    if not run.config.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; pass the run directory that pretraining wrote")
    return load_config(run.config, overrides)


class EvaluationRun:
    """The frozen encoder of `run_dir` and the train and test splits of its data, without augmentation.

    `features(kind, split)` embeds a split once and caches the result in `run_dir/features/`, keyed by the
    encoder file's digest, the data and the precision, so later probes, kNN and plots reuse it. Runs
    single-process or under `accelerate launch`: every process embeds its share of each split. Feature
    kinds are `backbone` (h), `projection` (z), `random_init` (the same architecture, untrained) and the data
    kind's raw baseline (`baseline`, e.g. raw_pixels).

    Items whose input cannot be read (a corrupt image file) are left out of the features, not replaced,
    and counted in `unreadable` (per split); a class without items in a split is reported when the run
    opens. Reports are one line each on stderr, from the main process.
    """

    def __init__(
        self, run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *, batch_size: int = 256
    ):
        self.directory = RunDirectory(run_dir)
        self.config = load_run_config(self.directory.path, overrides)
        self.batch_size = batch_size
        try:
            self.trained = load_encoder(self.directory.encoder)
        except (FileNotFoundError, EncoderFileError) as error:
            raise ConfigError(str(error)) from None
        self.encoder, self.spec = self.trained.encoder, self.trained.spec
        self.kind = create_data_kind(self.config, preprocessing=self.trained.preprocessing)
        # The run's precision, no trackers: evaluation adds to a finished run's dashboards (`publish`).
        self.accelerator = Accelerator(
            cpu=distributed.launched_on_cpu_processes(), mixed_precision=self.config.train.mixed_precision
        )
        self.train_set = self.kind.evaluation_dataset("train")
        self.test_set = self.kind.evaluation_dataset("test")
        self.cache = FeatureCache(self.directory.features, report=self.report)
        self.unreadable: dict[str, int] = {}  # split → items left out, once its features are known
        for split, dataset in (("train", self.train_set), ("test", self.test_set)):
            for location in classes_without_items(dataset):
                self.report(
                    f"{location}: no {split} images of this class; evaluation goes on with the other "
                    "classes (AUROC over the classes present)"
                )

    def report(self, line: str) -> None:
        """One line on stderr, from the main process only."""
        if self.is_main_process:
            print(line, file=sys.stderr)

    @property
    def unreadable_images(self) -> int:
        """Items left out of the features of the splits embedded so far because they could not be read."""
        return sum(self.unreadable.values())

    @property
    def baseline(self) -> str:
        """The name of the data kind's raw-feature baseline, e.g. raw_pixels."""
        return self.kind.baseline

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        return (*FEATURES, RANDOM_INIT, self.baseline)

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    @property
    def classes(self) -> list[str]:
        return list(self.train_set.classes)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @functools.cached_property
    def encoder_digest(self) -> str:
        digest = hashlib.sha256()
        with self.directory.encoder.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @functools.cached_property
    def untrained_encoder(self) -> nn.Module:
        """The run's architecture with the random weights that its seed gives."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return self.kind.build_encoder(self.spec)

    def features(self, kind: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) and targets (N,) of `split` on CPU; `kind` is one of `feature_kinds`."""
        if kind not in self.feature_kinds:
            raise ValueError(f"unknown feature kind {kind!r}; valid kinds: {', '.join(self.feature_kinds)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        dataset = self.train_set if split == "train" else self.test_set
        if kind == self.baseline:  # as cheap to read again as to cache
            return self._extract(self.kind.baseline_features, dataset, split)
        name, key = f"{kind}_{split}", self._cache_key(kind, split, len(dataset))
        cached = self.cache.load_entry(name, key)
        if cached is not None:
            features, targets, unreadable = cached
            self._count_unreadable(split, unreadable)
            return features, targets
        encoder = self.kind.place_encoder(self.untrained_encoder if kind == RANDOM_INIT else self.encoder)
        encoder = self.accelerator.prepare_model(encoder, evaluation_mode=True)
        frozen = frozen_embedding(
            self.accelerator.unwrap_model(encoder), "projection" if kind == "projection" else "backbone"
        )
        features, targets = self._extract(
            lambda inputs: frozen(self.kind.prepare_batch([inputs])[0]), dataset, split
        )
        if self.is_main_process:
            self.cache.save(name, key, features, targets, unreadable=self.unreadable[split])
        self.accelerator.wait_for_everyone()
        return features, targets

    def _extract(self, embed, dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The readable items' features and targets; the others are counted."""
        features, targets, readable = extract_features_and_readable(
            embed,
            dataset,
            self.accelerator,
            batch_size=self.batch_size,
            collate_fn=self.kind.evaluation_collate,
        )
        self._count_unreadable(split, int((~readable).sum()))
        if not readable.any():
            raise ConfigError(
                f"none of the {len(readable)} {split} items of data.name={self.config.data.name!r} can be "
                f"read (data.root={self.config.data.root}); point data.root at readable data"
            )
        return features[readable], targets[readable]

    def _count_unreadable(self, split: str, count: int) -> None:
        if count and split not in self.unreadable:
            self.report(f"left out {count} unreadable {split} image(s): evaluation does not replace them")
        self.unreadable[split] = count

    def _cache_key(self, kind: str, split: str, num_items: int) -> dict:
        key = {
            "kind": kind,
            "split": split,
            "num_items": num_items,
            "data": self.kind.cache_key(),
            "mixed_precision": self.config.train.mixed_precision,
            "channels_last": self.config.train.channels_last,  # another layout, other rounding
        }
        if kind == RANDOM_INIT:
            spec = asdict(self.spec) if is_dataclass(self.spec) else self.spec
            key.update(encoder_spec=spec, seed=self.config.seed)
        else:
            key["encoder_sha256"] = self.encoder_digest
        return key

    def publish(self, summary: dict, images: dict[str, Path] | None = None) -> bool:
        """Add `summary` (and images) to the run's W&B run from the main process (see `tracking.publish`)."""
        if not self.is_main_process:
            return False
        return tracking.publish(self.config, self.directory, summary, images)


def open_run(
    run: str | Path | EvaluationRun, overrides: list[str] | tuple[str, ...] = (), *, batch_size: int = 256
) -> EvaluationRun:
    """`run` itself when it is open already (several evaluations then share its features), else opened."""
    if isinstance(run, EvaluationRun):
        if overrides:
            raise ValueError("overrides apply when a run is opened; pass them to EvaluationRun")
        return run
    return EvaluationRun(run, overrides, batch_size=batch_size)


def classes_without_items(dataset) -> list[str]:
    """Where each class of `dataset` that has no item would come from (e.g. its empty class folder)."""
    targets = torch.as_tensor(dataset.targets)
    counts = torch.bincount(targets[targets >= 0], minlength=dataset.num_classes)
    describe = getattr(dataset, "class_location", lambda index: f"class {dataset.classes[index]!r}")
    return [describe(index) for index in range(dataset.num_classes) if counts[index] == 0]


def frozen_embedding(encoder: nn.Module, features: str):
    """`inputs → h` ("backbone") or `inputs → z` ("projection") of `encoder` put in eval mode.

    In eval mode BatchNorm uses its running statistics and updates nothing; with `extract_features`'s
    `no_grad`, the encoder's weights and buffers leave evaluation bit-identical.
    """
    encoder.eval()
    if features == "backbone":
        return encoder.backbone
    if features == "projection":
        return lambda inputs: encoder(inputs)[1]
    raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
