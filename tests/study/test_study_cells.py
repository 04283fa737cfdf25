"""Grids of several mappings (one factor at a time, unlike cells), `where`, per-cell tables, `by` pairing,
a fixed probe weight decay, and `loss.option=null`."""

from __future__ import annotations

import json
import re
import statistics

import pytest
import torch
import yaml
from pretraining_runs import QUICKSTART

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.config.parse import to_dict
from ssl_toolkit.eval.linear_probe import evaluate_linear_probe, fit_logistic_regression
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.study import report
from ssl_toolkit.study.plots import plot_metric
from ssl_toolkit.study.runner import StudyRunner
from ssl_toolkit.study.spec import load_study
from ssl_toolkit.study.statistics import paired_difference
from ssl_toolkit.study.tables import markdown_table, metric_decimals

# The quickstart recipe's own values of the keys the cells below leave out.
QUICKSTART_BATCH = load_config(QUICKSTART).train.batch_size
QUICKSTART_TEMPERATURE = load_config(QUICKSTART).loss.options["temperature"]
ONE_FACTOR_AT_A_TIME = [
    {"loss.name": ["coles", "ntxent"], "loss.temperature": [1.0, 0.05]},
    {"loss.name": ["coles"], "train.batch_size": [64, QUICKSTART_BATCH]},  # the second is a cell already
    {"loss.name": ["contrastive"], "loss.temperature": [None]},
]


def write_study(tmp_path, grid, **extra):
    path = tmp_path / "study.yaml"
    study = {"recipe": str(QUICKSTART), "grid": grid, "seeds": [0, 1], "evaluate": ["knn"], **extra}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_list_of_grids_runs_their_union_and_fills_left_out_keys_from_the_base(tmp_path):
    study = load_study(write_study(tmp_path, ONE_FACTOR_AT_A_TIME, overrides=["loss.temperature=0.05"]))
    cells = study.cells()
    settings = [cell.settings for cell in cells]
    assert [s["loss.name"] for s in settings] == [
        "coles",
        "coles",
        "ntxent",
        "ntxent",
        "coles",
        "contrastive",
    ]
    # coles at the base batch size with the base temperature (0.05, from the overrides) is the cell
    # (coles, 0.05) of the first mapping: run once, with the first mapping's overrides.
    assert len({cell.name for cell in cells}) == len(cells) == 6
    batch_cell = cells[4]
    assert batch_cell.overrides == {"loss.name": "coles", "train.batch_size": 64}
    assert batch_cell.settings == {"loss.name": "coles", "loss.temperature": 0.05, "train.batch_size": 64}
    contrastive = cells[5]
    assert contrastive.settings["loss.temperature"] is None
    assert contrastive.settings["train.batch_size"] == QUICKSTART_BATCH
    assert "loss.temperature=null" in contrastive.arguments()
    assert study.axes() == {
        "loss.name": ["coles", "ntxent", "contrastive"],
        "loss.temperature": [0.05, 1.0, None],  # numbers ascending, the loss's default last
        "train.batch_size": sorted([64, QUICKSTART_BATCH]),
    }
    assert study.as_dict()["cells"] == settings
    # A single mapping is the full product, with nothing taken from the base.
    product = load_study(write_study(tmp_path, {"loss.temperature": [0.1, 0.2]}))
    assert [cell.settings for cell in product.cells()] == [
        {"loss.temperature": 0.1},
        {"loss.temperature": 0.2},
    ]
    assert "cells" not in product.as_dict()


