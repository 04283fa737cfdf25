"""A study's results as text: markdown tables of mean ± sample std per cell, tables.md, and results.csv.

A cell reads `0.876 ± 0.030`. A cell whose runs all failed names the failure in its status's words
(`Status.phrase`, e.g. `diverged`), the way the CoLES paper marks out-of-memory and diverged runs; one with
some failed runs adds them, as in `0.880 ± 0.010 (n=2; 1 diverged)`.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ssl_toolkit.process.status import Status
from ssl_toolkit.study.results import (
    cell_name,
    check_grid_keys,
    follows_an_axis,
    latest_runs,
    metric_names,
    planned_cells,
    runs_matching,
    runs_where,
    value_combinations,
)
from ssl_toolkit.study.spec import METRIC_PROTOCOLS, value_text
from ssl_toolkit.study.statistics import CellStatistics, cell_statistics, runs_by_cell


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


def failure_phrase(status: Any) -> str:
    """The words a report shows for a run's status; an unknown status as written, with spaces for `_`."""
    try:
        return Status(status).phrase
    except ValueError:
        return str(status).replace("_", " ")


def failure_counts(stats: CellStatistics) -> list[str]:
    """`2 diverged`, `1 error`, ...: the failed runs of a cell, the most frequent status first."""
    return [f"{count} {failure_phrase(status)}" for status, count in stats.failures.most_common()]


