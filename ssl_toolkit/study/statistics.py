"""The numbers of a study's report: per cell the mean, sample std and n of each metric over its seeds, and
the paired difference of two values of one grid key, by seed, with its t-interval.

Only runs whose status is `ok` contribute values, and a non-finite value counts as not measured; failed
runs are counted by status. Statistics that need more values than there are (a std of one value) are None,
so that every summary is strict JSON.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ssl_toolkit.files import finite_or_null
from ssl_toolkit.process.status import Status
from ssl_toolkit.study.results import (
    cell_name,
    finite_number,
    latest_runs,
    metric_names,
    same_value,
    value_key,
)

CONFIDENCE = 0.95


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
        if status != Status.OK:
            cell.failures[status] += 1
            continue
        cell.ok_runs += 1
        value = finite_number(run.get(metric))
        if value is not None:
            cell.values.append(value)
    return cell


def runs_by_cell(runs: Iterable[Mapping]) -> dict[str, list[Mapping]]:
    """The runs grouped by cell name, cells in the order they first appear."""
    by_cell: dict[str, list[Mapping]] = {}
    for run in runs:
        by_cell.setdefault(cell_name(run), []).append(run)
    return by_cell


def summarize(results: Iterable[Mapping], metrics: Sequence[str] | None = None) -> dict:
    """Per cell: its overrides, status counts and, per metric, mean, sample std (ddof=1) and n.

    Returns `{cell: {"overrides", "statuses", "metrics": {metric: {"mean", "std", "n"}}}}` with cells in
    the order they first appear. `n` counts the seeds whose status is ok and that measured the metric;
    `std` is None when n < 2 and `mean` None when n = 0, so the dict is strict JSON. `metrics` defaults to
    every metric seen.
    """
    runs = latest_runs(results)
    metrics = metric_names(runs) if metrics is None else list(metrics)
    summary = {}
    for cell, cell_runs in runs_by_cell(runs).items():
        per_metric = {}
        for metric in metrics:
            stats = cell_statistics(cell_runs, metric)
            per_metric[metric] = {"mean": stats.mean, "std": stats.std, "n": stats.n}
        summary[cell] = {
            "overrides": finite_or_null(dict(cell_runs[0].get("overrides") or {})),
            "statuses": dict(Counter(str(run.get("status")) for run in cell_runs)),
            "metrics": per_metric,
        }
    return summary


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
    runs = [run for run in latest_runs(results) if axis in (run.get("overrides") or {})]
    at_a = [run for run in runs if same_value(run["overrides"][axis], a)]
    # When a and b are one value, its runs count at a only.
    at_b = [run for run in runs if same_value(run["overrides"][axis], b) and not same_value(a, b)]
    partners_a = _measured_by_partner(at_a, metric, axis, by)
    partners_b = _measured_by_partner(at_b, metric, axis, by)
    pairs = [
        _pair(run_a, partners_b[partner], metric, axis, by)
        for partner, run_a in partners_a.items()
        if partner in partners_b
    ]
    differences = [pair["difference"] for pair in pairs]
    n = len(differences)
    mean = statistics.fmean(differences) if n else None
    std = statistics.stdev(differences) if n >= 2 else None
    low, high = t_interval(mean, std, n, confidence) if n >= 2 else (None, None)
    return finite_or_null(
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
            "unpaired": len(at_a) + len(at_b) - 2 * n,
            "pairs": pairs,
        }
    )


def t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    """Student's t-interval for the mean of `n` ≥ 2 values with sample std `std`, at `confidence`."""
    from scipy import stats  # imported here: the reports without a paired difference do without it

    half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half_width, mean + half_width


def _paired_on(overrides: Mapping[str, Any], axis: str, by: Sequence[str] | None) -> dict[str, Any]:
    """The overrides a pair shares: every key but `axis`, or only the keys in `by`."""
    return {key: value for key, value in overrides.items() if key != axis and (by is None or key in by)}


def _measured_by_partner(
    runs: Iterable[Mapping], metric: str, axis: str, by: Sequence[str] | None
) -> dict[tuple, Mapping]:
    """The ok runs that measured `metric`, by what their partner on the other side shares with them: the
    seed and the paired-on values (in key order, as 1 and 1.0 are the same value)."""
    measured = {}
    for run in runs:
        if run.get("status") == Status.OK and finite_number(run.get(metric)) is not None:
            shared = sorted(_paired_on(run["overrides"], axis, by).items())
            partner = (value_key(run.get("seed")), tuple((key, value_key(value)) for key, value in shared))
            measured[partner] = run
    return measured


def _pair(run_a: Mapping, run_b: Mapping, metric: str, axis: str, by: Sequence[str] | None) -> dict:
    value_a, value_b = finite_number(run_a[metric]), finite_number(run_b[metric])
    return {
        "seed": run_a.get("seed"),
        "overrides": _paired_on(run_a.get("overrides") or {}, axis, by),
        "a": value_a,
        "b": value_b,
        "difference": value_a - value_b,
    }
