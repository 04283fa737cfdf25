"""Run configuration: the schema of every key (`schema`) and reading recipes and overrides (`parse`).

Entry points turn the resulting `Config` into objects at one boundary (`ssl_toolkit.build`); the library
below it receives explicit arguments, never the config.
"""

from ssl_toolkit.config.parse import (
    CommandLineParser,
    add_recipe_arguments,
    config_from_dict,
    load_config,
    packaged_recipes,
    parse_override,
    resolve_recipe,
    save_config,
    to_dict,
)
from ssl_toolkit.config.schema import (
    CHOICES,
    SECTIONS,
    AugmentSection,
    Config,
    ConfigError,
    DataSection,
    LogSection,
    LossSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainSection,
)

__all__ = [
    "CHOICES",
    "SECTIONS",
    "AugmentSection",
    "CommandLineParser",
    "Config",
    "ConfigError",
    "DataSection",
    "LogSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "RunSection",
    "TrainSection",
    "add_recipe_arguments",
    "config_from_dict",
    "load_config",
    "packaged_recipes",
    "parse_override",
    "resolve_recipe",
    "save_config",
    "to_dict",
]
