"""Every config key, its default, and the rules a config must follow that need nothing but the config.

The rules run in `load_config`, before any Accelerator, dataset or model is built, so a mistake costs a
second, not a cluster queue.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_toolkit.process.status import RunFailure, Status


class ConfigError(ValueError, RunFailure):
    """A recipe, an override, a dataset or a run directory that cannot be used as given; the message says
    how to fix it."""

    status = Status.BAD_INPUT


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
    fraction: float = 1.0  # pretrain on this seeded, stratified share of pretrain_split; evaluation on all
    channels: int | None = None  # image channels, 1 or 3; None: 3 if any image of any split has colour
    categorical: list[str] = field(default_factory=list)  # event sequences: categorical fields
    numeric: list[str] = field(default_factory=list)  # event sequences: numeric fields
    num_samples: int | None = None  # generated data (synthetic_events): how many; None: its default


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
    # Event sequences (CoLES): views are random contiguous slices of a client's events.
    split_count: int | None = None  # views per client; None: augment.n_views
    cnt_min: int = 25  # shortest slice, in events (a shorter sequence is taken whole)
    cnt_max: int = 200  # longest slice
    event_dropout: float = 0.0  # drop each event of a view with this probability
    numeric_noise: float = 0.0  # std of Gaussian noise added to numeric fields


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
    resume_allow: list[str] = field(
        default_factory=list
    )  # keys a resume may change although they alter the run
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
    # A linear classifier on the detached h of each batch's labelled samples, scored with each evaluation
    # (no effect on the encoder); off when the pretraining split has no labels.
    online_probe: bool = True
    online_probe_lr: float = 1.0e-3  # its AdamW learning rate
    group: str | None = None  # the W&B group of the run (a study sets it to the study's name)


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
        views = self.augment.split_count if self.augment.split_count is not None else self.augment.n_views
        return views + self.augment.small_crops


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "seed"}
CHOICES = {
    "augment.device": ("cpu", "gpu", "auto"),
    "optim.name": ("sgd", "adamw", "lars"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "log.trackers": ("wandb", "tensorboard"),
}


@dataclass(frozen=True)
class Range:
    """The numbers a key takes: a lower and an upper bound (each open or closed, None for none), or a set
    of choices; and whether null is allowed, with what null means. Every float must also be finite."""

    low: float | None = None
    low_open: bool = False  # True: the value must be more than `low`, not equal to it
    high: float | None = None
    high_open: bool = False
    choices: tuple[int, ...] = ()
    null_means: str | None = None  # None: null is not allowed
    note: str = ""  # why the range is what it is, or what its edge means

    @property
    def nullable(self) -> bool:
        return self.null_means is not None

    def contains(self, value: float) -> bool:
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range in words, e.g. `0 or more`, `in (0, 1]`, `one of 1, 3`."""
        if self.choices:
            text = "one of " + ", ".join(_number(c) for c in self.choices)
        elif self.low is not None and self.high is not None:
            text = (
                f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}"
            )
        elif self.low is not None:
            if self.low_open:
                text = f"more than {_number(self.low)}"
            else:
                text = "0 or more" if self.low == 0 else f"at least {_number(self.low)}"
        elif self.high is not None:
            text = f"less than {_number(self.high)}" if self.high_open else f"at most {_number(self.high)}"
        else:
            text = "any finite number"
        if self.nullable:
            text += f", or null ({self.null_means})"
        return text + (f"; {self.note}" if self.note else "")

    def check(self, key: str, value: Any) -> None:
        """Raise ConfigError naming `key`, `value` and the range unless `value` is in it."""
        if value is None:
            if not self.nullable:
                raise ConfigError(f"{key}=null is not allowed; it must be {self.describe()}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is not a number; it must be {self.describe()}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not finite; it must be {self.describe()}")
        if not self.contains(value):
            raise ConfigError(f"{key}={value} must be {self.describe()}")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


AT_LEAST_1 = Range(low=1)
NON_NEGATIVE = Range(low=0)
POSITIVE = Range(low=0, low_open=True)
PROBABILITY = Range(low=0, high=1, null_means="the preset's value")

