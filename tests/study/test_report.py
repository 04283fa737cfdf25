"""The study report: statistics, markdown tables, CSV, paired differences and plots from hand-made results."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics

import numpy as np
import pytest
from scipy import stats

from ssl_toolkit.study.plots import plot_metric, plot_paired_difference
from ssl_toolkit.study.report import write_reports
from ssl_toolkit.study.statistics import paired_difference, summarize
from ssl_toolkit.study.tables import markdown_table, metric_decimals, results_csv

GRID = {"loss.name": ["coles", "supcon"], "loss.temperature": [0.05, 0.5]}
SEEDS = [0, 1, 2]
# probe_top1 per (loss, temperature): one value per seed, deliberately uneven so every std differs
PROBE_TOP1 = {
    ("coles", 0.05): [0.871, 0.902, 0.855],
    ("coles", 0.5): [0.801, 0.797, 0.843],
    ("supcon", 0.05): [0.860, 0.881, 0.840],
    ("supcon", 0.5): [0.750, 0.790, 0.771],
}
TABLE = {"metric": "probe_top1", "rows": "loss.name", "columns": "loss.temperature"}
CELL_VALUE = re.compile(r"^(-?\d+\.\d+) ± (\d+\.\d+)")


def cell_name(overrides: dict) -> str:
    return ",".join(f"{key}={value}" for key, value in overrides.items())


def result(overrides: dict, seed: int, status: str = "ok", **metrics) -> dict:
    return {
        "cell": cell_name(overrides),
        "overrides": dict(overrides),
        "seed": seed,
        "status": status,
        "message": None if status == "ok" else f"{status} at step 3",
        "run_dir": f"runs/{cell_name(overrides)}/seed{seed}",
        **metrics,
    }


def grid_results() -> list[dict]:
    """A 2×2 grid × 3 seeds, every run ok."""
    results = []
    for (loss, temperature), values in PROBE_TOP1.items():
        for seed, value in zip(SEEDS, values, strict=True):
            overrides = {"loss.name": loss, "loss.temperature": temperature}
            results.append(result(overrides, seed, probe_top1=value, pretrain_seconds=100.0 + seed))
    return results


def table_cells(markdown: str) -> dict[tuple[str, str], str]:
    """{(row label, column label): cell text} of the first markdown table in `markdown`."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [text.strip() for text in rows[0].strip("|").split("|")]
    cells = {}
    for line in rows[2:]:
        texts = [text.strip() for text in line.strip("|").split("|")]
        for column, text in zip(header[1:], texts[1:], strict=True):
            cells[texts[0], column] = text
    return cells