def test_the_runs_record_every_grid_key_and_the_probe_gets_the_fixed_weight_decay(tmp_path):
    study = load_study(write_study(tmp_path, ONE_FACTOR_AT_A_TIME, probe_weight_decay=1.0e-4))
    runner = StudyRunner(study, tmp_path / "out")
    cell = study.cells()[4]
    run = RunDirectory(runner.directory.runs / "run")
    command = runner.pretrain_command(cell, 0, run).arguments
    # The run gets the cell's own overrides; results.jsonl records every grid key (the base's too).
    assert "train.batch_size=64" in command and not any(
        a.startswith("loss.temperature=") for a in command[-9:-5]
    )
    assert f"run.output_dir={runner.directory.runs}" in command and "run.name=run" in command
    # One evaluation process for probe and kNN, the probe at the fixed decay; kNN alone takes no decay.
    both = StudyRunner(load_study(write_study(tmp_path, ONE_FACTOR_AT_A_TIME, probe_weight_decay=1.0e-4,
                                              evaluate=["probe", "knn"])), tmp_path / "both")  # fmt: skip
    assert list(both.evaluation_command(run).arguments) == [
        "evaluate", str(run.path), "--evaluations", "probe", "knn", "--weight-decay", "0.0001",
    ]  # fmt: skip
    assert "--weight-decay" not in runner.evaluation_command(run).arguments


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        ({"grid": []}, "non-empty `grid:`"),
        ({"grid": [{"loss.name": ["coles"]}, {"loss.tempreature": [0.1]}]}, "loss.tempreature"),
        ({"tables": [{"metrics": ["probe_top1", "accuracy"]}]}, "'accuracy'"),
        (
            {
                "tables": [
                    {
                        "metric": "knn_top1",
                        "rows": "loss.name",
                        "columns": "loss.temperature",
                        "where": {"optim.lr": 0.1},
                    }
                ]
            },
            "where must map grid keys",
        ),
        (
            {
                "paired": [
                    {"metric": "knn_top1", "axis": "loss.name", "a": "coles", "b": "ntxent", "by": ["seed"]}
                ]
            },
            "by must list grid keys",
        ),
        ({"probe_weight_decay": -1}, "probe_weight_decay=-1"),
        ({"overrides": ["model.proj_dim=many"]}, "does not load"),  # checked once: the cells read the base
    ],
)  # fmt: skip
def test_bad_cells_where_by_and_probe_decay_are_named_before_anything_runs(tmp_path, extra, phrase):
    spec = {"grid": ONE_FACTOR_AT_A_TIME, **extra}
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        load_study(write_study(tmp_path, **spec))


def test_a_base_that_its_cells_complete_is_accepted(tmp_path):
    # loss.supervised=true is invalid with the recipe's ntxent, valid with every cell's loss.
    grid = [{"loss.name": ["supcon"], "loss.temperature": [0.1]}, {"loss.name": ["cross_entropy"]}]
    study = load_study(
        write_study(tmp_path, grid, overrides=["loss.supervised=true", "loss.temperature=null"])
    )
    assert [cell.settings["loss.temperature"] for cell in study.cells()] == [0.1, None]


def test_null_drops_a_loss_option_so_the_losss_default_applies():
    with pytest.raises(ConfigError, match=re.escape("loss.temperature")):
        load_config(QUICKSTART, ["loss.name=contrastive"])  # the recipe's temperature is NT-Xent's
    loss = to_dict(load_config(QUICKSTART, ["loss.name=contrastive", "loss.temperature=null"]))["loss"]
    assert "temperature" not in loss and loss["name"] == "contrastive"


# --- reports of a one-factor-at-a-time study ------------------------------------------------------------

SETTINGS = [
    {"loss.name": "coles", "loss.temperature": 0.05, "train.batch_size": 256},
    {"loss.name": "coles", "loss.temperature": 1.0, "train.batch_size": 256},
    {"loss.name": "ntxent", "loss.temperature": 0.05, "train.batch_size": 256},
    {"loss.name": "ntxent", "loss.temperature": 1.0, "train.batch_size": 256},
    {"loss.name": "coles", "loss.temperature": 0.05, "train.batch_size": 64},
    {"loss.name": "contrastive", "loss.temperature": None, "train.batch_size": 256},
]
AXES = {
    "loss.name": ["coles", "ntxent", "contrastive"],
    "loss.temperature": [0.05, 1.0, None],
    "train.batch_size": [64, 256],
}


def results(values_by_cell=None):
    runs = []
    for index, settings in enumerate(SETTINGS):
        for seed in (0, 1, 2):
            name = ",".join(f"{key}={value}" for key, value in settings.items())
            value = 0.5 + index / 20 + seed * (index + 1) / 100  # a different spread in every cell
            runs.append({"cell": name, "overrides": settings, "seed": seed, "status": "ok", "message": None,
                         "knn_top1": value, "seconds_per_epoch": 10.0 + index + seed})  # fmt: skip
    return runs


def rows_of(markdown: str) -> dict[str, list[str]]:
    """Per heading (`####`, or '' before any): the table's rows, each a list of its cells' texts."""
    tables, heading = {}, ""
    for line in markdown.splitlines():
        if line.startswith("#### "):
            heading = line[5:]
        elif line.startswith("| ") and not line.startswith("| loss.name \\"):
            tables.setdefault(heading, []).append([text.strip() for text in line.strip("|").split("|")])
    return tables


