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

`grid` may also be a list of such mappings: the cells are the union of their combinations, so one factor
at a time around the base recipe (the CoLES study's layout) or a few unlike cells need no full product:

    grid:
      - {loss.name: [coles, ntxent], loss.temperature: [1, 0.2, 0.05]}
      - {loss.name: [coles, ntxent], train.batch_size: [64, 1024]}
      - {loss.name: [contrastive], loss.temperature: [null]}   # null: drop the option, the loss's default

A cell then holds every grid key: the ones its mapping leaves out keep the base recipe's value (with the
study's overrides), and two cells that come out the same are one cell. Tables and plots read these values.

Every key of the file, every override key and every grid key is checked before anything runs; values are
checked by each run itself, so that one invalid value fails its cells and not the study.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_toolkit.config import ConfigError
from ssl_toolkit.config.parse import config_keys, parse_override, resolve_recipe
from ssl_toolkit.eval.defaults import KNN_K, KNN_TEMPERATURE

EVALUATIONS = ("probe", "knn", "boosting")  # boosting: `ssl-toolkit probe --model boosting`
METRICS = (
    "probe_top1",
    "probe_top5",
    "probe_auroc",
    "knn_top1",
    "boosting_top1",
    "boosting_auroc",
    "pretrain_seconds",
    "seconds_per_epoch",
    "views_per_s",
    "peak_memory_mb",
    "final_loss",
)
# The protocol behind each evaluation metric, named under every study's tables.
METRIC_PROTOCOLS = {
    "probe": "linear probe fitted by L-BFGS on frozen h of unaugmented train images (`ssl-toolkit probe`, "
    "protocol lbfgs), scored on the test split",
    "knn": f"weighted kNN (k = {KNN_K}, T = {KNN_TEMPERATURE}) of frozen h, test against train "
    "(`ssl-toolkit knn`)",
    "boosting": "scikit-learn's HistGradientBoosting on frozen h (`ssl-toolkit probe --model boosting`)",
}
STUDY_KEYS = {
    "recipe": "the base recipe, a path or a packaged recipe's name",
    "overrides": "section.key=value for every run",
    "grid": "section.key: [values], every combination a cell; or a list of such mappings, their union",
    "seeds": "the seeds each cell runs with",
    "evaluate": f"evaluations of each finished run: {', '.join(EVALUATIONS)}",
    "tables": "[{metric, rows, columns, where}] or [{metrics: [...], where}] (one row per cell)",
    "plots": "[{metric, x, group, where}]",
    "paired": "[{metric, axis, a, b, by}]: a − b, paired by seed (and the keys in `by`, default all others)",
    "accelerate_config": "an `accelerate launch --config_file` for each run (several processes or GPUs)",
    "memory_limit_mb": "the address space each run may use (CPU): a larger run fails as out_of_memory",
    "probe_weight_decay": "probe every run at this weight decay instead of picking it on validation",
}
AXIS_ROLES = ("rows", "columns", "x", "group", "axis")


@dataclass(frozen=True)
class Cell:
    """One combination of grid values: `overrides` go to its runs, `values` hold every grid key.

    `values` defaults to `overrides` (a full-product grid sets every key); with a list of grids it adds
    the base recipe's value of each key the cell's own mapping leaves out.
    """

    overrides: dict[str, Any]
    values: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        return self.overrides if self.values is None else self.values

    @property
    def name(self) -> str:
        """`key=value,key=value` over every grid key: how results.jsonl and the reports name the cell."""
        return ",".join(f"{key}={value_text(value)}" for key, value in self.settings.items())

    def arguments(self) -> list[str]:
        return [f"{key}={value_text(value)}" for key, value in self.overrides.items()]


@dataclass
class Study:
    source: Path
    recipe: Path
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=lambda: ["probe", "knn"])
    tables: list[dict] = field(default_factory=list)
    plots: list[dict] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)
    accelerate_config: Path | None = None
    memory_limit_mb: int | None = None
    probe_weight_decay: float | None = None
    _base: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

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

    def grids(self) -> list[dict[str, list[Any]]]:
        return [self.grid] if isinstance(self.grid, dict) else list(self.grid)

    def keys(self) -> list[str]:
        """Every grid key, in the order the grids name them."""
        return list(dict.fromkeys(key for grid in self.grids() for key in grid))

    def base_values(self) -> dict[str, Any]:
        """`section.key` → value of the base recipe with the study's overrides (loss options flattened).

        Read once: `cells()` is asked for by the runner, the dry run and the reports alike.
        """
        if self._base is None:
            from ssl_toolkit.config import load_config
            from ssl_toolkit.config.parse import to_dict

            flat = {}
            for section, values in to_dict(load_config(self.recipe, self.overrides, complete=False)).items():
                if isinstance(values, dict):
                    flat.update({f"{section}.{key}": value for key, value in values.items()})
                else:
                    flat[section] = values
            self._base = flat
        return self._base

    def cells(self) -> list[Cell]:
        if isinstance(self.grid, dict):
            return [Cell(overrides) for overrides in grid_combinations(self.grid)]
        keys, base, cells = self.keys(), None, {}
        for grid in self.grids():
            for overrides in grid_combinations(grid):
                if base is None and any(key not in overrides for key in keys):
                    base = self.base_values()
                settings = {key: overrides[key] if key in overrides else base.get(key) for key in keys}
                cell = Cell(overrides, settings)
                cells.setdefault(cell.name, cell)  # the first mapping that reaches a cell runs it
        return list(cells.values())

    def axes(self) -> dict[str, list[Any]]:
        """Every grid key with its values over the cells: what the reports lay out.

        A single mapping keeps its own order; over several, numbers come ascending (None last) and
        anything else in first-seen order.
        """
        if isinstance(self.grid, dict):
            return {key: list(values) for key, values in self.grid.items()}
        axes: dict[str, dict[str, Any]] = {key: {} for key in self.keys()}
        for cell in self.cells():
            for key, value in cell.settings.items():
                axes[key].setdefault(value_text(value), value)
        return {key: _ordered(list(values.values())) for key, values in axes.items()}

    def as_dict(self) -> dict:
        """The parts the reports read (plain data)."""
        spec = {
            "grid": self.axes(),
            "seeds": self.seeds,
            "tables": self.tables,
            "plots": self.plots,
            "paired": self.paired,
        }
        if not isinstance(self.grid, dict):  # the reports lay out only these cells, not the whole product
            spec["cells"] = [cell.settings for cell in self.cells()]
        return spec


