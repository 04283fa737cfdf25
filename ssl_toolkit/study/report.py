"""A study's report from its results: summary.json, results.csv, tables.md and PNG plots.

Every part takes the study's results (the dicts of `results.jsonl`, one per finished (cell, seed)) and
parts of its spec as plain dicts, so a report can be rebuilt from the files alone at any time, also while
the study still runs. Only runs whose status is `ok` contribute values; failed runs (out-of-memory,
diverged, error) are counted and shown by status. When one (cell, seed) appears more than once (a study
resumed or re-run), its last line is the one reported.

The parts: `results` (reading and selecting runs), `statistics` (means, stds, paired differences),
`tables` (markdown and CSV), `plots` (PNG); `publish` puts them on W&B.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ssl_toolkit.files import write_json, write_text_atomically
from ssl_toolkit.study.plots import plot_metric, plot_paired_difference
from ssl_toolkit.study.results import metric_names
from ssl_toolkit.study.spec import value_text
from ssl_toolkit.study.statistics import paired_difference, summarize
from ssl_toolkit.study.tables import results_csv, tables_document, where_label

SPEC_ENTRIES = ("tables", "plots", "paired")  # the spec's lists whose entries name metrics


def write_reports(directory: str | Path, spec: Mapping, results: Iterable[Mapping]) -> list[Path]:
    """Write summary.json, results.csv, tables.md and every plot of `spec` into `directory`.

    summary.json holds `{"cells": summarize(...), "paired": [paired_difference(...), ...]}` as strict JSON,
    over every metric seen in `results` and then those the spec names but no run measured yet. Plots are
    `plot_<metric>_by_<x>[_per_<group>].png` and `paired_<metric>_<axis>_<a>_minus_<b>.png`, with anything
    but letters, digits, `-` and `_` in the names replaced by `_`. Returns the paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results = list(results)
    grid = spec["grid"]
    named = [
        metric
        for key in SPEC_ENTRIES
        for entry in spec.get(key) or []
        for metric in entry.get("metrics", [entry.get("metric")])
    ]
    metrics = metric_names(results)
    metrics += [metric for metric in dict.fromkeys(named) if metric not in metrics]
    paired = [
        paired_difference(results, entry["metric"], entry["axis"], entry["a"], entry["b"], by=entry.get("by"))
        for entry in spec.get("paired") or []
    ]
    write_json(directory / "summary.json", {"cells": summarize(results, metrics), "paired": paired})
    write_text_atomically(directory / "results.csv", results_csv(results, grid))
    write_text_atomically(directory / "tables.md", tables_document(results, spec, paired))
    written = [directory / "summary.json", directory / "results.csv", directory / "tables.md"]
    for entry in spec.get("plots") or []:
        metric, x, group, where = entry["metric"], entry["x"], entry.get("group"), entry.get("where")
        name = f"plot_{metric}_by_{x}" + (f"_per_{group}" if group else "")
        name += "".join(f"_{key}_{where_label(value)}" for key, value in (where or {}).items())
        path = directory / f"{_file_name(name)}.png"
        written.append(
            plot_metric(results, metric, x, group, path, grid=grid, where=where, cells=spec.get("cells"))
        )
    for entry in spec.get("paired") or []:
        metric, axis, a, b = entry["metric"], entry["axis"], entry["a"], entry["b"]
        path = (
            directory / f"{_file_name(f'paired_{metric}_{axis}_{value_text(a)}_minus_{value_text(b)}')}.png"
        )
        written.append(plot_paired_difference(results, metric, axis, a, b, path, by=entry.get("by")))
    return written


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