def expected(settings: dict, metric: str = "knn_top1") -> str:
    values = [run[metric] for run in results() if run["overrides"] == settings]
    decimals = metric_decimals(metric)
    return f"{statistics.fmean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def test_tables_lay_out_only_the_planned_cells_and_where_filters_the_runs():
    table = {"metric": "knn_top1", "rows": "loss.name", "columns": "loss.temperature"}
    tables = rows_of(markdown_table(results(), table, AXES, cells=SETTINGS))
    # batch 64 holds only coles at 0.05: one row, one column; batch 256 all three losses.
    assert tables["train.batch_size = 64"] == [["coles", expected(SETTINGS[4])]]
    assert tables["train.batch_size = 256"] == [
        ["coles", expected(SETTINGS[0]), expected(SETTINGS[1]), ""],
        ["ntxent", expected(SETTINGS[2]), expected(SETTINGS[3]), ""],
        ["contrastive", "", "", expected(SETTINGS[5])],  # no cell planned at the other temperatures
    ]
    where = {**table, "where": {"train.batch_size": 256}}
    filtered = markdown_table(results(), where, AXES, cells=SETTINGS)
    assert filtered.splitlines()[0].endswith(", train.batch_size = 256")  # named once, in the title
    assert rows_of(filtered) == {"": tables["train.batch_size = 256"]}
    # Without the planned cells (a full product), every value is laid out and the gaps read "not run".
    product = rows_of(markdown_table(results(), table, AXES))
    assert product["train.batch_size = 64"][1] == ["ntxent", "not run", "not run", "not run"]


def test_a_per_cell_table_has_one_row_per_cell_and_a_column_per_metric():
    table = {"metrics": ["knn_top1", "seconds_per_epoch"], "where": {"train.batch_size": 256}}
    markdown = markdown_table(results(), table, AXES, cells=SETTINGS)
    body = [row for row in rows_of(markdown)[""] if row[0] != "cell"]  # past the header
    assert [row[0] for row in body] == [
        "loss.name=coles, loss.temperature=0.05, train.batch_size=256",
        "loss.name=coles, loss.temperature=1.0, train.batch_size=256",
        "loss.name=ntxent, loss.temperature=0.05, train.batch_size=256",
        "loss.name=ntxent, loss.temperature=1.0, train.batch_size=256",
        "loss.name=contrastive, loss.temperature=null, train.batch_size=256",
    ]
    for row, settings in zip(body, [SETTINGS[i] for i in (0, 1, 2, 3, 5)], strict=True):
        assert row[1:] == [expected(settings), expected(settings, "seconds_per_epoch")]
    assert "mean ± sample std over n = 3 seeds" in markdown


def test_paired_by_pairs_on_the_named_keys_only():
    runs = []
    for fraction in (0.1, 0.3):
        for seed in (0, 1, 2):
            for loss, temperature, value in (("supcon", 0.1, 0.8 + seed / 100), ("cross_entropy", None, 0.7)):
                settings = {"loss.name": loss, "loss.temperature": temperature, "data.fraction": fraction}
                runs.append({"cell": f"{loss},{fraction}", "overrides": settings, "seed": seed,
                             "status": "ok", "knn_top1": value + fraction})  # fmt: skip
    everything = paired_difference(runs, "knn_top1", "loss.name", "supcon", "cross_entropy")
    assert everything["n"] == 0  # the temperatures differ: no partner under "every other key"
    by_fraction = paired_difference(
        runs, "knn_top1", "loss.name", "supcon", "cross_entropy", by=["data.fraction"]
    )
    assert by_fraction["n"] == 6 and by_fraction["unpaired"] == 0
    assert by_fraction["mean"] == pytest.approx(statistics.fmean([0.1 + seed / 100 for seed in (0, 1, 2)]))
    assert all(set(pair["overrides"]) == {"data.fraction"} for pair in by_fraction["pairs"])


def test_a_plot_leaves_out_the_lines_with_a_single_planned_x(tmp_path, monkeypatch):
    drawn = []
    from matplotlib.axes import Axes

    original = Axes.errorbar

    def record(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x), list(y)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", record)
    path = plot_metric(results(), "knn_top1", "loss.temperature", "loss.name", tmp_path / "t.png",
                       grid=AXES, cells=SETTINGS, where={"train.batch_size": 256})  # fmt: skip
    assert path.is_file()
    # coles and ntxent each have two temperatures at batch 256; contrastive has one (null): left out,
    # and so is the null x value no line reaches.
    assert [(label, x) for label, x, _ in drawn] == [
        ("loss.name=coles", [0.05, 1.0]),
        ("loss.name=ntxent", [0.05, 1.0]),
    ]
    coles_mean = drawn[0][2][0]
    assert coles_mean == pytest.approx(float(expected(SETTINGS[0]).split(" ± ")[0]), abs=5e-4)


