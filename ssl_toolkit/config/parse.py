"""Reading a config: YAML recipes (a path or the name of a packaged recipe) and `section.key=value` overrides.

This is the only module that parses YAML or command-line overrides. Every value is type-checked against
the schema's annotation and every key against the schema; the result is validated before it is returned.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ssl_toolkit.config.schema import (
    CHOICES,
    RESUME_ALLOW_SPECIAL,
    SECTIONS,
    Config,
    ConfigError,
    LossSection,
    loss_option_range,
    validate,
)


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


def _validate_loss(section: LossSection) -> type:
    """Each option is an argument of the loss's constructor, of its type and in its range; returns the
    loss's class."""
    from ssl_toolkit.losses import registered_name

    loss_class = _loss_class(section.name)
    name = registered_name(section.name)
    constructor = loss_class.__init__
    valid = [p for p in inspect.signature(constructor).parameters if p != "self"]
    hints = typing.get_type_hints(constructor)
    for key, value in list(section.options.items()):
        if key not in valid:
            raise ConfigError(
                f"unknown key loss.{key} for loss {section.name!r}; valid keys: "
                + ", ".join(f"loss.{k}" for k in ["name", "supervised", *valid])
                + f" (a value the recipe gives another loss is dropped with loss.{key}=null)"
            )
        section.options[key] = _coerce(value, hints.get(key, Any), f"loss.{key}")
        valid_range = loss_option_range(name, key)
        if valid_range is not None:
            valid_range.check(f"loss.{key}", section.options[key])
    return loss_class


def config_keys() -> list[str]:
    """Every key of the schema: top-level keys and `section.key`, with the options of every loss."""
    from ssl_toolkit.losses import LOSSES

    keys = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    for section_name in SECTIONS:
        section = getattr(Config(), section_name)
        keys += [f"{section_name}.{f.name}" for f in dataclasses.fields(section) if f.name != "options"]
    for loss in LOSSES.values():
        options = [p for p in inspect.signature(loss.__init__).parameters if p != "self"]
        keys += [f"loss.{option}" for option in options if f"loss.{option}" not in keys]
    return keys


def coerce_value(key: str, value: Any) -> Any:
    """`value` as config key `key` (`section.key`, or a top-level key) reads it from a recipe or an override:
    `1e-3` a float, `32` for a float key 32.0. A loss option takes the type that the losses which have it
    give it (unchanged where they differ), and null drops it, as an override does.

    Raises:
        ConfigError: an unknown key, or a value that is not of the key's type; the message names it.
    """
    section_name, _, name = key.rpartition(".")
    if not section_name:
        hints = typing.get_type_hints(Config)
        if key not in hints or key in SECTIONS:
            raise ConfigError(f"unknown config key {key!r}")
        return _coerce(value, hints[key], key)
    if section_name not in SECTIONS:
        raise ConfigError(f"unknown config key {key!r}")
    hints = typing.get_type_hints(type(getattr(Config(), section_name)))
    if name in hints and name != "options":
        return _coerce(value, hints[name], key)
    if section_name != "loss":
        raise ConfigError(f"unknown config key {key!r}")
    if value is None:
        return None
    from ssl_toolkit.losses import LOSSES

    annotations = [
        typing.get_type_hints(loss.__init__).get(name, Any)
        for loss in LOSSES.values()
        if name in inspect.signature(loss.__init__).parameters
    ]
    if not annotations:
        raise ConfigError(f"unknown config key {key!r}")
    typed = [annotation for annotation in dict.fromkeys(annotations) if annotation is not Any]
    return _coerce(value, typed[0], key) if len(typed) == 1 else value


def _validate_resume_allow(allowed: list[str]) -> None:
    valid = [*config_keys(), *RESUME_ALLOW_SPECIAL]
    for item in allowed:
        if item not in valid:
            raise ConfigError(
                f"train.resume_allow has {item!r}, which is neither a config key nor "
                f"{' or '.join(RESUME_ALLOW_SPECIAL)}; valid items: {', '.join(valid)}"
            )


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
        if value is None:  # `loss.temperature=null`: drop the option, the loss's own default applies
            section.options.pop(key, None)
        else:
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


def packaged_recipes() -> dict[str, Path]:
    """The recipes that ship inside the package, by name (file name without `.yaml`)."""
    folder = importlib.resources.files("ssl_toolkit") / "recipes"
    return {
        Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")
    }


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe file: `recipe` itself when it is a file, else the packaged recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = packaged_recipes()
    if path.stem in shipped and path.name in (path.stem, f"{path.stem}.yaml"):
        return shipped[path.stem]
    raise ConfigError(
        f"recipe {str(recipe)!r} does not exist; give a path to a YAML file or the name of a packaged "
        f"recipe: {', '.join(sorted(shipped))} (`ssl-toolkit recipes` lists them)"
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, complete: bool = True
) -> Config:
    """Read a recipe (a path, or a packaged recipe's name), apply `section.key=value` overrides, validate.

    `complete=False` checks keys and types only, not how the values fit together: a study's base, which
    its cells complete (e.g. `loss.supervised=true` before each cell names its loss).

    Raises:
        ConfigError: a missing file, unknown key, wrong type or invalid value; the message names it.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = resolve_recipe(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {error}") from None
        source = str(path)
    config = config_from_dict(raw, source=source)
    for text in overrides:
        key, value = parse_override(text)
        _apply(config, key, value, source="command-line overrides")
    if complete:
        loss_class = _validate_loss(config.loss)
        _validate_resume_allow(config.train.resume_allow)
        validate(config, loss_needs_class_labels=getattr(loss_class, "needs_class_labels", False))
    return config


class CommandLineParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line naming the command and its `--help`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A recipe and its overrides as command-line arguments (of `ssl-toolkit pretrain` and
    `python -m ssl_toolkit.pretrain`)."""
    parser.add_argument("recipe", help="YAML recipe or packaged recipe name, e.g. quickstart")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.batch_size=64")
    return parser


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
