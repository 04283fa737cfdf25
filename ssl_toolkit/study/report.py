"""A study's report from its results: summary.json, results.csv, tables.md and PNG plots.

Every function takes the study's results (the dicts of `results.jsonl`, one per finished (cell, seed)) and
parts of its spec as plain dicts, so a report can be rebuilt from the files alone at any time, also while
the study still runs. Only runs whose status is `ok` contribute values; failed runs are counted and shown
as failures ("out of memory", "diverged", "error"), the way the CoLES paper marks them. When one
(cell, seed) appears more than once (a study resumed or re-run), its last line is the one reported.

summary.json holds `{"cells": summarize(...), "paired": [paired_difference(...), ...]}` as strict JSON.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_toolkit.study.spec import METRIC_PROTOCOLS, METRICS

# The metrics a study run measures, in the order tables, CSV columns and summaries list them.
STANDARD_METRICS = METRICS
RUN_FIELDS = ("cell", "overrides", "seed", "status", "message", "run_dir")
OK = "ok"
FAILURE_PHRASES = {"out_of_memory": "out of memory", "diverged": "diverged", "error": "error"}
CONFIDENCE = 0.95


# --- reading results --------------------------------------------------------------------------------


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
        latest[_run_identity(result)] = result
    return list(latest.values())


def metric_names(results: Iterable[Mapping]) -> list[str]:
    """Every metric seen in `results`: the standard ones in their order, then any others sorted."""
    seen = set()
    for result in results:
        seen.update(key for key, value in result.items() if key not in RUN_FIELDS and _is_number(value))
    return [m for m in STANDARD_METRICS if m in seen] + sorted(seen.difference(STANDARD_METRICS))


def metric_decimals(metric: str) -> int:
    """Decimals a metric is shown with: 1 for seconds, 0 for memory and throughput, 4 for AUROC (which sits
    near 1 for a probe on ten classes), 3 otherwise."""
    if metric.endswith("seconds") or metric.startswith("seconds_"):
        return 1
    if metric.endswith("auroc"):
        return 4
    if metric.endswith(("_mb", "_per_s")):
        return 0
    return 3


# --- per-cell statistics ----------------------------------------------------------------------------


@dataclass
class CellStatistics:
    """A metric over the seeds of one cell: values of the ok runs that measured it, and the failures."""

    values: list[float] = field(default_factory=list)
    runs: int = 0
    ok_runs: int = 0
    failures: Counter = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1): None below two values, where it is undefined."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def cell_statistics(runs: Iterable[Mapping], metric: str) -> CellStatistics:
    """`metric` over `runs` (the seeds of one cell); non-finite values count as not measured."""
    cell = CellStatistics()
    for run in runs:
        cell.runs += 1
        status = run.get("status")
        if status != OK:
            cell.failures[status] += 1
            continue
        cell.ok_runs += 1
        value = _finite(run.get(metric))
        if value is not None:
            cell.values.append(value)
    return cell


def summarize(results: Iterable[Mapping], metrics: Sequence[str] | None = None) -> dict:
    """Per cell: its overrides, status counts and, per metric, mean, sample std (ddof=1) and n.

    Returns `{cell: {"overrides", "statuses", "metrics": {metric: {"mean", "std", "n"}}}}` with cells in
    the order they first appear. `n` counts the seeds whose status is ok and that measured the metric;
    `std` is None when n < 2 and `mean` None when n = 0, so the dict is strict JSON. `metrics` defaults to
    every metric seen.
    """
    runs = latest_runs(results)
    metrics = metric_names(runs) if metrics is None else list(metrics)
    by_cell: dict[str, list[Mapping]] = {}
    for run in runs:
        by_cell.setdefault(_cell_name(run), []).append(run)
    summary = {}
    for cell, cell_runs in by_cell.items():
        per_metric = {}
        for metric in metrics:
            stats = cell_statistics(cell_runs, metric)
            per_metric[metric] = {"mean": stats.mean, "std": stats.std, "n": stats.n}
        summary[cell] = {
            "overrides": _strict_json(dict(cell_runs[0].get("overrides") or {})),
            "statuses": dict(Counter(str(run.get("status")) for run in cell_runs)),
            "metrics": per_metric,
        }
    return summary


# --- markdown tables --------------------------------------------------------------------------------


def markdown_table(
    results: Iterable[Mapping],
    table: Mapping,
    grid: Mapping[str, Sequence],
    *,
    decimals: int | None = None,
    cells: Sequence[Mapping] | None = None,
) -> str:
    """`table["metric"]` as markdown: rows and columns are the values of two grid keys, in grid order.

    Each cell reads `0.876 ± 0.030` (mean ± sample std over its seeds); a line under the table gives n,
    and a cell whose n differs says so, as in `0.880 ± 0.010 (n=2)`. A cell whose runs all failed names the
    failure (`out of memory`, `diverged`, `error`); one with some failed runs adds them, as in
    `0.880 ± 0.010 (n=2; 1 diverged)`. Any other grid keys give one table per combination of their values,
    under a heading naming it; `table["where"]` ({key: value}) keeps only the runs with those values.
    `cells` (the planned cells' values, for a grid of several mappings) leaves out the combinations, rows
    and columns that no planned cell lies in; without it every value of the grid is laid out. A cell
    planned but without a run yet reads `not run`. A table with `metrics` (a list) instead has one row per
    cell and one column per metric. Decimals follow `metric_decimals` unless given.
    """
    runs = _where(latest_runs(results), table.get("where"))
    if "metrics" in table:
        return _per_cell_table(runs, table["metrics"], grid, decimals)
    metric, row_key, column_key = table["metric"], table["rows"], table["columns"]
    _check_keys(grid, {"rows": row_key, "columns": column_key})
    if row_key == column_key:
        raise ValueError(f"table of {metric}: rows and columns are both {row_key!r}")
    decimals = metric_decimals(metric) if decimals is None else decimals
    lines = [f"### {metric} — rows `{row_key}`, columns `{column_key}`" + _where_text(table)]
    where = table.get("where") or {}
    planned = _planned(grid, cells, where)
    other_keys = [
        key
        for key in grid
        if key not in (row_key, column_key)
        and not _follows(planned, key, (row_key, column_key))
        and not (key in where and not isinstance(where[key], list))  # the heading names it already
    ]
    for fixed in _combinations(grid, other_keys):
        chosen, in_table = _matching(runs, fixed), _matching(planned, fixed)
        rows = [value for value in grid[row_key] if _matching(in_table, {row_key: value})]
        columns = [value for value in grid[column_key] if _matching(in_table, {column_key: value})]
        if not rows or not columns:
            continue
        if fixed:
            lines += [
                "",
                "#### " + ", ".join(f"{key} = {_value_label(value)}" for key, value in fixed.items()),
            ]
        cells = {
            (row, column): cell_statistics(
                _matching(chosen, {row_key: rows[row], column_key: columns[column]}), metric
            )
            for row in range(len(rows))
            for column in range(len(columns))
        }
        usual_n = _usual_n(cells.values())
        header = [f"{row_key} \\ {column_key}", *(_value_label(value) for value in columns)]
        lines += ["", _markdown_row(header), "|" + "---|" + "---:|" * len(columns)]
        for row, row_value in enumerate(rows):
            texts = [
                _cell_text(cells[row, column], decimals, usual_n)
                if _matching(in_table, {row_key: row_value, column_key: columns[column]})
                else ""  # no cell planned here (a grid of several mappings)
                for column in range(len(columns))
            ]
            lines.append(_markdown_row([_value_label(row_value), *texts]))
        lines += ["", _n_line(cells.values(), usual_n)]
    return "\n".join(lines) + "\n"


def _per_cell_table(
    runs: list[Mapping], metrics: Sequence[str], grid: Mapping[str, Sequence], decimals: int | None
) -> str:
    """One row per cell (named by the grid keys that vary), one column per metric."""
    by_cell: dict[str, list[Mapping]] = {}
    for run in runs:
        by_cell.setdefault(_cell_name(run), []).append(run)
    varying = [key for key, values in grid.items() if len(values) > 1] or list(grid)
    lines = ["### " + ", ".join(metrics) + " — one row per cell"]
    header = ["cell", *metrics]
    lines += ["", _markdown_row(header), "|" + "---|" + "---:|" * len(metrics)]
    everything = []
    for cell_runs in by_cell.values():
        overrides = cell_runs[0].get("overrides") or {}
        label = ", ".join(f"{key}={_value_label(overrides[key])}" for key in varying if key in overrides)
        stats = [cell_statistics(cell_runs, metric) for metric in metrics]
        everything += stats
        usual_n = _usual_n(stats)
        texts = [
            _cell_text(each, metric_decimals(metric) if decimals is None else decimals, usual_n)
            for metric, each in zip(metrics, stats, strict=True)
        ]
        lines.append(_markdown_row([label or _cell_name(cell_runs[0]), *texts]))
    lines += ["", _n_line(everything, _usual_n(everything))]
    return "\n".join(lines) + "\n"


def _where_text(entry: Mapping) -> str:
    where = entry.get("where") or {}
    return "".join(f", {key} = {_where_label(value)}" for key, value in where.items())


def _where_label(value: Any) -> str:
    return " or ".join(map(_value_label, value)) if isinstance(value, list) else _value_label(value)


def _cell_text(stats: CellStatistics, decimals: int, usual_n: int | None) -> str:
    failures = [f"{count} {_failure_phrase(status)}" for status, count in stats.failures.most_common()]
    if stats.n == 0 and stats.runs and stats.ok_runs == 0:
        # Every run failed: the failure is the result.
        if len(stats.failures) == 1:
            return _failure_phrase(next(iter(stats.failures)))
        return ", ".join(failures)
    if stats.n == 0:
        value, notes = ("not run" if stats.runs == 0 else "not measured"), failures
    else:
        value = _format_number(stats.mean, decimals)
        if stats.std is not None:
            value += " ± " + _format_number(stats.std, decimals)
        notes = ([f"n={stats.n}"] if stats.n != usual_n else []) + failures
    return f"{value} ({'; '.join(notes)})" if notes else value


def _usual_n(cells: Iterable[CellStatistics]) -> int | None:
    """The most common n among the cells that have a value (the larger on a tie); None if none has."""
    counts = Counter(cell.n for cell in cells if cell.n)
    return max(counts, key=lambda n: (counts[n], n)) if counts else None


def _n_line(cells: Iterable[CellStatistics], usual_n: int | None) -> str:
    cells = list(cells)
    if usual_n is None:
        return "no successful runs measured this metric"
    line = "single seed (n = 1), no std" if usual_n == 1 else f"mean ± sample std over n = {usual_n} seeds"
    if any(cell.n and cell.n != usual_n for cell in cells):
        line += "; (n=…) marks cells with another number of seeds"
    return line


def _markdown_row(texts: Iterable[str]) -> str:
    return "| " + " | ".join(text.replace("|", "\\|") for text in texts) + " |"


# --- CSV --------------------------------------------------------------------------------------------


def results_csv(results: Iterable[Mapping], grid: Mapping[str, Sequence] | None = None) -> str:
    """Every result as one CSV row: cell, each grid key, seed, status, message, run_dir, every metric.

    Grid keys come in grid order when `grid` is given (then any other override keys seen); metrics in
    `metric_names` order. Missing values are empty cells; booleans are written `true`/`false` as in YAML.
    """
    results = list(results)
    keys = list(grid or {})
    for result in results:
        keys += [key for key in result.get("overrides") or {} if key not in keys]
    metrics = metric_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cell", *keys, "seed", "status", "message", "run_dir", *metrics])
    for result in results:
        overrides = result.get("overrides") or {}
        row = [_cell_name(result)]
        row += [_value_label(overrides[key]) if key in overrides else "" for key in keys]
        row += [_csv_value(result.get(name)) for name in ("seed", "status", "message", "run_dir", *metrics)]
        writer.writerow(row)
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    return "" if value is None else _value_label(value)


# --- plots ------------------------------------------------------------------------------------------


def plot_metric(
    results: Iterable[Mapping],
    metric: str,
    x: str,
    group: str | None,
    path: str | Path,
    *,
    grid: Mapping[str, Sequence] | None = None,
    where: Mapping[str, Any] | None = None,
    cells: Sequence[Mapping] | None = None,
) -> Path:
    """PNG of `metric` (mean, sample-std error bars) against grid key `x`, one line per `group` value.

    `where` ({key: value}) keeps only the runs with those values. With `cells` (the planned cells'
    values, for a grid of several mappings), lines whose planned cells sit at a single x value, and x
    values no line reaches, are left out.

    The x axis is categorical in grid order, unless every value is a number: then numeric, on a log scale
    when all are positive and span at least 100×. Any other grid keys give one line per combination too.
    A point whose runs all failed is left out and marked by a cross on the x axis and in the legend; a point
    with some failed runs is annotated with them. Without `grid`, the keys and values come from `results`.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    runs = _where(latest_runs(results), where)
    grid = _grid_from(runs, grid)
    _check_keys(grid, {"x": x} | ({"group": group} if group else {}))
    if group == x:
        raise ValueError(f"plot of {metric}: x and group are both {x!r}")
    x_values = list(grid[x])
    planned = _planned(grid, cells, where)
    line_keys = ([group] if group else []) + [
        key for key in grid if key not in (x, group) and not _follows(planned, key, (group,) if group else ())
    ]
    # Only lines that have runs at two x values or more: one point is no line (a grid of several mappings
    # crosses each axis with the others' base values).
    lines = [
        fixed
        for fixed in _combinations(grid, line_keys)
        if len({_value_key(cell["overrides"][x]) for cell in _matching(planned, fixed)})
        >= min(2, len(x_values))
    ]
    x_values = [
        value for value in x_values if any(_matching(planned, {**fixed, x: value}) for fixed in lines)
    ]
    numeric = bool(x_values) and all(_is_number(value) for value in x_values)
    log_scale = numeric and min(x_values) > 0 and max(x_values) / min(x_values) >= 100

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    on_x_axis = blended_transform_factory(axes.transData, axes.transAxes)
    any_failed = False
    for index, fixed in enumerate(lines):
        # Categorical lines are spread a little sideways so that their error bars do not overlap.
        shift = (
            0.0
            if numeric or len(lines) == 1
            else (index - (len(lines) - 1) / 2) * min(0.3 / len(lines), 0.08)
        )
        positions, means, stds, failed = [], [], [], []
        colour = f"C{index % 10}"
        for position, value in enumerate(x_values):
            stats = cell_statistics(_matching(runs, {**fixed, x: value}), metric)
            at = (value if numeric else position) + shift
            if stats.n:
                positions.append(at)
                means.append(stats.mean)
                stds.append(stats.std or 0.0)
                if stats.failures:
                    note = ", ".join(f"{c} {_failure_phrase(s)}" for s, c in stats.failures.most_common())
                    axes.annotate(
                        note,
                        (at, stats.mean),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                        color=colour,
                    )
            elif stats.failures:
                failed.append(
                    f"{_value_label(value)}: {_failure_phrase(stats.failures.most_common(1)[0][0])}"
                )
                axes.plot(at, 0.0, "x", color=colour, transform=on_x_axis, clip_on=False, markersize=8)
        # A key with one value in the grid tells the lines apart no more than the title does.
        varying = {
            key: value for key, value in fixed.items() if len(grid[key]) > 1 and key not in (where or {})
        }
        label = ", ".join(f"{key}={_value_label(value)}" for key, value in varying.items()) or metric
        if failed:
            any_failed = True
            label += f" (failed at {x} {'; '.join(failed)})"
        axes.errorbar(positions, means, yerr=stds, marker="o", capsize=3, color=colour, label=label)
    handles, _ = axes.get_legend_handles_labels()
    if any_failed:
        handles.append(Line2D([], [], linestyle="", marker="x", color="grey", label="all runs failed"))
    if len(lines) > 1 or any_failed:
        axes.legend(handles=handles, fontsize=7, loc="best")
    if numeric:
        if log_scale:
            axes.set_xscale("log")
    else:
        axes.set_xticks(range(len(x_values)), [_value_label(value) for value in x_values])
    title = f"{metric} by {x}" + (f" per {group}" if group else "")
    axes.set(title=title, xlabel=x, ylabel=f"{metric} (mean ± sample std over seeds)")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def paired_difference(
    results: Iterable[Mapping],
    metric: str,
    axis: str,
    a: Any,
    b: Any,
    *,
    confidence: float = CONFIDENCE,
    by: Sequence[str] | None = None,
) -> dict:
    """`metric` at `axis = a` minus at `axis = b`, paired by seed and by the values of every other key.

    `by` names the keys to pair on instead of every other key: the ones a and b share, when a and b
    differ in more than `axis` (SupCon's temperature has no counterpart in cross-entropy).

    Returns `n` (pairs), `mean`, sample `std`, the t-interval `low`/`high` at `confidence`, `unpaired`
    (runs at a or b without an ok partner, failed ones included) and the `pairs` themselves. Statistics
    that need more pairs than there are (std and interval below two) are None.
    """
    sides: dict[str, dict[tuple, Mapping]] = {"a": {}, "b": {}}
    considered = 0
    for run in latest_runs(results):
        overrides = run.get("overrides") or {}
        if axis not in overrides:
            continue
        side = "a" if _same_value(overrides[axis], a) else "b" if _same_value(overrides[axis], b) else None
        if side is None:
            continue
        considered += 1
        if run.get("status") == OK and _finite(run.get(metric)) is not None:
            others = tuple(
                (key, _value_key(value))
                for key, value in sorted(overrides.items())
                if key != axis and (by is None or key in by)
            )
            sides[side][(_value_key(run.get("seed")), others)] = run
    pairs = []
    for partner, run_a in sides["a"].items():
        run_b = sides["b"].get(partner)
        if run_b is None:
            continue
        value_a, value_b = _finite(run_a[metric]), _finite(run_b[metric])
        others = {
            key: value
            for key, value in (run_a.get("overrides") or {}).items()
            if key != axis and (by is None or key in by)
        }
        pairs.append(
            {
                "seed": run_a.get("seed"),
                "overrides": others,
                "a": value_a,
                "b": value_b,
                "difference": value_a - value_b,
            }
        )
    differences = [pair["difference"] for pair in pairs]
    n = len(differences)
    mean = statistics.fmean(differences) if n else None
    std = statistics.stdev(differences) if n >= 2 else None
    low = high = None
    if n >= 2:
        half_width = _t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return _strict_json(
        {
            "metric": metric,
            "axis": axis,
            "a": a,
            "b": b,
            "n": n,
            "mean": mean,
            "std": std,
            "confidence": confidence,
            "low": low,
            "high": high,
            "unpaired": considered - 2 * n,
            "pairs": pairs,
        }
    )


def plot_paired_difference(
    results: Iterable[Mapping],
    metric: str,
    axis: str,
    a: Any,
    b: Any,
    path: str | Path,
    *,
    confidence: float = CONFIDENCE,
    by: Sequence[str] | None = None,
) -> Path:
    """PNG of the paired differences a − b: one point per pair, their mean, its t-interval, a zero line."""
    plt = _pyplot()
    paired = paired_difference(results, metric, axis, a, b, confidence=confidence, by=by)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.axhline(0.0, color="black", linewidth=0.8, linestyle="--", label="no difference")
    pairs = paired["pairs"]
    if pairs:
        axes.plot(
            range(len(pairs)), [p["difference"] for p in pairs], "o", color="C0", label="pair (same seed)"
        )
        axes.axhline(paired["mean"], color="C1", label=f"mean {paired['mean']:+.4g}")
        if paired["low"] is not None:
            axes.axhspan(
                paired["low"],
                paired["high"],
                color="C1",
                alpha=0.2,
                label=f"{confidence:.0%} t-interval [{paired['low']:+.4g}, {paired['high']:+.4g}]",
            )
        labels = [
            ", ".join([f"seed {p['seed']}", *(f"{k}={_value_label(v)}" for k, v in p["overrides"].items())])
            for p in pairs
        ]
        crowded = len(pairs) > 4  # long labels side by side overlap: slant them
        axes.set_xticks(
            range(len(pairs)),
            labels,
            rotation=30 if crowded else 0,
            ha="right" if crowded else "center",
            fontsize=7,
        )
        axes.set_xlim(-0.5, len(pairs) - 0.5)
    else:
        axes.text(0.5, 0.5, "no pairs of ok runs", ha="center", va="center", transform=axes.transAxes)
        axes.set_xticks([])
    axes.set(
        title=f"{metric}: {axis}={_value_label(a)} − {axis}={_value_label(b)} (n = {paired['n']} pairs)",
        ylabel=f"difference in {metric}",
    )
    if paired["unpaired"]:
        note = f"{paired['unpaired']} run(s) at {_value_label(a)} or {_value_label(b)} without an ok partner"
        axes.text(0.01, 0.01, note, fontsize=7, transform=axes.transAxes, va="bottom")
    axes.legend(fontsize=7, loc="best")
    axes.grid(alpha=0.3, axis="y")
    return _save(figure, path)


# --- the whole report -------------------------------------------------------------------------------


def write_reports(directory: str | Path, spec: Mapping, results: Iterable[Mapping]) -> list[Path]:
    """Write summary.json, results.csv, tables.md and every plot of `spec` into `directory`.

    Plots are `plot_<metric>_by_<x>[_per_<group>].png` and `paired_<metric>_<axis>_<a>_minus_<b>.png`,
    with anything but letters, digits, `-` and `_` in the names replaced by `_`. Returns the paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results = list(results)
    grid = spec["grid"]
    named = [
        metric
        for key in ("tables", "plots", "paired")
        for entry in spec.get(key) or []
        for metric in entry.get("metrics", [entry.get("metric")])
    ]
    metrics = metric_names(results)
    metrics += [metric for metric in dict.fromkeys(named) if metric not in metrics]
    paired = [
        paired_difference(results, entry["metric"], entry["axis"], entry["a"], entry["b"], by=entry.get("by"))
        for entry in spec.get("paired") or []
    ]
    written = [
        _write(
            directory / "summary.json", _json_text({"cells": summarize(results, metrics), "paired": paired})
        ),
        _write(directory / "results.csv", results_csv(results, grid)),
        _write(directory / "tables.md", _tables_text(results, spec, paired)),
    ]
    for entry in spec.get("plots") or []:
        metric, x, group = entry["metric"], entry["x"], entry.get("group")
        name = f"plot_{metric}_by_{x}" + (f"_per_{group}" if group else "")
        name += "".join(f"_{key}_{_where_label(value)}" for key, value in (entry.get("where") or {}).items())
        written.append(
            plot_metric(
                results,
                metric,
                x,
                group,
                directory / f"{_file_name(name)}.png",
                grid=grid,
                where=entry.get("where"),
                cells=spec.get("cells"),
            )
        )
    for entry in spec.get("paired") or []:
        metric, axis, a, b = entry["metric"], entry["axis"], entry["a"], entry["b"]
        name = f"paired_{metric}_{axis}_{_value_label(a)}_minus_{_value_label(b)}"
        written.append(
            plot_paired_difference(
                results, metric, axis, a, b, directory / f"{_file_name(name)}.png", by=entry.get("by")
            )
        )
    return written


def _tables_text(results: list[Mapping], spec: Mapping, paired: list[dict]) -> str:
    seeds = spec.get("seeds") or []
    runs = latest_runs(results)
    statuses = Counter(str(run.get("status")) for run in runs)
    parts = [
        "# Study results",
        "",
        f"{len(runs)} runs over {len(seeds)} seeds: "
        + ", ".join(f"{count} {_failure_phrase(status)}" for status, count in statuses.most_common()),
    ]
    for table in spec.get("tables") or []:
        parts += ["", markdown_table(results, table, spec["grid"], cells=spec.get("cells")).rstrip("\n")]
    if paired:
        parts += ["", "### Paired differences", ""]
        for entry in paired:
            parts.append(f"- {_paired_line(entry)}")
    evaluations = [name for name in spec.get("evaluate") or [] if name in METRIC_PROTOCOLS]
    if evaluations:
        parts += ["", "### Protocols", ""]
        parts += [f"- `{name}_*`: {METRIC_PROTOCOLS[name]}" for name in evaluations]
    return "\n".join(parts) + "\n"


def _paired_line(entry: dict) -> str:
    decimals = metric_decimals(entry["metric"]) + 1  # differences are smaller than the values themselves
    what = f"{entry['metric']}: {entry['axis']}={_value_label(entry['a'])} − {_value_label(entry['b'])}"
    if not entry["n"]:
        return f"{what}: no pairs of ok runs"
    line = f"{what}: {entry['mean']:+.{decimals}f}"
    if entry["low"] is not None:
        low, high = f"{entry['low']:+.{decimals}f}", f"{entry['high']:+.{decimals}f}"
        line += f", {entry['confidence']:.0%} t-interval [{low}, {high}]"
    line += f" over n = {entry['n']} pairs"
    if entry["unpaired"]:
        line += f" ({entry['unpaired']} run{'' if entry['unpaired'] == 1 else 's'} without an ok partner)"
    return line


# --- helpers ----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _json_text(data: Any) -> str:
    return json.dumps(_strict_json(data), indent=2, allow_nan=False) + "\n"


def _strict_json(data: Any) -> Any:
    """`data` with every non-finite float replaced by None: JSON has no NaN or Infinity."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, Mapping):
        return {key: _strict_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_strict_json(value) for value in data]
    return data


def _t_quantile(probability: float, degrees_of_freedom: int) -> float:
    from scipy import stats  # installed with scikit-learn, a dependency of the toolkit

    return float(stats.t.ppf(probability, degrees_of_freedom))


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _value_key(value: Any) -> tuple:
    """A comparable form of a grid value: 1 and 1.0 are the same value, True and 1 are not."""
    if isinstance(value, bool):
        return ("bool", value)
    if _is_number(value):
        return ("number", float(value))
    if value is None:
        return ("null",)
    return ("text", str(value))


def _same_value(left: Any, right: Any) -> bool:
    return _value_key(left) == _value_key(right)


def _value_label(value: Any) -> str:
    """A value as written in YAML: booleans `true`/`false`, None `null`, numbers and text as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if re.fullmatch(r"-0(\.0*)?", text) else text  # no "-0.000" for tiny negatives


def _failure_phrase(status: Any) -> str:
    return FAILURE_PHRASES.get(status, str(status).replace("_", " "))


def _cell_name(result: Mapping) -> str:
    if result.get("cell") is not None:
        return str(result["cell"])
    overrides = result.get("overrides") or {}
    return ",".join(f"{key}={_value_label(value)}" for key, value in overrides.items())


def _run_identity(result: Mapping) -> tuple:
    return (_cell_name(result), _value_key(result.get("seed")))


def _matching(runs: Iterable[Mapping], values: Mapping[str, Any]) -> list[Mapping]:
    """The runs whose overrides hold every one of `values`."""
    chosen = []
    for run in runs:
        overrides = run.get("overrides") or {}
        if all(key in overrides and _same_value(overrides[key], value) for key, value in values.items()):
            chosen.append(run)
    return chosen


def _where(runs: Iterable[Mapping], where: Mapping[str, Any] | None) -> list[Mapping]:
    """The runs a table's or plot's `where` keeps: each key at its value, or at any value of a list
    (`loss.temperature: [0.05, null]` keeps the softmax losses at 0.05 and the margin loss beside them)."""
    chosen = list(runs)
    for key, wanted in (where or {}).items():
        options = wanted if isinstance(wanted, list) else [wanted]
        chosen = [run for run in chosen if any(_matching([run], {key: option}) for option in options)]
    return chosen


def _follows(planned: Sequence[Mapping], key: str, axes: Sequence[str]) -> bool:
    """Whether `key`'s value over the planned cells is decided by one of `axes` (SupCon's temperature by
    `loss.name`, when cross-entropy has none): then it splits nothing a table or plot already shows."""
    for axis in axes:
        seen: dict[tuple, tuple] = {}
        decided = True
        for cell in planned:
            settings = cell["overrides"]
            if axis not in settings:
                decided = False
                break
            value = _value_key(settings.get(key))
            if seen.setdefault(_value_key(settings[axis]), value) != value:
                decided = False
                break
        if decided and len({v for v in seen.values()}) > 1:
            return True
    return False


def _planned(grid: Mapping[str, Sequence], cells: Sequence[Mapping] | None, where: Mapping | None) -> list:
    """The planned cells as `_matching` reads runs: `cells`, or every combination of the grid's values."""
    settings = cells if cells is not None else list(_combinations(grid, list(grid)))
    return _where([{"overrides": dict(values)} for values in settings], where)