def test_a_fixed_probe_weight_decay_fits_once_at_that_decay():
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(300, 8, generator=generator), torch.randn(100, 8, generator=generator)
    train_y, test_y = (train_x[:, 0] > 0).long(), (test_x[:, 0] > 0).long()
    fixed = evaluate_linear_probe((train_x, train_y), (test_x, test_y), 2, weight_decay=1e-2)
    assert fixed["weight_decay"] == 1e-2 and "val_top1" not in fixed
    direct = fit_logistic_regression(train_x, train_y, 2, weight_decay=1e-2)
    assert fixed["top1"] == pytest.approx((direct.scores(test_x).argmax(1) == test_y).float().mean().item())
    searched = evaluate_linear_probe((train_x, train_y), (test_x, test_y), 2)
    assert set(searched["val_top1"]) == {"0.0", "1e-06", "1e-05", "0.0001", "0.001", "0.01"}


def test_the_whole_report_of_a_one_factor_at_a_time_study(tmp_path):
    spec = {
        "grid": AXES,
        "cells": SETTINGS,
        "seeds": [0, 1, 2],
        "tables": [
            {"metric": "knn_top1", "rows": "loss.name", "columns": "loss.temperature",
             "where": {"train.batch_size": 256}},
            {"metrics": ["knn_top1", "seconds_per_epoch"]},
        ],
        "plots": [{"metric": "knn_top1", "x": "train.batch_size", "group": "loss.name"}],
        "paired": [{"metric": "knn_top1", "axis": "loss.name", "a": "coles", "b": "ntxent",
                    "by": ["loss.temperature"]}],
    }  # fmt: skip
    written = report.write_reports(tmp_path, spec, results())
    names = sorted(path.name for path in written)
    assert "plot_knn_top1_by_train.batch_size_per_loss.name.png" not in names  # dots become _
    assert "plot_knn_top1_by_train_batch_size_per_loss_name.png" in names
    tables = (tmp_path / "tables.md").read_text()
    assert "one row per cell" in tables and expected(SETTINGS[5]) in tables
    (paired,) = json.loads((tmp_path / "summary.json").read_text())["paired"]
    assert paired["n"] == 6  # coles − ntxent, paired by seed and temperature: 2 temperatures × 3 seeds


def test_a_key_that_follows_the_rows_splits_no_table():
    # SupCon's temperature is 0.1 wherever loss.name is supcon and null for cross-entropy: one table.
    cells = [
        {"loss.name": loss, "loss.temperature": temperature, "data.fraction": fraction}
        for loss, temperature in (("supcon", 0.1), ("cross_entropy", None))
        for fraction in (0.1, 0.3)
    ]
    runs = [
        {
            "cell": str(settings),
            "overrides": settings,
            "seed": seed,
            "status": "ok",
            "knn_top1": 0.8 + seed / 100,
        }
        for settings in cells
        for seed in (0, 1)
    ]
    axes = {
        "loss.name": ["supcon", "cross_entropy"],
        "loss.temperature": [0.1, None],
        "data.fraction": [0.1, 0.3],
    }
    table = {"metric": "knn_top1", "rows": "loss.name", "columns": "data.fraction"}
    markdown = markdown_table(runs, table, axes, cells=cells)
    assert "####" not in markdown
    assert list(rows_of(markdown)) == [""] and len(rows_of(markdown)[""]) == 2
    # Where the temperature does vary within a loss, it still splits.
    varied = [*cells, {"loss.name": "supcon", "loss.temperature": None, "data.fraction": 0.1}]
    assert "#### loss.temperature = 0.1" in markdown_table(runs, table, axes, cells=varied)


def test_where_with_a_list_keeps_any_of_its_values_in_one_table():
    table = {"metric": "knn_top1", "rows": "loss.name", "columns": "train.batch_size",
             "where": {"loss.temperature": [0.05, None]}}  # fmt: skip
    markdown = markdown_table(results(), table, AXES, cells=SETTINGS)
    assert "loss.temperature = 0.05 or null" in markdown.splitlines()[0]
    # Within the kept cells the temperature follows the loss: one table, coles at both batch sizes.
    assert rows_of(markdown) == {
        "": [
            ["coles", expected(SETTINGS[4]), expected(SETTINGS[0])],
            ["ntxent", "", expected(SETTINGS[2])],
            ["contrastive", "", expected(SETTINGS[5])],
        ]
    }