# The valid values of every int and float key of the schema (a test fails when one is missing).
RANGES: dict[str, Range] = {
    "seed": Range(low=0, high=2**32, high_open=True, note="numpy's random seeds are 32-bit"),
    "data.image_size": AT_LEAST_1,
    "data.num_workers": NON_NEGATIVE,
    "data.channels": Range(choices=(1, 3), null_means="3 if any image has colour"),
    "data.fraction": Range(low=0, low_open=True, high=1, note="the share of each class pretraining reads"),
    "augment.n_views": Range(low=2, note="a positive pair needs two views of an image"),
    "augment.strength": NON_NEGATIVE,
    "augment.min_scale": Range(low=0, low_open=True, high=1, null_means="the preset's value"),
    "augment.flip_p": PROBABILITY,
    "augment.blur_p": PROBABILITY,
    "augment.solarize_p": PROBABILITY,
    "augment.small_crops": NON_NEGATIVE,
    "augment.small_size": Range(low=1, null_means="the preset's value"),
    "augment.split_count": Range(low=2, null_means="augment.n_views", note="views per client"),
    "augment.cnt_min": AT_LEAST_1,
    "augment.cnt_max": AT_LEAST_1,
    "augment.event_dropout": Range(low=0, high=1, high_open=True),
    "augment.numeric_noise": NON_NEGATIVE,
    "data.num_samples": Range(low=2, null_means="the generator's default"),
    "model.proj_hidden_dim": Range(low=1, null_means="the backbone's feature width"),
    "model.proj_dim": AT_LEAST_1,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": Range(low=0, high=1, high_open=True),
    "optim.warmup_epochs": NON_NEGATIVE,
    "train.batch_size": AT_LEAST_1,  # and at least 2 for a contrastive loss: _validate_loss_and_views
    "train.epochs": AT_LEAST_1,
    "train.max_steps": Range(low=1, null_means="no limit"),
    "train.grad_cache_chunk": Range(low=0, note="0 turns GradCache off, else samples per chunk"),
    "train.checkpoint_every": AT_LEAST_1,
    "train.max_bad_steps": AT_LEAST_1,
    "train.clip_grad_norm": Range(low=0, low_open=True, null_means="no clipping"),
    "train.collective_timeout_s": POSITIVE,
    "log.every": AT_LEAST_1,
    "log.knn_every": Range(low=0, note="0 turns the online kNN evaluation off"),
    "log.online_probe_lr": Range(low=0, low_open=True),
}

# The valid values of the losses' numeric constructor arguments, by argument name; where one loss takes a
# name with another range, LOSS_SPECIFIC_RANGES has it by `loss.option`. The constructors check them too:
# these give the same answer in load_config, before anything is built.
LOSS_OPTION_RANGES: dict[str, Range] = {
    "temperature": POSITIVE,
    "margin": POSITIVE,  # contrastive and triplet; ArcFace's margin is an angle with its own range
    "scale": POSITIVE,
    "init_scale": POSITIVE,
    "init_bias": Range(),
    "num_classes": Range(low=2),
    "embedding_dim": AT_LEAST_1,
    "label_smoothing": Range(low=0, high=1, high_open=True, note="1 would ignore the labels"),
    "neg_count": Range(low=1, null_means="every negative"),
}
LOSS_SPECIFIC_RANGES: dict[str, Range] = {
    "arcface.margin": Range(low=0, high=math.pi / 2, high_open=True, note="an angle in radians, below π/2"),
}


def loss_option_range(loss_name: str, option: str) -> Range | None:
    """The range of option `option` of the loss registered as `loss_name`, or None if it has none."""
    return LOSS_SPECIFIC_RANGES.get(f"{loss_name}.{option}", LOSS_OPTION_RANGES.get(option))


# The special name in train.resume_allow for a change in the number of processes (not a config key).
RESUME_ALLOW_SPECIAL = ("num_processes",)
PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def value_of(config: Config, dotted_key: str) -> Any:
    if "." not in dotted_key:
        return getattr(config, dotted_key)
    section, key = dotted_key.split(".")
    return getattr(getattr(config, section), key)


def validate(config: Config, *, loss_needs_class_labels: bool) -> None:
    """Every rule that needs only the config (and whether its loss classifies against class weights, which
    its class says); raises ConfigError naming the key and the fix."""
    for key, valid in RANGES.items():
        valid.check(key, value_of(config, key))
    name = config.run.name
    if not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"run.name={name!r} must be a plain name: letters, digits, '.', '_', '-' (not '.' or '..', "
            "no '/'), so that the run stays inside run.output_dir; put folders in run.output_dir"
        )
    if config.augment.cnt_min > config.augment.cnt_max:
        raise ConfigError(
            f"augment.cnt_min={config.augment.cnt_min} is more than "
            f"augment.cnt_max={config.augment.cnt_max}: the shortest slice of a sequence cannot be longer "
            "than the longest"
        )
    _validate_loss_and_views(config, loss_needs_class_labels)


def _validate_loss_and_views(config: Config, class_weights: bool) -> None:
    """`class_weights`: the loss classifies each embedding against learnable class weights (its class has
    `needs_class_labels`), so it needs class labels and a single sample is a batch for it."""
    loss = config.loss
    if class_weights and not loss.supervised:
        raise ConfigError(f"loss.name={loss.name} needs class labels: set loss.supervised=true")
    if loss.name == "ntxent":
        if loss.supervised:
            raise ConfigError(
                "loss.supervised=true needs a label-based loss such as loss.name=supcon, not ntxent"
            )
        if config.views_per_sample != 2:
            raise ConfigError(
                f"loss.name=ntxent takes exactly 2 views, the augmentation makes {config.views_per_sample} "
                "(augment.n_views or augment.split_count, + augment.small_crops); use loss.name=supcon, "
                "which with one label per sample is NT-Xent over any number of views"
            )
    if not class_weights and config.train.batch_size < 2:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} must be at least 2 for loss.name={loss.name}: "
            "a contrastive loss needs the other samples of the batch as negatives (only "
            "the losses that compare with class weights, loss.name=arcface or cross_entropy, train on "
            "single samples)"
        )
