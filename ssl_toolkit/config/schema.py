"""Every config key, its default, and the rules a config must follow that need nothing but the config.

The rules run in `load_config`, before any Accelerator, dataset or model is built, so a mistake costs a
second, not a cluster queue.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A recipe or an override that cannot be used as given; the message says how to fix it."""


@dataclass
class RunSection:
    name: str = "run"  # a plain name: no "/", not "." or ".."
    output_dir: str = "runs"
    overwrite: bool = False  # clear a used run directory first instead of refusing it


@dataclass
class DataSection:
    name: str = "digits"
    root: str | None = None
    image_size: int = 32
    num_workers: int = 0
    download: bool = False  # torchvision datasets only; never at run time unless asked
    pretrain_split: str = "train"  # e.g. train+unlabeled for stl10
    channels: int | None = None  # image channels, 1 or 3; None: 3 if any image of any split has colour


@dataclass
class AugmentSection:
    """Unset (null) values take the preset's value for the image size."""

    preset: str = "simclr"
    device: str = "auto"  # gpu (kornia, on whole batches) when CUDA is available
    n_views: int = 2
    strength: float = 1.0  # colour-jitter strength s
    min_scale: float | None = None  # smallest crop area, as a fraction of the image (SimCLR: 0.08)
    flip_p: float | None = None
    blur_p: float | None = None
    solarize_p: float | None = None
    small_crops: int = 0  # multi-crop: this many small views besides the n_views large ones
    small_size: int | None = None


@dataclass
class ModelSection:
    backbone: str = "resnet18"
    backbone_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of timm.create_model
    cifar_stem: bool = False
    proj_hidden_dim: int | None = None  # None: the backbone's feature dimension, as in SimCLR
    proj_dim: int = 128
    sync_bn: bool = False  # SimCLR's global BatchNorm: statistics over every process's batch


@dataclass
class LossSection:
    """`name` picks the loss; every other key is passed to its constructor (checked against its signature).

    `supervised`: the views of images of one class are positives (SupCon); otherwise only views of the
    same image are (SimCLR).
    """

    name: str = "ntxent"
    supervised: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSection:
    name: str = "sgd"
    lr: float = 0.3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    lr_scaling: str = "linear"
    warmup_epochs: float = 10.0


@dataclass
class TrainSection:
    batch_size: int = 256
    epochs: int = 100
    max_steps: int | None = None
    mixed_precision: str = "no"
    grad_cache_chunk: int = 0
    checkpoint_every: int = 1000
    resume: str | None = None
    resume_allow: list[str] = field(default_factory=list)  # keys a resume may change although they alter the run
    max_bad_steps: int = 5  # consecutive steps with a NaN/inf loss before the run stops
    clip_grad_norm: float | None = None
    channels_last: bool = False
    compile: bool = False  # torch.compile of the encoder
    collective_timeout_s: float = 1800.0  # a process waiting longer than this for its peers stops the run


@dataclass
class LogSection:
    trackers: list[str] = field(default_factory=lambda: ["wandb"])
    every: int = 10
    knn_every: int = 0  # steps between online kNN evaluations on the test split (0 = never)


@dataclass
class Config:
    seed: int = 0
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    @property
    def views_per_sample(self) -> int:
        """How many views the augmentation makes of each sample: the large ones and the small crops."""
        return self.augment.n_views + self.augment.small_crops


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "seed"}
CHOICES = {
    "augment.device": ("cpu", "gpu", "auto"),
    "optim.name": ("sgd", "adamw", "lars"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "log.trackers": ("wandb", "tensorboard"),
}
POSITIVE = (
    "train.batch_size",
    "train.epochs",
    "train.checkpoint_every",
    "train.max_bad_steps",
    "log.every",
    "data.image_size",
)
NON_NEGATIVE = ("data.num_workers", "log.knn_every", "augment.small_crops")


def value_of(config: Config, dotted_key: str) -> Any:
    section, key = dotted_key.split(".")
    return getattr(getattr(config, section), key)


def validate(config: Config) -> None:
    """Every rule that needs only the config; raises ConfigError naming the key and the fix."""
    for key in POSITIVE:
        if value_of(config, key) <= 0:
            raise ConfigError(f"{key}={value_of(config, key)} must be positive")
    for key in NON_NEGATIVE:
        if value_of(config, key) < 0:
            raise ConfigError(f"{key}={value_of(config, key)} must be 0 or more")
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(f"train.max_steps={config.train.max_steps} must be positive (or null for no limit)")
    if config.augment.n_views < 2:
        raise ConfigError(f"augment.n_views={config.augment.n_views} must be at least 2")
    if not (config.optim.lr > 0 and math.isfinite(config.optim.lr)):
        raise ConfigError(f"optim.lr={config.optim.lr} must be a positive number")
    if config.train.grad_cache_chunk < 0:
        raise ConfigError(
            f"train.grad_cache_chunk={config.train.grad_cache_chunk} must be 0 (off) or a number of samples "
            f"per chunk, e.g. {max(1, config.train.batch_size // 4)}"
        )
    _validate_loss_and_views(config)


def _validate_loss_and_views(config: Config) -> None:
    loss = config.loss
    if loss.name == "arcface" and not loss.supervised:
        raise ConfigError("loss.name=arcface needs class labels: set loss.supervised=true")
    if loss.name == "ntxent":
        if loss.supervised:
            raise ConfigError(
                "loss.supervised=true needs a label-based loss such as loss.name=supcon, not ntxent"
            )
        if config.views_per_sample != 2:
            raise ConfigError(
                f"loss.name=ntxent takes exactly 2 views, the augmentation makes {config.views_per_sample} "
                "(augment.n_views + augment.small_crops); use loss.name=supcon, which with one label per "
                "sample is NT-Xent over any number of views"
            )
