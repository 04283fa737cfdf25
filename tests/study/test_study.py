"""`ssl-toolkit study`: grids × seeds run end to end, resume after a kill, and record failed cells."""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest
import yaml
from pretraining_runs import QUICKSTART, REPO, TINY_RUN

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.config import ConfigError
from ssl_toolkit.study.runner import StudyDirectory, classify
from ssl_toolkit.study.spec import load_study

# Tiny runs: a few steps each, evaluated by kNN (seconds on 2 cores).
BASE = [item for item in TINY_RUN if not item.startswith(("train.max_steps", "train.checkpoint_every"))]
SHORT = [*BASE, "train.max_steps=3", "train.checkpoint_every=1"]


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


@pytest.mark.slow
def test_a_two_by_two_study_with_two_seeds_reports_mean_and_sample_std_of_its_results(tmp_path):
    # The final loss from pretrain.json: no evaluation process, so the 8 runs take half the time.
    grid = {"loss.temperature": [0.2, 0.5], "model.proj_dim": [8, 16]}
    study = _write_study(tmp_path, grid, metric="final_loss", evaluate=())
    output = tmp_path / "out"
    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
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
def test_a_study_killed_during_its_third_run_resumes_without_redoing_the_first_two(tmp_path):
    grid = {"loss.temperature": [0.2, 0.3, 0.5]}
    study = _write_study(
        tmp_path, grid, seeds=[0], overrides=[*BASE, "train.max_steps=60", "train.checkpoint_every=5"]
    )
    output = tmp_path / "out"
    command = [sys.executable, "-m", "ssl_toolkit.cli", "study", str(study), "--output-dir", str(output)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    third_metrics = None
    while True:
        assert first.poll() is None and time.monotonic() < deadline, "the study ended before its third run"
        done = (output / "results.jsonl").is_file() and len(_results(output)) == 2
        third_metrics = next((output / "runs").glob("cell002_*/metrics.jsonl"), None) if done else None
        if third_metrics is not None and len(third_metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the study dies; its run gets SIGTERM and checkpoints
    first.wait(timeout=30)
    lock = third_metrics.parent / ".lock"
    deadline = time.monotonic() + 120
    while subprocess.run(["flock", "-n", str(lock), "true"]).returncode != 0:  # the run has stopped
        assert time.monotonic() < deadline
        time.sleep(0.2)

    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
    results = _results(output)
    assert [r["cell"] for r in results] == [f"loss.temperature={t}" for t in (0.2, 0.3, 0.5)]
    assert all(r["status"] == "ok" for r in results)
    starts = _pretraining_starts(output)
    first_two = sorted(name for name in starts if name.startswith(("cell000", "cell001")))
    assert [starts[name] for name in first_two] == [1, 1]  # not run again
    (third,) = [name for name in starts if name.startswith("cell002")]
    assert starts[third] == 2  # resumed from its checkpoint
    assert "resumed from" in (output / "logs" / f"{third}.log").read_text()


@pytest.mark.slow
def test_failed_cells_are_recorded_and_shown_while_the_others_finish(tmp_path):
    # An invalid temperature (the run refuses it), and images so large that the run exceeds its memory.
    grid = {"loss.temperature": [0.5, -1.0], "data.image_size": [8, 384]}
    study = _write_study(tmp_path, grid, seeds=[0], memory_limit_mb=4500)
    output = tmp_path / "out"
    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
    by_cell = {r["cell"]: r for r in _results(output)}
    assert by_cell["loss.temperature=0.5,data.image_size=8"]["status"] == "ok"
    assert by_cell["loss.temperature=0.5,data.image_size=384"]["status"] == "out_of_memory"
    for size in (8, 384):
        failed = by_cell[f"loss.temperature=-1.0,data.image_size={size}"]
        assert failed["status"] == "error" and "loss.temperature" in failed["message"]
    table = (output / "tables.md").read_text()
    # One seed, so the finished cell shows its value alone (no spread), the failed ones their status.
    assert re.search(r"^\| 0\.5 \| \d\.\d{3} \| out of memory \|$", table, flags=re.MULTILINE), table
    assert re.search(r"^\| -1\.0 \| error \| error \|$", table, flags=re.MULTILINE), table


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


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        (5, "error: out of memory on the host: lower train.batch_size ...", "out_of_memory"),
        (-signal.SIGKILL, None, "out_of_memory"),  # the kernel's OOM killer
        (1, "error: out of memory on the GPU: ...", "out_of_memory"),  # a multi-process launcher's own code
        (3, "error: the loss was NaN or infinite for 5 steps in a row ...", "diverged"),
        (1, "error: the weights or BatchNorm statistics are NaN or infinite at step 3 ...", "diverged"),
        (2, "error: loss.temperature=-1.0 must be more than 0", "error"),
        (1, "RuntimeError: something else", "error"),
    ],
)
def test_a_failed_runs_status_comes_from_its_exit_code_and_error_line(code, message, status):
    assert classify(code, message) == status


@pytest.mark.slow
def test_cells_launch_on_several_processes_with_an_accelerate_config(tmp_path):
    config = REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"
    study = _write_study(
        tmp_path, {"loss.temperature": [0.5]}, seeds=[0], evaluate=(), accelerate_config=str(config)
    )
    output = tmp_path / "out"
    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
    (result,) = _results(output)
    assert result["status"] == "ok", result
    (log,) = (output / "logs").glob("*.log")
    assert "global batch 64 (2 processes)" in log.read_text()
    assert result["peak_memory_mb"] > 0


def test_a_result_line_cut_short_by_a_kill_is_dropped_before_the_next_is_appended(tmp_path):
    directory = StudyDirectory(tmp_path)
    directory.append_result({"cell": "a=1", "seed": 0, "status": "ok"})
    with directory.results.open("a") as handle:
        handle.write('{"cell": "a=2", "se')  # the study died here
    assert [r["cell"] for r in directory.read_results()] == ["a=1"]
    directory.drop_partial_line()
    directory.append_result({"cell": "a=2", "seed": 0, "status": "ok"})
    assert [r["cell"] for r in directory.read_results()] == ["a=1", "a=2"]


@pytest.mark.slow
def test_a_sequence_study_records_the_gradient_boosting_probe_beside_the_linear_one(tmp_path):
    from pretraining_runs import SEQUENCE_RUN

    overrides = [*SEQUENCE_RUN, "train.max_steps=3", "log.knn_every=0"]
    study = _write_study(
        tmp_path, {"loss.temperature": [0.2]}, seeds=[0], overrides=overrides, evaluate=("probe", "boosting")
    )
    output = tmp_path / "out"
    assert cli_main(["study", str(study), "--output-dir", str(output)]) == 0
    (result,) = _results(output)
    assert result["status"] == "ok", result
    (run_dir,) = (output / "runs").iterdir()
    boosting = json.loads((run_dir / "probe_boosting.json").read_text())
    assert (result["boosting_top1"], result["boosting_auroc"]) == (boosting["top1"], boosting["auroc"])
    assert result["probe_top1"] == json.loads((run_dir / "probe.json").read_text())["top1"]
