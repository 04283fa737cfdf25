"""A study's plots (PNG, matplotlib without a display): a metric against one grid key, one line per value of
another, and the paired differences of two values of one grid key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_toolkit.files import replaced_atomically
from ssl_toolkit.study.results import (
    check_grid_keys,
    follows_an_axis,
    grid_of_runs,
    is_number,
    latest_runs,
    planned_cells,
    runs_matching,
    runs_where,
    value_combinations,
    value_key,
)
from ssl_toolkit.study.spec import value_text
from ssl_toolkit.study.statistics import CONFIDENCE, cell_statistics, paired_difference
from ssl_toolkit.study.tables import failure_counts, failure_phrase

FIGURE_SIZE = (7, 4.5)  # inches
DPI = 120


@dataclass(frozen=True)
class _XAxis:
    """The grid key a plot runs along and the values it shows, as numbers or as categories."""

    key: str
    values: list

    @property
    def numeric(self) -> bool:
        return bool(self.values) and all(is_number(value) for value in self.values)

    @property
    def log_scale(self) -> bool:
        """Numbers that are all positive and span at least 100× read best on a log scale."""
        return self.numeric and min(self.values) > 0 and max(self.values) / min(self.values) >= 100

    def position(self, index: int, shift: float) -> float:
        """Where the `index`-th value sits: at the number itself, or at its index among categories."""
        return (self.values[index] if self.numeric else index) + shift


@dataclass
class _Line:
    """The points of one line that have a value, and the x values where every run failed."""

    positions: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


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
    runs = runs_where(latest_runs(results), where)
    grid = grid_of_runs(runs, grid)
    check_grid_keys(grid, {"x": x} | ({"group": group} if group else {}))
    if group == x:
        raise ValueError(f"plot of {metric}: x and group are both {x!r}")
    lines, x_axis = _lines_and_x_axis(grid, planned_cells(grid, cells, where), x, group)
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=DPI)
    any_failed = False
    for index, fixed in enumerate(lines):
        colour = f"C{index % 10}"
        line = _draw_points(
            axes, runs_matching(runs, fixed), metric, x_axis, colour, _shift(index, lines, x_axis)
        )
        label = _line_label(fixed, grid, where) or metric
        if line.failed:
            any_failed = True
            label += f" (failed at {x} {'; '.join(line.failed)})"
        axes.errorbar(
            line.positions, line.means, yerr=line.stds, marker="o", capsize=3, color=colour, label=label
        )
    _add_legend(axes, several_lines=len(lines) > 1, any_failed=any_failed)
    if not x_axis.numeric:
        axes.set_xticks(range(len(x_axis.values)), [value_text(value) for value in x_axis.values])
    elif x_axis.log_scale:
        axes.set_xscale("log")
    title = f"{metric} by {x}" + (f" per {group}" if group else "")
    axes.set(title=title, xlabel=x, ylabel=f"{metric} (mean ± sample std over seeds)")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def _lines_and_x_axis(
    grid: Mapping[str, Sequence], planned: list[dict], x: str, group: str | None
) -> tuple[list[dict], _XAxis]:
    """The lines to draw (each the values of `group` and the other grid keys it fixes) and the x values
    that any of them reaches."""
    line_keys = ([group] if group else []) + [
        key
        for key in grid
        if key not in (x, group) and not follows_an_axis(planned, key, (group,) if group else ())
    ]
    # Only lines that have runs at two x values or more: one point is no line (a grid of several mappings
    # crosses each axis with the others' base values).
    lines = [
        fixed
        for fixed in value_combinations(grid, line_keys)
        if len({value_key(cell["overrides"][x]) for cell in runs_matching(planned, fixed)})
        >= min(2, len(grid[x]))
    ]
    x_values = [
        value for value in grid[x] if any(runs_matching(planned, {**fixed, x: value}) for fixed in lines)
    ]
    return lines, _XAxis(x, x_values)


def _line_label(fixed: Mapping[str, Any], grid: Mapping[str, Sequence], where: Mapping | None) -> str:
    """`key=value, ...` over the keys that tell the line apart: a key with one value in the grid, or one
    `where` fixes, does so no more than the title does."""
    varying = [key for key in fixed if len(grid[key]) > 1 and key not in (where or {})]
    return ", ".join(f"{key}={value_text(fixed[key])}" for key in varying)


def _shift(index: int, lines: list[dict], x_axis: _XAxis) -> float:
    """How far sideways the `index`-th line is drawn: categorical lines are spread a little, so that their
    error bars do not overlap."""
    if x_axis.numeric or len(lines) == 1:
        return 0.0
    return (index - (len(lines) - 1) / 2) * min(0.3 / len(lines), 0.08)


def _draw_points(axes, runs: list[Mapping], metric: str, x_axis: _XAxis, colour: str, shift: float) -> _Line:
    """The points of one line (`runs` are its runs): notes on those with failed runs, and a cross on the x
    axis where every run failed, drawn here; the means are left to the caller's error bars."""
    from matplotlib.transforms import blended_transform_factory

    on_x_axis = blended_transform_factory(axes.transData, axes.transAxes)
    line = _Line()
    for index, value in enumerate(x_axis.values):
        stats = cell_statistics(runs_matching(runs, {x_axis.key: value}), metric)
        at = x_axis.position(index, shift)
        if stats.n:
            line.positions.append(at)
            line.means.append(stats.mean)
            line.stds.append(stats.std or 0.0)
            if stats.failures:
                note = ", ".join(failure_counts(stats))
                axes.annotate(
                    note,
                    (at, stats.mean),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=colour,
                )
        elif stats.failures:
            line.failed.append(f"{value_text(value)}: {failure_phrase(stats.failures.most_common(1)[0][0])}")
            axes.plot(at, 0.0, "x", color=colour, transform=on_x_axis, clip_on=False, markersize=8)
    return line


