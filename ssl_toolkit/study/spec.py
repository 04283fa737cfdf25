"""A study file: a base recipe, overrides for every run, a grid of cells, seeds, evaluations, tables, plots.

    recipe: recipes/fashion_mnist_simclr_cpu.yaml   # base recipe (a path or a packaged recipe's name)
    overrides: [train.epochs=2, data.fraction=0.2]  # applied to every run
    grid:                                           # every combination of values is a cell
      loss.name: [coles, contrastive]
      loss.temperature: [0.05, 0.2]
    seeds: [0, 1, 2]                                # each cell runs once per seed
    evaluate: [probe, knn]                          # what runs on each finished run
    tables:                                         # rows × columns, one metric each
      - {metric: probe_auroc, rows: loss.name, columns: loss.temperature}

Every key of the file, every override key and every grid key is checked before anything runs; values are
checked by each run itself, so that one invalid value fails its cells and not the study.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_toolkit.config import ConfigError
from ssl_toolkit.config.parse import config_keys, parse_override, resolve_recipe

EVALUATIONS = ("probe", "knn")
METRICS = (
    "probe_top1",
    "probe_top5",
    "probe_auroc",
    "knn_top1",
    "pretrain_seconds",
    "seconds_per_epoch",
    "views_per_s",
    "peak_memory_mb",
    "final_loss",
)
STUDY_KEYS = {
    "recipe": "the base recipe, a path or a packaged recipe's name",
    "overrides": "section.key=value for every run",
    "grid": "section.key: [values], every combination a cell",
    "seeds": "the seeds each cell runs with",
    "evaluate": f"evaluations of each finished run: {', '.join(EVALUATIONS)}",
    "tables": "[{metric, rows, columns}]",
    "plots": "[{metric, x, group}]",
    "paired": "[{metric, axis, a, b}]: a − b, paired by seed",
    "accelerate_config": "an `accelerate launch --config_file` for each run (several processes or GPUs)",
    "memory_limit_mb": "the address space each run may use (CPU): a larger run fails as out of memory",
}


@dataclass(frozen=True)
class Cell:
    """One combination of grid values, in the grid's key order."""

    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        """`key=value,key=value`: how results.jsonl and the reports name the cell."""
        return ",".join(f"{key}={_scalar_text(value)}" for key, value in self.overrides.items())

    def arguments(self) -> list[str]:
        return [f"{key}={_scalar_text(value)}" for key, value in self.overrides.items()]


@dataclass
class Study:
    source: Path
    recipe: Path
    grid: dict[str, list[Any]]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=lambda: list(EVALUATIONS))
    tables: list[dict] = field(default_factory=list)
    plots: list[dict] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)
    accelerate_config: Path | None = None
    memory_limit_mb: int | None = None

    @property
    def name(self) -> str:
        return self.source.stem

    def logs_to_wandb(self) -> bool:
        """Whether the base recipe with the study's overrides logs to W&B."""
        from ssl_toolkit.config import load_config

        try:
            return "wandb" in load_config(self.recipe, self.overrides).log.trackers
        except ConfigError:
            return False

    def cells(self) -> list[Cell]:
        keys = list(self.grid)
        return [
            Cell(dict(zip(keys, values, strict=True))) for values in itertools.product(*self.grid.values())
        ]

    def as_dict(self) -> dict:
        """The parts the reports read (plain data)."""
        return {
            "grid": self.grid,
            "seeds": self.seeds,
            "tables": self.tables,
            "plots": self.plots,
            "paired": self.paired,
        }


def _scalar_text(value: Any) -> str:
    """A grid value as an override's right-hand side (YAML reads it back as the same value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def run_name(index: int, cell: Cell, seed: int) -> str:
    """A plain run.name for the cell's run with `seed`: its index first, so names never collide."""
    slug = re.sub(
        r"[^A-Za-z0-9.]+", "-", "_".join(f"{k.split('.')[-1]}-{v}" for k, v in cell.overrides.items())
    )
    return f"cell{index:03d}_{slug.strip('-')[:80]}_seed{seed}"