def _ordered(values: list[Any]) -> list[Any]:
    """Numbers ascending (None, an option left to the loss's default, last); anything else as seen."""
    present = [value for value in values if value is not None]
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return sorted(present) + [None] * (len(values) - len(present))
    return values


def grid_combinations(grid: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Every assignment of one value to each key of `grid`, in grid order (the last key varying fastest);
    a single {} for an empty grid."""
    for values in itertools.product(*grid.values()):
        yield dict(zip(grid, values, strict=True))


def value_text(value: Any) -> str:
    """A grid value as written in YAML (`true`, `null`, numbers and text as they are): an override's
    right-hand side, which YAML reads back as the same value, and the label the reports give it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def run_name(index: int, cell: Cell, seed: int) -> str:
    """A plain run.name for the cell's run with `seed`: its index first, so names never collide."""
    slug = re.sub(
        r"[^A-Za-z0-9.]+",
        "-",
        "_".join(f"{k.split('.')[-1]}-{value_text(v)}" for k, v in cell.overrides.items()),
    )
    return f"cell{index:03d}_{slug.strip('-')[:80]}_seed{seed}"


def _fail(source: Path, message: str) -> ConfigError:
    return ConfigError(f"study {source}: {message}")


def _check_key(source: Path, key: str, where: str, known: list[str]) -> None:
    if key not in known:
        close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `docs/config.md` lists the keys"
        raise _fail(source, f"unknown config key {key!r} in {where}{hint}")


def _axis_entries(
    source: Path, raw: Any, name: str, required: tuple[str, ...], keys: list[str]
) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise _fail(source, f"{name} must be a list of mappings with keys {', '.join(required)}")
    for entry in raw:
        per_cell = name == "tables" and "metrics" in entry  # one row per cell, one column per metric
        missing = [key for key in (("metrics",) if per_cell else required) if key not in entry]
        if missing:
            raise _fail(source, f"{name} entry {entry} lacks {', '.join(missing)}")
        metrics = entry["metrics"] if per_cell else [entry["metric"]]
        if not isinstance(metrics, list) or not metrics:
            raise _fail(source, f"{name} entry {entry}: metrics must be a non-empty list")
        for metric in metrics:
            if metric not in METRICS:
                raise _fail(source, f"{name} metric {metric!r} is not one of: {', '.join(METRICS)}")
        if "rows" in entry and entry["rows"] == entry.get("columns"):
            raise _fail(source, f"{name} entry {entry} has the same grid key for rows and columns")
        for axis_key in AXIS_ROLES:
            value = entry.get(axis_key)
            if value is not None and value not in keys:
                raise _fail(source, f"{name} {axis_key}={value!r} is not a grid key ({', '.join(keys)})")
        by = entry.get("by")
        if by is not None and (not isinstance(by, list) or any(key not in keys for key in by)):
            raise _fail(source, f"{name} entry {entry}: by must list grid keys ({', '.join(keys)})")
        where = entry.get("where", {})
        if not isinstance(where, dict) or any(key not in keys for key in where):
            raise _fail(
                source, f"{name} entry {entry}: where must map grid keys ({', '.join(keys)}) to values"
            )
    return raw


def _check_grid(source: Path, grid: Any, known: list[str]) -> None:
    if not isinstance(grid, dict) or not grid:
        raise _fail(
            source,
            "needs a non-empty `grid:` mapping config keys to lists of values (or a list of such mappings)",
        )
    for key, values in grid.items():
        _check_key(source, key, "grid", known)
        if key in ("seed", "run.name", "run.output_dir"):
            raise _fail(source, f"grid key {key!r} is set by the study itself (use `seeds:` for seeds)")
        if not isinstance(values, list) or not values:
            raise _fail(source, f"grid key {key!r} needs a non-empty list of values")


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
    for each in grid if isinstance(grid, list) and grid else [grid]:
        _check_grid(source, each, known)
    keys = list(dict.fromkeys(key for each in (grid if isinstance(grid, list) else [grid]) for key in each))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _fail(source, "seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    evaluate = raw.get("evaluate", ["probe", "knn"])
    if not isinstance(evaluate, list) or any(name not in EVALUATIONS for name in evaluate):
        raise _fail(source, f"evaluate must be a list of: {', '.join(EVALUATIONS)}")
    accelerate_config = raw.get("accelerate_config")
    if accelerate_config is not None and not Path(accelerate_config).is_file():
        raise _fail(source, f"accelerate_config {accelerate_config!r} does not exist")
    memory_limit = raw.get("memory_limit_mb")
    if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
        raise _fail(source, f"memory_limit_mb={memory_limit!r} must be a positive number of MiB")
    weight_decay = raw.get("probe_weight_decay")
    is_number = isinstance(weight_decay, int | float) and not isinstance(weight_decay, bool)
    if weight_decay is not None and not (is_number and weight_decay >= 0):
        raise _fail(source, f"probe_weight_decay={weight_decay!r} must be a number ≥ 0, e.g. 1.0e-4")
    study = Study(
        source=source,
        recipe=recipe,
        grid=grid,
        seeds=seeds,
        overrides=overrides,
        evaluate=evaluate,
        tables=_axis_entries(source, raw.get("tables"), "tables", ("metric", "rows", "columns"), keys),
        plots=_axis_entries(source, raw.get("plots"), "plots", ("metric", "x"), keys),
        paired=_axis_entries(source, raw.get("paired"), "paired", ("metric", "axis", "a", "b"), keys),
        accelerate_config=Path(accelerate_config) if accelerate_config is not None else None,
        memory_limit_mb=memory_limit,
        probe_weight_decay=None if weight_decay is None else float(weight_decay),
    )
    if isinstance(grid, list):
        try:  # the cells that leave a key out take the base value: the base must load
            study.base_values()
        except ConfigError as error:
            raise _fail(
                source, f"the base recipe with the study's overrides does not load: {error}"
            ) from None
    return study