def _add_legend(axes, *, several_lines: bool, any_failed: bool) -> None:
    """A legend when it tells something: several lines, or crosses to explain."""
    from matplotlib.lines import Line2D

    handles, _ = axes.get_legend_handles_labels()
    if any_failed:
        handles.append(Line2D([], [], linestyle="", marker="x", color="grey", label="all runs failed"))
    if several_lines or any_failed:
        axes.legend(handles=handles, fontsize=7, loc="best")


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
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=DPI)
    axes.axhline(0.0, color="black", linewidth=0.8, linestyle="--", label="no difference")
    if paired["pairs"]:
        _draw_pairs(axes, paired, confidence)
    else:
        axes.text(0.5, 0.5, "no pairs of ok runs", ha="center", va="center", transform=axes.transAxes)
        axes.set_xticks([])
    axes.set(
        title=f"{metric}: {axis}={value_text(a)} − {axis}={value_text(b)} (n = {paired['n']} pairs)",
        ylabel=f"difference in {metric}",
    )
    if paired["unpaired"]:
        note = f"{paired['unpaired']} run(s) at {value_text(a)} or {value_text(b)} without an ok partner"
        axes.text(0.01, 0.01, note, fontsize=7, transform=axes.transAxes, va="bottom")
    axes.legend(fontsize=7, loc="best")
    axes.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def _draw_pairs(axes, paired: dict, confidence: float) -> None:
    """Each pair's difference, labelled by its seed and shared values; their mean and its t-interval."""
    pairs = paired["pairs"]
    axes.plot(range(len(pairs)), [p["difference"] for p in pairs], "o", color="C0", label="pair (same seed)")
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
        ", ".join([f"seed {p['seed']}", *(f"{k}={value_text(v)}" for k, v in p["overrides"].items())])
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    """`figure` as a PNG at `path`, written atomically (a report may be rebuilt while someone reads it)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    figure.tight_layout()
    with replaced_atomically(path) as partial:
        figure.savefig(partial)  # the format follows the name's suffix, which the partial name keeps
    plt.close(figure)
    return path
