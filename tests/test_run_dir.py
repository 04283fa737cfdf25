"""The run directory's writers: strict JSON, atomic files, each step once."""

from __future__ import annotations

import json
import math

import pytest

from ssl_toolkit.files import json_text, write_json
from ssl_toolkit.run_dir import RunDirectory


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_everywhere_the_run_writes_json(tmp_path):
    record = {"step": 1, "loss": math.nan, "grad_norm": math.inf, "nested": {"values": [1.0, -math.inf]}}
    assert _strict(json_text(record)) == {
        "step": 1,
        "loss": None,
        "grad_norm": None,
        "nested": {"values": [1.0, None]},
    }
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.append_metrics(record)
    run.write_summary({"final_loss": math.nan})
    write_json(run.probe, {"auroc": math.nan})
    for path in (run.metrics, run.summary, run.probe):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            _strict(line)
    with pytest.raises(ValueError, match="NaN is not JSON"):
        _strict(json.dumps({"loss": math.nan}))  # what json.dumps alone would have written


def test_dropping_the_records_after_a_step_keeps_the_earlier_ones_in_order(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    for step in (1, 2, 3, 4, 5):
        run.append_metrics({"step": step, "loss": float(step)})
    run.drop_metrics_after(3)
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.append_metrics({"step": 4, "loss": 4.0})
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]
    assert not list(run.path.glob(".tmp_*"))