def _combinations(grid: Mapping[str, Sequence], keys: Sequence[str]) -> Iterable[dict]:
    """Every assignment of values to `keys`, in grid order (the last key varying fastest); one {} if none."""
    for values in itertools.product(*(grid[key] for key in keys)):
        yield dict(zip(keys, values, strict=True))


def _grid_from(runs: Sequence[Mapping], grid: Mapping[str, Sequence] | None) -> dict[str, list]:
    """`grid`, or one read off the runs' overrides: values in first-seen order, numbers sorted."""
    if grid is not None:
        return {key: list(values) for key, values in grid.items()}
    seen: dict[str, dict[tuple, Any]] = {}
    for run in runs:
        for key, value in (run.get("overrides") or {}).items():
            seen.setdefault(key, {}).setdefault(_value_key(value), value)
    derived = {}
    for key, values in seen.items():
        values = list(values.values())
        derived[key] = sorted(values) if all(_is_number(value) for value in values) else values
    return derived


def _check_keys(grid: Mapping[str, Sequence], keys: Mapping[str, str]) -> None:
    for role, key in keys.items():
        if key not in grid:
            raise ValueError(f"{role} key {key!r} is not a grid key; grid keys: {', '.join(grid) or 'none'}")


def publish_study_reports(group: str, directory: Path, results: list[Mapping], written: list[Path]) -> None:
    """The study's results and summary as W&B tables, and its plots, in the study's W&B group."""
    from ssl_toolkit.tracking import publish_study

    runs = latest_runs(results)
    metrics = metric_names(runs)
    result_columns = ["cell", "seed", "status", "message", *metrics]
    result_rows = [[run.get(key) for key in result_columns] for run in runs]
    summary_rows = [
        [cell, metric, values["mean"], values["std"], values["n"]]
        for cell, entry in summarize(runs, metrics).items()
        for metric, values in entry["metrics"].items()
    ]
    tables = {
        "results": (result_columns, result_rows),
        "summary": (["cell", "metric", "mean", "std", "n"], summary_rows),
    }
    images = {path.stem: path for path in written if path.suffix == ".png"}
    publish_study(group, Path(directory), tables, images)
