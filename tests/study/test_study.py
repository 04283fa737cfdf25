"""`ssl-toolkit study`: grids × seeds run end to end, resume after a kill, and record failed cells.

Studies run their cells through the in-process launcher here (the same runner, without an interpreter's
start-up per run); one study runs real subprocesses and is killed, one launches its cells on 2 processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
import yaml
from pretraining_runs import QUICKSTART, REPO, TINY_RUN

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.config import ConfigError
from ssl_toolkit.process.launch import InProcess
from ssl_toolkit.study.runner import StudyDirectory, StudyInterrupted, run_study
from ssl_toolkit.study.spec import load_study
from ssl_toolkit.training.objective import ContrastiveObjective

# Tiny runs: a few steps each, evaluated by kNN (seconds on 2 cores).
BASE = [item for item in TINY_RUN if not item.startswith(("train.max_steps", "train.checkpoint_every"))]
SHORT = [*BASE, "train.max_steps=3", "train.checkpoint_every=1", "log.knn_every=0"]


def _write_study(
    tmp_path, grid, seeds=(0, 1), overrides=SHORT, metric="knn_top1", evaluate=("knn",), **extra
):
    tables = (
        [{"metric": metric, "rows": next(iter(grid)), "columns": list(grid)[-1]}] if len(grid) > 1 else []
    )
    study = {
        "recipe": str(QUICKSTART),
        "overrides": list(overrides),
        "grid": grid,
        "seeds": list(seeds),
        "evaluate": list(evaluate),
        "tables": tables,
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _run_in_process(study_path, output, launcher=None):
    return run_study(load_study(study_path), output, launcher=launcher or InProcess())


def _results(directory):
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]


def _pretraining_starts(directory) -> dict[str, int]:
    """Per run: how many times a pretraining process was started (each start is one `$ ...` line)."""
    return {
        log.stem: sum(
            "ssl_toolkit.pretrain" in line for line in log.read_text().splitlines() if line.startswith("$")
        )
        for log in (directory / "logs").glob("*.log")
    }


CELL = re.compile(r"(?P<mean>-?\d+\.\d+) ± (?P<std>\d+\.\d+)")


def test_a_two_by_two_study_with_two_seeds_reports_mean_and_sample_std_of_its_results(tmp_path):
    # The final loss from pretrain.json: no evaluation, so the 8 runs take half the time.
    grid = {"loss.temperature": [0.2, 0.5], "model.proj_dim": [8, 16]}
    study = _write_study(tmp_path, grid, metric="final_loss", evaluate=())
    output = tmp_path / "out"
    _run_in_process(study, output)
    results = _results(output)
    assert len(results) == 8 and all(r["status"] == "ok" for r in results)
    assert {
        (r["overrides"]["loss.temperature"], r["overrides"]["model.proj_dim"], r["seed"]) for r in results
    } == {(t, d, s) for t in (0.2, 0.5) for d in (8, 16) for s in (0, 1)}
    for result in results:
        for metric in (
            "pretrain_seconds",
            "seconds_per_epoch",
            "views_per_s",
            "peak_memory_mb",
            "final_loss",
        ):
            assert isinstance(result[metric], float) and result[metric] >= 0, (metric, result)

    table = (output / "tables.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| 0.")}
    assert set(rows) == {"0.2", "0.5"}
    for temperature, line in rows.items():
        cells = [cell.strip() for cell in line.split("|")[2:-1]]
        for proj_dim, text in zip((8, 16), cells, strict=True):
            values = [
                r["final_loss"]
                for r in results
                if r["overrides"] == {"loss.temperature": float(temperature), "model.proj_dim": proj_dim}
            ]
            shown = CELL.fullmatch(text)
            assert shown, text
            assert float(shown["mean"]) == pytest.approx(statistics.mean(values), abs=5e-4)
            assert float(shown["std"]) == pytest.approx(statistics.stdev(values), abs=5e-4)
    summary = json.loads((output / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary and (output / "results.csv").is_file()
    assert max(_pretraining_starts(output).values()) == 1


@pytest.mark.slow
def test_a_study_of_subprocesses_killed_during_its_second_run_resumes_without_redoing_the_first(tmp_path):
    grid = {"loss.temperature": [0.2, 0.5]}
    overrides = [*BASE, "train.max_steps=30", "train.checkpoint_every=5", "log.knn_every=0"]
    study = _write_study(tmp_path, grid, seeds=[0], overrides=overrides, evaluate=())
    output = tmp_path / "out"
    command = [sys.executable, "-m", "ssl_toolkit.cli", "study", str(study), "--output-dir", str(output)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    second_metrics = None
    while True:
        assert first.poll() is None and time.monotonic() < deadline, "the study ended before its second run"
        done = (output / "results.jsonl").is_file() and len(_results(output)) == 1
        second_metrics = next((output / "runs").glob("cell001_*/metrics.jsonl"), None) if done else None
        if second_metrics is not None and len(second_metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the study dies; its run gets SIGTERM and checkpoints
    first.wait(timeout=30)
    lock = second_metrics.parent / ".lock"
    deadline = time.monotonic() + 120
    while subprocess.run(["flock", "-n", str(lock), "true"]).returncode != 0:  # the run has stopped
        assert time.monotonic() < deadline
        time.sleep(0.2)

    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
    results = _results(output)
    assert [r["cell"] for r in results] == [f"loss.temperature={t}" for t in (0.2, 0.5)]
    assert all(r["status"] == "ok" for r in results)
    starts = _pretraining_starts(output)
    (first_run,) = [name for name in starts if name.startswith("cell000")]
    assert starts[first_run] == 1  # not run again
    (second,) = [name for name in starts if name.startswith("cell001")]
    assert starts[second] == 2  # resumed from its checkpoint
    assert "resumed from" in (output / "logs" / f"{second}.log").read_text()


# Temperatures that make a cell fail in its first step, as a real run would: out of memory on the GPU, a
# loss that is NaN (the run diverges after train.max_bad_steps=1), a stop signal.
OUT_OF_MEMORY_T, NAN_T, SIGNALLED_T = 0.11, 0.12, 0.13


@pytest.fixture
def failing_cells(monkeypatch):
    original = ContrastiveObjective.loss_of

    def loss_of(self, embeddings, class_labels=None):
        temperature = self.loss.temperature
        if temperature == OUT_OF_MEMORY_T:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        loss = original(self, embeddings, class_labels)
        if temperature == NAN_T:
            return loss * float("nan")
        if temperature == SIGNALLED_T:
            os.kill(os.getpid(), signal.SIGTERM)  # the run stops after this step, with a checkpoint
        return loss

    monkeypatch.setattr(ContrastiveObjective, "loss_of", loss_of)


class SilentInProcess(InProcess):
    """The in-process launcher with every line the runs print thrown away: what is left is their outcome."""

    def start(self, command, **options):
        options["log"] = None
        with (
            open(os.devnull, "w") as nothing,
            contextlib.redirect_stdout(nothing),
            contextlib.redirect_stderr(nothing),
        ):
            return super().start(command, **options)


@pytest.mark.parametrize("launcher", [InProcess, SilentInProcess], ids=["logged", "output_emptied"])
def test_failed_cells_are_classified_from_their_outcome_and_shown_while_the_others_finish(
    tmp_path, failing_cells, launcher
):
    grid = {"loss.temperature": [0.5, OUT_OF_MEMORY_T, NAN_T, -1.0], "model.proj_dim": [16]}
    study = _write_study(tmp_path, grid, seeds=[0], overrides=[*SHORT, "train.max_bad_steps=1"])
    output = tmp_path / "out"
    _run_in_process(study, output, launcher())
    by_temperature = {r["overrides"]["loss.temperature"]: r for r in _results(output)}
    assert by_temperature[0.5]["status"] == "ok"
    assert by_temperature[OUT_OF_MEMORY_T]["status"] == "out_of_memory"
    assert by_temperature[OUT_OF_MEMORY_T]["message"].startswith("out of memory on the GPU: lower train.")
    assert by_temperature[NAN_T]["status"] == "diverged"
    assert by_temperature[-1.0]["status"] == "error" and "loss.temperature" in by_temperature[-1.0]["message"]
    if launcher is SilentInProcess:
        assert not list((output / "logs").glob("*.log"))
    table = (output / "tables.md").read_text()
    # One seed, so the finished cell shows its value alone (no spread), the failed ones their status.
    for temperature, shown in [
        (0.5, r"\d\.\d{3}"), (OUT_OF_MEMORY_T, "out of memory"), (NAN_T, "diverged"), (-1.0, "error")
    ]:  # fmt: skip
        assert re.search(rf"^\| {temperature} \| {shown} \|$", table, flags=re.MULTILINE), table


def test_a_cell_stopped_by_a_signal_stops_the_study_which_resumes_it(tmp_path, failing_cells):
    study = _write_study(tmp_path, {"loss.temperature": [SIGNALLED_T]}, seeds=[0], evaluate=())
    output = tmp_path / "out"
    with pytest.raises(StudyInterrupted, match=r"was stopped by a signal .*stopped by a signal after step"):
        _run_in_process(study, output, SilentInProcess())
    assert not (output / "results.jsonl").exists()
    (run,) = (output / "runs").iterdir()
    assert json.loads((run / "outcome.json").read_text())["status"] == "interrupted"


def test_unknown_keys_and_empty_grids_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.temprature' in grid"):
        load_study(_write_study(tmp_path, {"loss.temprature": [0.1]}))
    with pytest.raises(ConfigError, match=r"unknown config key 'train.bath_size' in overrides"):
        load_study(_write_study(tmp_path, {"loss.temperature": [0.1]}, overrides=["train.bath_size=4"]))
    with pytest.raises(ConfigError, match=r"non-empty `grid:`"):
        load_study(_write_study(tmp_path, {}))
    path = _write_study(tmp_path, {"loss.temperature": [0.1]})
    path.write_text(path.read_text() + "colour: blue\n")
    with pytest.raises(ConfigError, match=r"unknown key 'colour'"):
        load_study(path)


def test_a_dry_run_prints_every_run_and_runs_nothing(tmp_path, capsys):
    study = _write_study(tmp_path, {"loss.temperature": [0.1, 0.2]}, seeds=[0, 1, 2])
    output = tmp_path / "out"
    assert cli_main(["study", str(study), "--output-dir", str(output), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("-m ssl_toolkit.pretrain") == 6 and printed.count("ssl_toolkit.cli evaluate") == 6
    assert "loss.temperature=0.2 seed=2" in printed
    assert not output.exists()


def test_the_shipped_studies_and_the_readmes_example_load(tmp_path):
    shipped = sorted((REPO / "ssl_toolkit" / "recipes" / "studies").glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert load_study(path).cells()
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Studies") :]
    example = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL).group(1)
    (tmp_path / "example.yaml").write_text(example)
    study = load_study(tmp_path / "example.yaml")
    assert len(study.cells()) == 6 and study.seeds == [0, 1, 2]


@pytest.mark.slow
def test_cells_launch_on_several_processes_with_an_accelerate_config_and_evaluate_in_a_subprocess(tmp_path):
    config = REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"
    study = _write_study(tmp_path, {"loss.temperature": [0.5]}, seeds=[0], accelerate_config=str(config))
    output = tmp_path / "out"
    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
    (result,) = _results(output)
    assert result["status"] == "ok", result
    (log,) = (output / "logs").glob("*.log")
    text = log.read_text()
    assert "global batch 64 (2 processes)" in text
    assert "-m ssl_toolkit.cli evaluate" in text and "kNN on" in text  # the evaluation's own process
    assert result["peak_memory_mb"] > 0 and 0 < result["knn_top1"] <= 1


def test_a_result_line_cut_short_by_a_kill_is_dropped_before_the_next_is_appended(tmp_path):
    directory = StudyDirectory(tmp_path)
    directory.append_result({"cell": "a=1", "seed": 0, "status": "ok"})
    with directory.results.open("a") as handle:
        handle.write('{"cell": "a=2", "se')  # the study died here
    assert [r["cell"] for r in directory.read_results()] == ["a=1"]
    directory.drop_partial_line()
    directory.append_result({"cell": "a=2", "seed": 0, "status": "ok"})
    assert [r["cell"] for r in directory.read_results()] == ["a=1", "a=2"]


def test_a_sequence_study_records_the_gradient_boosting_probe_beside_the_linear_one(tmp_path):
    from pretraining_runs import SEQUENCE_RUN

    overrides = [*SEQUENCE_RUN, "train.max_steps=3", "log.knn_every=0"]
    study = _write_study(
        tmp_path, {"loss.temperature": [0.2]}, seeds=[0], overrides=overrides, evaluate=("probe", "boosting")
    )
    output = tmp_path / "out"
    _run_in_process(study, output)
    (result,) = _results(output)
    assert result["status"] == "ok", result
    (run_dir,) = (output / "runs").iterdir()
    boosting = json.loads((run_dir / "probe_boosting.json").read_text())
    assert (result["boosting_top1"], result["boosting_auroc"]) == (boosting["top1"], boosting["auroc"])
    assert result["probe_top1"] == json.loads((run_dir / "probe.json").read_text())["top1"]
