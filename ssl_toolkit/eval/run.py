"""A finished pretraining run opened for evaluation: its config, frozen encoder, data and cached features."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from ssl_toolkit import distributed
from ssl_toolkit.augment import eval_transform
from ssl_toolkit.config import Config, ConfigError, load_config
from ssl_toolkit.data import ImageDataset, NoReadableImagesError, create_dataset
from ssl_toolkit.eval.features import FeatureCache, extract_features
from ssl_toolkit.models import Encoder, create_encoder, load_encoder

ENCODER_FILE = "encoder.safetensors"
FEATURE_CACHE_DIR = "features"
FEATURES = ("backbone", "projection")  # h = f(x) and z = g(h) of the trained encoder
BASELINES = ("random_init", "raw_pixels")  # the same backbone untrained; the pixels themselves
SPLITS = ("train", "test")
RAW_PIXELS_MAX_SIDE = 32  # larger images are area-averaged to 32 px, or ImageNet would give 150k-D "features"
WANDB_PROJECT = "ssl_toolkit"  # the project the engine's tracker logs to


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's own config.yaml, with `section.key=value` overrides (e.g. data.root=...)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; pass the run directory that pretraining wrote")
    return load_config(path, overrides)


def wandb_run_id(wandb_dir: Path) -> str | None:
    """The id of the W&B run logged under `wandb_dir`, from its latest `run-<id>.wandb` file, or None.

    (The folder names end in the id too, unless W&B appended a counter to make them unique.)
    """
    logs = sorted(wandb_dir.glob("*run-*/run-*.wandb"), key=lambda path: path.stat().st_mtime)
    return logs[-1].stem.removeprefix("run-") if logs else None


class EvaluationRun:
    """The frozen encoder of `run_dir` and the train and test splits of its dataset, without augmentation.

    `features(kind, split)` embeds a split once and caches the result in `run_dir/features/`, keyed by the
    encoder file's digest, the data and the precision, so later probes, kNN and plots reuse it. Runs
    single-process or under `accelerate launch`: every process embeds its share of each split.
    """

    def __init__(
        self, run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *, batch_size: int = 256
    ):
        self.run_dir = Path(run_dir)
        self.config = load_run_config(self.run_dir, overrides)
        self.batch_size = batch_size
        try:
            self.encoder, self.spec, extra = load_encoder(self.run_dir / ENCODER_FILE)
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
        self.accelerator = Accelerator(
            cpu=distributed.launched_on_cpu_processes(), mixed_precision=self.config.train.mixed_precision
        )
        stats = extra["data"]
        self.train_set, self.test_set = self._datasets(stats["mean"], stats["std"])
        self.cache = FeatureCache(self.run_dir / FEATURE_CACHE_DIR)

    def _datasets(self, mean: list[float], std: list[float]) -> tuple[ImageDataset, ImageDataset]:
        data = self.config.data
        transform = eval_transform(data.image_size, mean, std)
        try:
            train = create_dataset(data.name, data.root, "train", download=data.download)
            # imagefolder decides channels per split from its first image; the encoder expects train's.
            options = {"channels": train.channels} if data.name == "imagefolder" else {}
            test = create_dataset(data.name, data.root, "test", **options)
        except (ValueError, FileNotFoundError, NoReadableImagesError) as error:
            raise ConfigError(f"data.name={data.name!r}: {error}") from None
        return train.with_transform(transform), test.with_transform(transform)

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
        with (self.run_dir / ENCODER_FILE).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @functools.cached_property
    def untrained_encoder(self) -> Encoder:
        """The run's architecture with the random weights that its seed gives."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return create_encoder(self.spec)

    def features(self, kind: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) and targets (N,) of `split` on CPU; `kind` is one of FEATURES or BASELINES."""
        if kind not in FEATURES + BASELINES:
            raise ValueError(f"unknown feature kind {kind!r}; valid kinds: {', '.join(FEATURES + BASELINES)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        dataset = self.train_set if split == "train" else self.test_set
        if kind == "raw_pixels":  # as cheap to read again as to cache
            return extract_features(_raw_pixels, dataset, self.accelerator, batch_size=self.batch_size)
        name, key = f"{kind}_{split}", self._cache_key(kind, split, len(dataset))
        cached = self.cache.load(name, key)
        if cached is not None:
            return cached
        encoder = self.untrained_encoder if kind == "random_init" else self.encoder
        encoder = self.accelerator.prepare_model(encoder, evaluation_mode=True)
        embed = frozen_embedding(
            self.accelerator.unwrap_model(encoder), "projection" if kind == "projection" else "backbone"
        )
        features, targets = extract_features(embed, dataset, self.accelerator, batch_size=self.batch_size)
        if self.is_main_process:
            self.cache.save(name, key, features, targets)
        self.accelerator.wait_for_everyone()
        return features, targets

    def _cache_key(self, kind: str, split: str, num_items: int) -> dict:
        data = self.config.data
        key = {
            "kind": kind,
            "split": split,
            "num_items": num_items,
            "data": {"name": data.name, "root": data.root, "image_size": data.image_size},
            "mixed_precision": self.config.train.mixed_precision,
        }
        if kind == "random_init":
            key.update(encoder_spec=asdict(self.spec), seed=self.config.seed)
        else:
            key["encoder_sha256"] = self.encoder_digest
        return key

    def publish(self, summary: dict, images: dict[str, Path] | None = None) -> bool:
        """Add `summary` values (and images) to the run's W&B run, when pretraining logged to W&B.

        The run is resumed by its id (offline unless WANDB_MODE says otherwise, as in pretraining), so
        `wandb sync` merges the results into the pretraining run's summary. Returns whether it published.
        """
        if "wandb" not in self.config.log.trackers or not self.is_main_process:
            return False
        run_id = wandb_run_id(self.run_dir / "wandb")
        if run_id is None:
            return False
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=WANDB_PROJECT, id=run_id, resume="allow", dir=str(self.run_dir), name=self.config.run.name
        )
        try:
            run.summary.update(summary)
            for name, path in (images or {}).items():
                run.summary[name] = wandb.Image(str(path))
        finally:
            run.finish()
        return True


def frozen_embedding(encoder: Encoder, features: str):
    """`images → h` ("backbone") or `images → z` ("projection") of `encoder` put in eval mode.

    In eval mode BatchNorm uses its running statistics and updates nothing; with `extract_features`'s
    `no_grad`, the encoder's weights and buffers leave evaluation bit-identical.
    """
    encoder.eval()
    if features == "backbone":
        return encoder.backbone
    if features == "projection":
        return lambda images: encoder(images)[1]
    raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")


def _raw_pixels(images: torch.Tensor) -> torch.Tensor:
    if max(images.shape[-2:]) > RAW_PIXELS_MAX_SIDE:
        images = F.adaptive_avg_pool2d(images, RAW_PIXELS_MAX_SIDE)
    return images.flatten(1)