def where_label(value: Any) -> str:
    """A `where` value as text: a list reads `0.05 or null`."""
    return " or ".join(map(value_text, value)) if isinstance(value, list) else value_text(value)


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
    failure (`diverged`, `error`, ...); one with some failed runs adds them, as in
    `0.880 ± 0.010 (n=2; 1 diverged)`. Any other grid keys give one table per combination of their values,
    under a heading naming it; `table["where"]` ({key: value}) keeps only the runs with those values.
    `cells` (the planned cells' values, for a grid of several mappings) leaves out the combinations, rows
    and columns that no planned cell lies in; without it every value of the grid is laid out. A cell
    planned but without a run yet reads `not run`. A table with `metrics` (a list) instead has one row per
    cell and one column per metric. Decimals follow `metric_decimals` unless given.
    """
    runs = runs_where(latest_runs(results), table.get("where"))
    if "metrics" in table:
        return _per_cell_table(runs, table["metrics"], grid, decimals)
    metric, row_key, column_key = table["metric"], table["rows"], table["columns"]
    check_grid_keys(grid, {"rows": row_key, "columns": column_key})
    if row_key == column_key:
        raise ValueError(f"table of {metric}: rows and columns are both {row_key!r}")
    decimals = metric_decimals(metric) if decimals is None else decimals
    where = table.get("where") or {}
    planned = planned_cells(grid, cells, where)
    split_keys = [
        key
        for key in grid
        if key not in (row_key, column_key)
        and not follows_an_axis(planned, key, (row_key, column_key))
        and not (key in where and not isinstance(where[key], list))  # the heading names it already
    ]
    lines = [f"### {metric} — rows `{row_key}`, columns `{column_key}`" + _where_text(where)]
    for fixed in value_combinations(grid, split_keys):
        in_table = runs_matching(planned, fixed)
        rows = [value for value in grid[row_key] if runs_matching(in_table, {row_key: value})]
        columns = [value for value in grid[column_key] if runs_matching(in_table, {column_key: value})]
        if rows and columns:
            if fixed:
                lines += ["", "#### " + ", ".join(f"{key} = {value_text(v)}" for key, v in fixed.items())]
            chosen = runs_matching(runs, fixed)
            lines += _grid_table(chosen, in_table, metric, {row_key: rows, column_key: columns}, decimals)
    return "\n".join(lines) + "\n"


def _grid_table(
    runs: list[Mapping], planned: list[Mapping], metric: str, axes: Mapping[str, list], decimals: int
) -> list[str]:
    """The lines of one table: `axes` maps the row key, then the column key, to the values laid out."""
    (row_key, rows), (column_key, columns) = axes.items()
    # Keyed by position, not value: 1 and True would be one key of a dict.
    stats = {
        (row, column): cell_statistics(
            runs_matching(runs, {row_key: rows[row], column_key: columns[column]}), metric
        )
        for row in range(len(rows))
        for column in range(len(columns))
    }
    usual_n = _usual_n(stats.values())
    header = [f"{row_key} \\ {column_key}", *(value_text(value) for value in columns)]
    lines = ["", _markdown_row(header), "|" + "---|" + "---:|" * len(columns)]
    for row, row_value in enumerate(rows):
        texts = [
            _cell_text(stats[row, column], decimals, usual_n)
            if runs_matching(planned, {row_key: row_value, column_key: columns[column]})
            else ""  # no cell planned here (a grid of several mappings)
            for column in range(len(columns))
        ]
        lines.append(_markdown_row([value_text(row_value), *texts]))
    return [*lines, "", _n_line(stats.values(), usual_n)]


def _per_cell_table(
    runs: list[Mapping], metrics: Sequence[str], grid: Mapping[str, Sequence], decimals: int | None
) -> str:
    """One row per cell (named by the grid keys that vary), one column per metric."""
    varying = [key for key, values in grid.items() if len(values) > 1] or list(grid)
    lines = ["### " + ", ".join(metrics) + " — one row per cell"]
    lines += ["", _markdown_row(["cell", *metrics]), "|" + "---|" + "---:|" * len(metrics)]
    everything = []
    for cell_runs in runs_by_cell(runs).values():
        overrides = cell_runs[0].get("overrides") or {}
        label = ", ".join(f"{key}={value_text(overrides[key])}" for key in varying if key in overrides)
        stats = [cell_statistics(cell_runs, metric) for metric in metrics]
        everything += stats
        usual_n = _usual_n(stats)
        texts = [
            _cell_text(each, metric_decimals(metric) if decimals is None else decimals, usual_n)
            for metric, each in zip(metrics, stats, strict=True)
        ]
        lines.append(_markdown_row([label or cell_name(cell_runs[0]), *texts]))
    lines += ["", _n_line(everything, _usual_n(everything))]
    return "\n".join(lines) + "\n"


def _where_text(where: Mapping[str, Any]) -> str:
    return "".join(f", {key} = {where_label(value)}" for key, value in where.items())


def _cell_text(stats: CellStatistics, decimals: int, usual_n: int | None) -> str:
    failures = failure_counts(stats)
    if stats.n == 0 and stats.runs and stats.ok_runs == 0:
        # Every run failed: the failure is the result.
        if len(stats.failures) == 1:
            return failure_phrase(next(iter(stats.failures)))
        return ", ".join(failures)
    if stats.n == 0:
        value, notes = ("not run" if stats.runs == 0 else "not measured"), failures
    else:
        value = _format_number(stats.mean, decimals)
        if stats.std is not None:
            value += " ± " + _format_number(stats.std, decimals)
        notes = ([f"n={stats.n}"] if stats.n != usual_n else []) + failures
    return f"{value} ({'; '.join(notes)})" if notes else value


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if re.fullmatch(r"-0(\.0*)?", text) else text  # no "-0.000" for tiny negatives


def _usual_n(cells: Iterable[CellStatistics]) -> int | None:
    """The most common n among the cells that have a value (the larger on a tie); None if none has."""
    counts = Counter(cell.n for cell in cells if cell.n)
    return max(counts, key=lambda n: (counts[n], n)) if counts else None


def _n_line(cells: Iterable[CellStatistics], usual_n: int | None) -> str:
    if usual_n is None:
        return "no successful runs measured this metric"
    line = "single seed (n = 1), no std" if usual_n == 1 else f"mean ± sample std over n = {usual_n} seeds"
    if any(cell.n and cell.n != usual_n for cell in cells):
        line += "; (n=…) marks cells with another number of seeds"
    return line


def _markdown_row(texts: Iterable[str]) -> str:
    return "| " + " | ".join(text.replace("|", "\\|") for text in texts) + " |"


# --- tables.md --------------------------------------------------------------------------------------


def tables_document(results: list[Mapping], spec: Mapping, paired: list[dict]) -> str:
    """tables.md: the run count by status, every table of `spec`, the `paired` differences (as
    `paired_difference` returns them) and the protocols behind the evaluation metrics."""
    seeds = spec.get("seeds") or []
    runs = latest_runs(results)
    statuses = Counter(str(run.get("status")) for run in runs)
    parts = [
        "# Study results",
        "",
        f"{len(runs)} runs over {len(seeds)} seeds: "
        + ", ".join(f"{count} {failure_phrase(status)}" for status, count in statuses.most_common()),
    ]
    for table in spec.get("tables") or []:
        parts += ["", markdown_table(results, table, spec["grid"], cells=spec.get("cells")).rstrip("\n")]
    if paired:
        parts += ["", "### Paired differences", ""]
        parts += [f"- {_paired_line(entry)}" for entry in paired]
    evaluations = [name for name in spec.get("evaluate") or [] if name in METRIC_PROTOCOLS]
    if evaluations:
        parts += ["", "### Protocols", ""]
        parts += [f"- `{name}_*`: {METRIC_PROTOCOLS[name]}" for name in evaluations]
    return "\n".join(parts) + "\n"


def _paired_line(entry: dict) -> str:
    decimals = metric_decimals(entry["metric"]) + 1  # differences are smaller than the values themselves
    what = f"{entry['metric']}: {entry['axis']}={value_text(entry['a'])} − {value_text(entry['b'])}"
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
        row = [cell_name(result)]
        row += [value_text(overrides[key]) if key in overrides else "" for key in keys]
        row += [_csv_value(result.get(name)) for name in ("seed", "status", "message", "run_dir", *metrics)]
        writer.writerow(row)
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    return "" if value is None else value_text(value)
