"""A study's reports on W&B: its results and summary as tables, and its plots, in the study's group."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ssl_toolkit.study.results import latest_runs, metric_names
from ssl_toolkit.study.statistics import summarize

SUMMARY_COLUMNS = ["cell", "metric", "mean", "std", "n"]


def publish_study_reports(group: str, directory: Path, results: list[Mapping], written: list[Path]) -> None:
    """The study's results and summary as W&B tables, and its plots (the PNGs among `written`), in the
    study's W&B group `group`; the W&B run's files go under `directory`."""
    from ssl_toolkit.tracking import publish_study  # it imports accelerate and torch: only when publishing

    runs = latest_runs(results)
    metrics = metric_names(runs)
    result_columns = ["cell", "seed", "status", "message", *metrics]
    result_rows = [[run.get(key) for key in result_columns] for run in runs]
    summary_rows = [
        [cell, metric, values["mean"], values["std"], values["n"]]
        for cell, entry in summarize(runs, metrics).items()
        for metric, values in entry["metrics"].items()
    ]
    tables = {"results": (result_columns, result_rows), "summary": (SUMMARY_COLUMNS, summary_rows)}
    images = {path.stem: path for path in written if path.suffix == ".png"}
    publish_study(group, Path(directory), tables, images)