def test_summary_matches_numpy_and_statistics_for_every_cell():
    summary = summarize(grid_results(), ["probe_top1"])
    assert len(summary) == 4
    for (loss, temperature), values in PROBE_TOP1.items():
        entry = summary[cell_name({"loss.name": loss, "loss.temperature": temperature})]
        assert entry["overrides"] == {"loss.name": loss, "loss.temperature": temperature}
        assert entry["statuses"] == {"ok": 3}
        measured = entry["metrics"]["probe_top1"]
        assert measured["n"] == 3
        assert measured["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert measured["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert measured["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)


def test_summary_counts_only_ok_runs_and_has_no_std_for_one_value():
    overrides = {"loss.name": "coles", "loss.temperature": 0.05}
    results = [
        result(overrides, 0, probe_top1=0.9),
        result(overrides, 1, "diverged", final_loss=float("nan")),
        result(overrides, 2, "out_of_memory"),
    ]
    entry = summarize(results, ["probe_top1", "final_loss"])[cell_name(overrides)]
    assert entry["statuses"] == {"ok": 1, "diverged": 1, "out_of_memory": 1}
    assert entry["metrics"]["probe_top1"] == {"mean": 0.9, "std": None, "n": 1}
    assert entry["metrics"]["final_loss"] == {"mean": None, "std": None, "n": 0}


def test_a_rerun_seed_reports_its_last_result():
    overrides = {"loss.name": "coles", "loss.temperature": 0.05}
    results = [result(overrides, 0, "out_of_memory"), result(overrides, 0, probe_top1=0.8)]
    entry = summarize(results)[cell_name(overrides)]
    assert entry["statuses"] == {"ok": 1}
    assert entry["metrics"]["probe_top1"]["mean"] == 0.8


def test_markdown_cells_parse_back_to_the_recomputed_statistics():
    markdown = markdown_table(grid_results(), TABLE, GRID)
    assert markdown.splitlines()[0].startswith("### probe_top1")
    assert "mean ± sample std over n = 3 seeds" in markdown
    cells = table_cells(markdown)
    assert len(cells) == 4
    for (loss, temperature), values in PROBE_TOP1.items():
        parsed = CELL_VALUE.match(cells[loss, str(temperature)])
        assert parsed, cells[loss, str(temperature)]
        assert float(parsed[1]) == pytest.approx(round(float(np.mean(values)), 3), abs=1e-9)
        assert float(parsed[2]) == pytest.approx(round(float(np.std(values, ddof=1)), 3), abs=1e-9)
        assert "(n=" not in cells[loss, str(temperature)]


def test_markdown_rows_and_columns_follow_grid_order():
    grid = {"loss.name": ["supcon", "coles"], "loss.temperature": [0.5, 0.05]}
    lines = [
        line for line in markdown_table(grid_results(), TABLE, grid).splitlines() if line.startswith("|")
    ]
    assert lines[0] == "| loss.name \\ loss.temperature | 0.5 | 0.05 |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["supcon", "coles"]


def test_markdown_names_failures_and_marks_partial_cells():
    results = [r for r in grid_results() if r["overrides"]["loss.name"] == "coles"]
    oom = {"loss.name": "supcon", "loss.temperature": 0.05}
    results += [result(oom, seed, "out_of_memory") for seed in SEEDS]
    mixed = {"loss.name": "supcon", "loss.temperature": 0.5}
    results += [
        result(mixed, 0, probe_top1=0.78),
        result(mixed, 1, probe_top1=0.76),
        result(mixed, 2, "diverged"),
    ]
    cells = table_cells(markdown_table(results, TABLE, GRID))
    assert cells["supcon", "0.05"] == "out of memory"
    assert cells["supcon", "0.5"] == f"0.770 ± {statistics.stdev([0.78, 0.76]):.3f} (n=2; 1 diverged)"
    assert "(n=" not in cells["coles", "0.05"]


def test_n_line_with_a_single_seed_and_a_cell_never_run():
    results = [result({"loss.name": "coles", "loss.temperature": 0.05}, 0, probe_top1=0.9)]
    markdown = markdown_table(results, TABLE, GRID)
    cells = table_cells(markdown)
    assert cells["coles", "0.05"] == "0.900"
    assert cells["supcon", "0.5"] == "not run"
    assert "single seed (n = 1)" in markdown


def test_other_grid_keys_give_one_table_each():
    grid = {**GRID, "model.width": [32, 64]}
    results = []
    for width in grid["model.width"]:
        for r in grid_results():
            overrides = {**r["overrides"], "model.width": width}
            results.append(result(overrides, r["seed"], probe_top1=r["probe_top1"] + width / 1000))
    markdown = markdown_table(results, TABLE, grid)
    assert "#### model.width = 32" in markdown and "#### model.width = 64" in markdown
    assert markdown.count("mean ± sample std over n = 3 seeds") == 2
    second = markdown.split("#### model.width = 64")[1]
    expected = np.mean(PROBE_TOP1["coles", 0.05]) + 0.064
    assert float(CELL_VALUE.match(table_cells(second)["coles", "0.05"])[1]) == pytest.approx(
        round(expected, 3)
    )


def test_table_rejects_keys_outside_the_grid():
    with pytest.raises(ValueError, match="not a grid key"):
        markdown_table(grid_results(), {**TABLE, "rows": "optim.lr"}, GRID)


def test_decimals_follow_the_metric_name():
    assert metric_decimals("probe_top1") == 3
    assert metric_decimals("probe_auroc") == 4
    assert metric_decimals("pretrain_seconds") == 1
    assert metric_decimals("seconds_per_epoch") == 1
    assert metric_decimals("peak_memory_mb") == 0
    assert metric_decimals("views_per_s") == 0
    table = {"metric": "pretrain_seconds", "rows": "loss.name", "columns": "loss.temperature"}
    assert table_cells(markdown_table(grid_results(), table, GRID))["coles", "0.05"] == "101.0 ± 1.0"


def test_csv_has_one_row_per_result_and_empty_missing_metrics():
    results = [*grid_results(), result({"loss.name": "coles", "loss.temperature": 0.05}, 3, "error")]
    rows = list(csv.DictReader(io.StringIO(results_csv(results, GRID))))
    assert len(rows) == len(results)
    header = next(csv.reader(io.StringIO(results_csv(results, GRID))))
    expected = ["cell", "loss.name", "loss.temperature", "seed", "status", "message", "run_dir"]
    assert header == [*expected, "probe_top1", "pretrain_seconds"]
    assert rows[0]["probe_top1"] == str(PROBE_TOP1["coles", 0.05][0])
    assert rows[-1]["status"] == "error" and rows[-1]["probe_top1"] == ""
    assert rows[-1]["message"] == "error at step 3"


def paired_results() -> tuple[list[dict], list[float]]:
    """coles vs supcon at two temperatures × 3 seeds, and the differences coles − supcon by hand."""
    results, differences = grid_results(), []
    for temperature in GRID["loss.temperature"]:
        for seed in SEEDS:
            differences.append(
                PROBE_TOP1["coles", temperature][seed] - PROBE_TOP1["supcon", temperature][seed]
            )
    return results, differences


def test_paired_difference_matches_a_hand_computation():
    results, differences = paired_results()
    paired = paired_difference(results, "probe_top1", "loss.name", "coles", "supcon")
    n = len(differences)
    mean, std = sum(differences) / n, statistics.stdev(differences)
    half_width = stats.t.ppf(0.975, n - 1) * std / n**0.5
    assert paired["n"] == n == 6
    assert paired["mean"] == pytest.approx(mean, abs=1e-12)
    assert paired["std"] == pytest.approx(std, abs=1e-12)
    assert paired["low"] == pytest.approx(mean - half_width, abs=1e-12)
    assert paired["high"] == pytest.approx(mean + half_width, abs=1e-12)
    assert paired["unpaired"] == 0
    assert sorted(p["difference"] for p in paired["pairs"]) == pytest.approx(sorted(differences))


def test_paired_difference_skips_failed_partners():
    results, _ = paired_results()
    failed = {"loss.name": "supcon", "loss.temperature": 0.5}
    results = [r for r in results if not (r["overrides"] == failed and r["seed"] == 2)]
    results.append(result(failed, 2, "diverged"))
    paired = paired_difference(results, "probe_top1", "loss.name", "coles", "supcon")
    assert paired["n"] == 5 and paired["unpaired"] == 2
    single = paired_difference(results[:1] + results[6:7], "probe_top1", "loss.name", "coles", "supcon")
    assert single["n"] == 1 and single["std"] is None and single["low"] is None


def test_plots_are_written(tmp_path):
    results = grid_results()
    oom = {"loss.name": "supcon", "loss.temperature": 0.05}
    results = [r for r in results if r["overrides"] != oom] + [result(oom, s, "out_of_memory") for s in SEEDS]
    by_temperature = plot_metric(
        results, "probe_top1", "loss.temperature", "loss.name", tmp_path / "t.png", grid=GRID
    )
    by_loss = plot_metric(results, "probe_top1", "loss.name", None, tmp_path / "l.png")
    paired = plot_paired_difference(results, "probe_top1", "loss.name", "coles", "supcon", tmp_path / "p.png")
    for path in (by_temperature, by_loss, paired):
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000


def test_write_reports_writes_every_file_and_strict_json(tmp_path):
    results = grid_results()
    results.append(
        result({"loss.name": "coles", "loss.temperature": 0.05}, 3, "diverged", final_loss=float("nan"))
    )
    spec = {
        "grid": GRID,
        "seeds": [*SEEDS, 3],
        "tables": [TABLE, {"metric": "pretrain_seconds", "rows": "loss.temperature", "columns": "loss.name"}],
        "plots": [
            {"metric": "probe_top1", "x": "loss.temperature", "group": "loss.name"},
            {"metric": "probe_top1", "x": "loss.name", "group": None},
        ],
        "paired": [{"metric": "probe_top1", "axis": "loss.name", "a": "coles", "b": "supcon"}],
        "evaluate": ["probe", "knn"],
    }
    paths = write_reports(tmp_path / "report", spec, results)
    names = [path.name for path in paths]
    assert names == [
        "summary.json",
        "results.csv",
        "tables.md",
        "plot_probe_top1_by_loss_temperature_per_loss_name.png",
        "plot_probe_top1_by_loss_name.png",
        "paired_probe_top1_loss_name_coles_minus_supcon.png",
    ]
    for path in paths:
        assert path.exists() and path.stat().st_size > 0

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    summary = json.loads((tmp_path / "report" / "summary.json").read_text(), parse_constant=reject)
    assert summary["cells"][cell_name({"loss.name": "coles", "loss.temperature": 0.05})]["statuses"] == {
        "ok": 3,
        "diverged": 1,
    }
    assert summary["paired"][0]["n"] == 6
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "### probe_top1" in tables and "### pretrain_seconds" in tables
    assert "(1 diverged)" in tables
    assert "t-interval" in tables
    protocols = tables[tables.index("### Protocols") :]  # each number says which protocol produced it
    assert "`probe_*`: linear probe fitted by L-BFGS" in protocols and "`knn_*`: weighted kNN" in protocols
