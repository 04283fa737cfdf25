"""A study's runs share one W&B group, and its tables go to that group."""

from __future__ import annotations

import types

import wandb
from pretraining_runs import QUICKSTART, tiny_config

from ssl_toolkit import tracking
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.study.publish import publish_study_reports
from ssl_toolkit.study.runner import StudyRunner
from ssl_toolkit.study.spec import Cell, Study


def test_a_runs_group_reaches_wandb(tmp_path):
    captured = {}

    class Recorder:
        def init_trackers(self, project, config, init_kwargs):
            captured.update(init_kwargs)

    config = tiny_config(tmp_path, "grouped", "log.trackers=[wandb]", "log.group=my_study")
    tracking.init_trackers(Recorder(), config, RunDirectory(config.run_dir))
    assert captured["wandb"]["group"] == "my_study"


def test_every_run_of_a_study_joins_the_studys_group(tmp_path):
    study = Study(
        source=tmp_path / "temperatures.yaml", recipe=QUICKSTART, grid={"loss.temperature": [0.1]}, seeds=[0]
    )
    command = StudyRunner(study, tmp_path).pretrain_command(
        Cell({"loss.temperature": 0.1}), 0, RunDirectory(tmp_path / "runs" / "cell000_seed0")
    )
    assert "log.group=temperatures" in command.arguments


def test_the_studys_tables_and_plots_are_logged_to_its_group(tmp_path, monkeypatch):
    calls = {}

    def fake_init(**kwargs):
        calls["init"] = kwargs
        return types.SimpleNamespace(log=lambda values: calls.setdefault("log", values), finish=lambda: None)

    monkeypatch.setattr(wandb, "init", fake_init)
    plot = tmp_path / "plot_knn_top1_by_loss.temperature.png"
    plot.write_bytes(b"png")
    monkeypatch.setattr(wandb, "Image", lambda path: ("image", path))
    results = [
        {"cell": "loss.temperature=0.1", "overrides": {"loss.temperature": 0.1}, "seed": seed, "status": "ok",
         "message": None, "knn_top1": 0.5 + seed / 10}
        for seed in (0, 1)
    ]  # fmt: skip
    publish_study_reports("temperatures", tmp_path, results, [tmp_path / "summary.json", plot])
    assert calls["init"]["group"] == "temperatures" and calls["init"]["job_type"] == "study"
    summary = calls["log"]["summary"]
    assert summary.columns == ["cell", "metric", "mean", "std", "n"]
    (row,) = summary.data
    assert row[:2] == ["loss.temperature=0.1", "knn_top1"] and abs(row[2] - 0.55) < 1e-12 and row[4] == 2
    assert len(calls["log"]["results"].data) == 2
    assert calls["log"][plot.stem] == ("image", str(plot))
