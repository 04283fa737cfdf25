"""A study's results as the reports read them: results.jsonl, the runs to report, and the grid they lie on.

A result is the dict of one line of `results.jsonl`, one per finished (cell, seed): its `cell`, grid
`overrides`, `seed`, `status`, `message`, `run_dir` and metrics. When one (cell, seed) appears more than
once (a study resumed or re-run), its last line is the one reported. A table or a plot then selects runs by
their overrides (`runs_where`, `runs_matching`) and lays them out on the planned cells (`planned_cells`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssl_toolkit.study.spec import METRICS, grid_combinations, value_text

RUN_FIELDS = ("cell", "overrides", "seed", "status", "message", "run_dir")


def read_results(path: str | Path) -> list[dict]:
    """The result dicts of a `results.jsonl`, in file order; [] when it does not exist yet.

    A last line cut short (the study killed while appending) is skipped rather than failing the report.
    """
    path = Path(path)
    if not path.exists():
        return []
    results = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
    return results


def latest_runs(results: Iterable[Mapping]) -> list[Mapping]:
    """One result per (cell, seed): the last one written, at the position of the first."""
    latest: dict[tuple, Mapping] = {}
    for result in results:
        latest[cell_name(result), value_key(result.get("seed"))] = result
    return list(latest.values())


def metric_names(results: Iterable[Mapping]) -> list[str]:
    """Every metric seen in `results`: the study metrics in their order, then any others sorted."""
    seen = set()
    for result in results:
        seen.update(key for key, value in result.items() if key not in RUN_FIELDS and is_number(value))
    return [metric for metric in METRICS if metric in seen] + sorted(seen.difference(METRICS))


def cell_name(result: Mapping) -> str:
    """The result's `cell`, or (for a result without one) `key=value,...` over its overrides."""
    if result.get("cell") is not None:
        return str(result["cell"])
    overrides = result.get("overrides") or {}
    return ",".join(f"{key}={value_text(value)}" for key, value in overrides.items())


def is_number(value: Any) -> bool:
    """Whether `value` is an int or a float; booleans are not numbers here."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None (not measured)."""
    return float(value) if is_number(value) and math.isfinite(value) else None


def value_key(value: Any) -> tuple:
    """A comparable form of a grid value: 1 and 1.0 are the same value, True and 1 are not."""
    if isinstance(value, bool):
        return ("bool", value)
    if is_number(value):
        return ("number", float(value))
    if value is None:
        return ("null",)
    return ("text", str(value))


def same_value(left: Any, right: Any) -> bool:
    return value_key(left) == value_key(right)


# --- selecting runs ---------------------------------------------------------------------------------


def runs_matching(runs: Iterable[Mapping], values: Mapping[str, Any]) -> list[Mapping]:
    """The runs whose overrides hold every one of `values`."""
    chosen = []
    for run in runs:
        overrides = run.get("overrides") or {}
        if all(key in overrides and same_value(overrides[key], value) for key, value in values.items()):
            chosen.append(run)
    return chosen


def runs_where(runs: Iterable[Mapping], where: Mapping[str, Any] | None) -> list[Mapping]:
    """The runs a table's or plot's `where` keeps: each key at its value, or at any value of a list
    (`loss.temperature: [0.05, null]` keeps the softmax losses at 0.05 and the margin loss beside them)."""
    chosen = list(runs)
    for key, wanted in (where or {}).items():
        options = wanted if isinstance(wanted, list) else [wanted]
        chosen = [run for run in chosen if any(runs_matching([run], {key: option}) for option in options)]
    return chosen


def follows_an_axis(planned: Sequence[Mapping], key: str, axes: Sequence[str]) -> bool:
    """Whether `key`'s value over the planned cells is decided by one of `axes` (SupCon's temperature by
    `loss.name`, when cross-entropy has none): then it splits nothing a table or plot already shows."""
    return any(_decides(planned, axis, key) for axis in axes)


def _decides(planned: Sequence[Mapping], axis: str, key: str) -> bool:
    """Whether every planned cell sets `axis`, its value fixes `key`'s, and `key` takes several values."""
    key_by_axis: dict[tuple, tuple] = {}
    for cell in planned:
        settings = cell["overrides"]
        if axis not in settings:
            return False
        value = value_key(settings.get(key))
        if key_by_axis.setdefault(value_key(settings[axis]), value) != value:
            return False
    return len(set(key_by_axis.values())) > 1


# --- the planned grid -------------------------------------------------------------------------------


def value_combinations(grid: Mapping[str, Sequence], keys: Sequence[str]) -> list[dict]:
    """Every assignment of `grid`'s values to `keys`, in grid order (the last key varying fastest);
    one {} if `keys` is empty."""
    return list(grid_combinations({key: grid[key] for key in keys}))


def planned_cells(
    grid: Mapping[str, Sequence], cells: Sequence[Mapping] | None, where: Mapping | None
) -> list[dict]:
    """The planned cells that `where` keeps, shaped as runs (`{"overrides": values}`) so that the
    selections above read them: `cells` (a grid of several mappings), or every combination of the grid."""
    settings = cells if cells is not None else value_combinations(grid, list(grid))
    return runs_where([{"overrides": dict(values)} for values in settings], where)


def grid_of_runs(runs: Sequence[Mapping], grid: Mapping[str, Sequence] | None) -> dict[str, list]:
    """`grid`, or one read off the runs' overrides: values in first-seen order, numbers sorted."""
    if grid is not None:
        return {key: list(values) for key, values in grid.items()}
    seen: dict[str, dict[tuple, Any]] = {}
    for run in runs:
        for key, value in (run.get("overrides") or {}).items():
            seen.setdefault(key, {}).setdefault(value_key(value), value)
    derived = {}
    for key, by_key in seen.items():
        values = list(by_key.values())
        derived[key] = sorted(values) if all(is_number(value) for value in values) else values
    return derived


def check_grid_keys(grid: Mapping[str, Sequence], keys: Mapping[str, str]) -> None:
    """Raise ValueError naming the role (`rows`, `x`, ...) of any key in `keys` that is not a grid key."""
    for role, key in keys.items():
        if key not in grid:
            raise ValueError(f"{role} key {key!r} is not a grid key; grid keys: {', '.join(grid) or 'none'}")