def _fail(source: Path, message: str) -> ConfigError:
    return ConfigError(f"study {source}: {message}")


def _check_key(source: Path, key: str, where: str, known: list[str]) -> None:
    if key not in known:
        close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `docs/config.md` lists the keys"
        raise _fail(source, f"unknown config key {key!r} in {where}{hint}")


def _axis_entries(source: Path, raw: Any, name: str, required: tuple[str, ...], grid: dict) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise _fail(source, f"{name} must be a list of mappings with keys {', '.join(required)}")
    for entry in raw:
        missing = [key for key in required if key not in entry]
        if missing:
            raise _fail(source, f"{name} entry {entry} lacks {', '.join(missing)}")
        if entry["metric"] not in METRICS:
            raise _fail(source, f"{name} metric {entry['metric']!r} is not one of: {', '.join(METRICS)}")
        if "rows" in entry and entry["rows"] == entry.get("columns"):
            raise _fail(source, f"{name} entry {entry} has the same grid key for rows and columns")
        for axis_key in ("rows", "columns", "x", "group", "axis"):
            value = entry.get(axis_key)
            if value is not None and value not in grid:
                raise _fail(source, f"{name} {axis_key}={value!r} is not a grid key ({', '.join(grid)})")
    return raw


def load_study(path: str | Path) -> Study:
    """Read and check a study file; raises ConfigError naming the key and the fix."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"study file {str(source)!r} does not exist")
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"study {source} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise _fail(source, "must be a mapping of the keys " + ", ".join(STUDY_KEYS))
    unknown = [key for key in raw if key not in STUDY_KEYS]
    if unknown:
        listed = "; ".join(f"{key}: {meaning}" for key, meaning in STUDY_KEYS.items())
        raise _fail(source, f"unknown key {unknown[0]!r}; the keys are {listed}")
    if "recipe" not in raw:
        raise _fail(source, "needs `recipe:`, the base recipe every run starts from")
    recipe = resolve_recipe(raw["recipe"])
    known = config_keys()
    overrides = [str(text) for text in raw.get("overrides") or []]
    for text in overrides:
        key, _ = parse_override(text)
        _check_key(source, key, "overrides", known)
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise _fail(source, "needs a non-empty `grid:` mapping config keys to lists of values")
    for key, values in grid.items():
        _check_key(source, key, "grid", known)
        if key in ("seed", "run.name", "run.output_dir"):
            raise _fail(source, f"grid key {key!r} is set by the study itself (use `seeds:` for seeds)")
        if not isinstance(values, list) or not values:
            raise _fail(source, f"grid key {key!r} needs a non-empty list of values")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _fail(source, "seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    evaluate = raw.get("evaluate", list(EVALUATIONS))
    if not isinstance(evaluate, list) or any(name not in EVALUATIONS for name in evaluate):
        raise _fail(source, f"evaluate must be a list of: {', '.join(EVALUATIONS)}")
    accelerate_config = raw.get("accelerate_config")
    if accelerate_config is not None and not Path(accelerate_config).is_file():
        raise _fail(source, f"accelerate_config {accelerate_config!r} does not exist")
    memory_limit = raw.get("memory_limit_mb")
    if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
        raise _fail(source, f"memory_limit_mb={memory_limit!r} must be a positive number of MiB")
    return Study(
        source=source,
        recipe=recipe,
        grid=grid,
        seeds=seeds,
        overrides=overrides,
        evaluate=evaluate,
        tables=_axis_entries(source, raw.get("tables"), "tables", ("metric", "rows", "columns"), grid),
        plots=_axis_entries(source, raw.get("plots"), "plots", ("metric", "x"), grid),
        paired=_axis_entries(source, raw.get("paired"), "paired", ("metric", "axis", "a", "b"), grid),
        accelerate_config=Path(accelerate_config) if accelerate_config is not None else None,
        memory_limit_mb=memory_limit,
    )
