"""Run configuration: dataclasses, YAML loading and `section.key=value` overrides.

This is the only module that parses YAML or command-line overrides. Entry points turn the
resulting `Config` into explicit keyword arguments; the library never receives the config.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or an override that cannot be used as given; the message says how to fix it."""


@dataclass
class RunSection:
    name: str = "run"
    output_dir: str = "runs"


@dataclass
class DataSection:
    name: str = "digits"
    root: str | None = None
    image_size: int = 32
    num_workers: int = 0
    download: bool = False  # torchvision datasets only; never at run time unless asked
    pretrain_split: str = "train"  # e.g. train+unlabeled for stl10


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
    max_bad_steps: int = 5  # consecutive steps with a NaN/inf loss before the run stops
    clip_grad_norm: float | None = None
    channels_last: bool = False
    compile: bool = False  # torch.compile through Accelerate


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


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "seed"}
CHOICES = {
    "augment.device": ("cpu", "gpu", "auto"),
    "optim.name": ("sgd", "adamw", "lars"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "log.trackers": ("wandb", "tensorboard"),
}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` as `annotation`, or raise ConfigError naming `key`."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} is not a {_describe(annotation)}")
    if origin in (list, tuple):
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not a list")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is not a mapping")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}={value!r} is not a bool (use true or false)")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} is not an int")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is not a float")
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/yes/off/on as a bool
            return "no" if value is False else "yes"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{key}={value!r} is not a string")
    return value


def _loss_class(name: str) -> type:
    from ssl_toolkit.losses import loss_class

    try:
        return loss_class(name)
    except ValueError as error:
        raise ConfigError(f"loss.name={name!r}: {error}") from None


def _validate_loss(section: LossSection) -> None:
    constructor = _loss_class(section.name).__init__
    valid = [p for p in inspect.signature(constructor).parameters if p != "self"]
    hints = typing.get_type_hints(constructor)
    for key, value in list(section.options.items()):
        if key not in valid:
            raise ConfigError(
                f"unknown key loss.{key} for loss {section.name!r}; valid keys: "
                + ", ".join(f"loss.{k}" for k in ["name", "supervised", *valid])
            )
        section.options[key] = _coerce(value, hints.get(key, Any), f"loss.{key}")


def _apply(config: Config, dotted_key: str, value: Any, *, source: str) -> None:
    """Set `dotted_key` (e.g. `train.batch_size`) on `config`, checking the key and its type."""
    parts = dotted_key.split(".")
    if len(parts) == 1:
        top = {f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS}
        if dotted_key not in top:
            raise ConfigError(
                f"unknown key {dotted_key!r} in {source}; top-level keys: {', '.join(sorted(top))}; "
                f"sections: {', '.join(SECTIONS)} (write section.key=value)"
            )
        setattr(config, dotted_key, _coerce(value, typing.get_type_hints(Config)[dotted_key], dotted_key))
        return
    if len(parts) != 2:
        raise ConfigError(f"key {dotted_key!r} in {source} must have the form section.key")
    section_name, key = parts
    if section_name not in SECTIONS:
        raise ConfigError(
            f"unknown section {section_name!r} (from key {dotted_key!r} in {source}); "
            f"valid sections: {', '.join(SECTIONS)}"
        )
    section = getattr(config, section_name)
    if isinstance(section, LossSection) and key not in ("name", "supervised"):
        section.options[key] = value  # checked against the chosen loss's signature in _validate
        return
    hints = typing.get_type_hints(type(section))
    if key not in hints or key == "options":
        valid = [f.name for f in dataclasses.fields(section) if f.name != "options"]
        raise ConfigError(
            f"unknown key {dotted_key!r} in {source}; valid keys in {section_name}: "
            + ", ".join(f"{section_name}.{k}" for k in valid)
        )
    coerced = _coerce(value, hints[key], dotted_key)
    allowed = CHOICES.get(dotted_key)
    if allowed is not None:
        for item in coerced if isinstance(coerced, list) else [coerced]:
            if item not in allowed:
                raise ConfigError(f"{dotted_key}={item!r} is not one of: {', '.join(allowed)}")
    setattr(section, key, coerced)


def _validate(config: Config) -> None:
    _validate_loss(config.loss)
    positive = {
        "train.batch_size": config.train.batch_size,
        "train.epochs": config.train.epochs,
        "train.checkpoint_every": config.train.checkpoint_every,
        "train.max_bad_steps": config.train.max_bad_steps,
        "log.every": config.log.every,
        "data.image_size": config.data.image_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(f"train.max_steps={config.train.max_steps} must be positive (or null for no limit)")
    if config.augment.n_views < 2:
        raise ConfigError(f"augment.n_views={config.augment.n_views} must be at least 2")
    if config.data.num_workers < 0:
        raise ConfigError(f"data.num_workers={config.data.num_workers} must be 0 or more")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `section.key=value` into the key and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must have the form section.key=value (e.g. train.batch_size=64)"
        )
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> Config:
    config = Config()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping of sections, got {type(raw).__name__}")
    for key, value in raw.items():
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"section {key!r} in {source} must be a mapping of keys to values")
            if key == "loss" and "name" in value:  # the name decides which option keys are valid
                _apply(config, "loss.name", value["name"], source=source)
            for sub_key, sub_value in value.items():
                if key == "loss" and sub_key == "options" and isinstance(sub_value, dict):
                    config.loss.options.update(sub_value)
                else:
                    _apply(config, f"{key}.{sub_key}", sub_value, source=source)
        else:
            _apply(config, key, value, source=source)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a recipe, apply `section.key=value` overrides, and validate the result.

    Raises:
        ConfigError: a missing file, unknown key, wrong type or invalid value; the message names it.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} does not exist; recipes ship in recipes/*.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {error}") from None
        source = str(path)
    config = config_from_dict(raw, source=source)
    for text in overrides:
        key, value = parse_override(text)
        _apply(config, key, value, source="command-line overrides")
    _validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data, with the loss options flattened into the loss section."""
    data = dataclasses.asdict(config)
    loss = data.pop("loss")
    data["loss"] = {"name": loss["name"], "supervised": loss["supervised"], **loss["options"]}
    ordered = {"seed": data.pop("seed")}
    ordered.update({name: data[name] for name in SECTIONS})
    return ordered


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
