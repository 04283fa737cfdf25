"""`tools/gpu_check.py`, the one command that measures every GPU figure, exercised on the CPU (dry run)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_the_dry_run_runs_every_section_on_the_cpu_and_writes_its_table(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, str(TOOLS / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-5000:]

    summary = json.loads((out / "gpu_check.json").read_text())
    sections = {s["section"]: s for s in summary["sections"]}
    assert list(sections) == list(gpu_check.SECTIONS)
    assert summary["dry_run"] is True and summary["failed"] == []
    for name, section in sections.items():
        # Every dependency of the dry run is installed by `make test`: each section runs here.
        assert section["status"] == "ok", (name, section["reason"])
        assert section["seconds"] > 0
        assert section["figures"], name
        for figure in section["figures"]:
            assert figure["verdict"] != "missed", figure
            if figure["verdict"].startswith("skipped"):
                assert "CUDA" in figure["verdict"], figure  # only the CUDA-only parts skip on a CPU

    figures = {f["case"]: f for s in summary["sections"] for f in s["figures"]}
    for n in gpu_check.DRY_SCALE.loss_sizes:
        for loss in ("floor", "ntxent", "supcon", "lightly_ntxent"):
            assert "ms" in figures[f"{loss}, N = {n:,}"]["value"]
    # The gradient check holds on the CPU too: the CPU generator's replay makes cached = plain, and the
    # control without the replay differs.
    check = sections["grad_cache"]["details"]["gradient_check"]
    assert check["generator"] == "CPU"
    assert check["relative_difference"] <= 1e-4
    assert check["relative_difference_without_replay"] >= 100 * max(check["relative_difference"], 1e-9)
    for size in gpu_check.DRY_SCALE.view_sizes:
        views = sections["augmentation"]["details"][f"{size}px"]
        assert views["batch_views_per_s"] > 0 and views["loader_views_per_s"] > 0
    # Both steps, eager and compiled, for both backbones.
    steps = sections["training_step"]["details"]
    for backbone, size, cifar_stem, _ in gpu_check.DRY_SCALE.step_models:
        name = f"{backbone}{' CIFAR stem' if cifar_stem else ''} {size} px"
        for mode in ("eager", "compiled (eager)"):
            for kind in ("ssl", "supervised"):
                assert steps[name][mode][kind]["views_per_s"] > 0
    pretraining = sections["pretraining"]["details"]
    assert pretraining["checkpoints"] and "encoder.safetensors" in pretraining["encoder_files"]
    assert 0.1 < pretraining["probe"]["top1"] <= 1.0
    assert pretraining["probe"]["protocol"] == "lbfgs"

    markdown = (out / "gpu_check.md").read_text()
    assert "| section | case | figure | target | verdict |" in markdown
    assert markdown.strip() in done.stdout
    for name in gpu_check.SECTIONS:
        assert f"| {name} | section time |" in markdown


def _arguments(tmp_path: Path, **changes) -> argparse.Namespace:
    values = {
        "dry_run": True,
        "section": "environment",
        "section_result": str(tmp_path / "result.json"),
        "work_dir": str(tmp_path),
    }
    return argparse.Namespace(**{**values, **changes})


def test_a_section_that_raises_is_recorded_as_failed_with_its_error(tmp_path, monkeypatch):
    def broken(report, scale, args):
        report.add("first figure", "1")
        raise RuntimeError("a typo in the section")

    monkeypatch.setitem(gpu_check.SECTION_FUNCTIONS, "environment", broken)
    assert gpu_check.run_section(_arguments(tmp_path)) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["reason"] == "RuntimeError: a typo in the section"
    assert [f["case"] for f in result["figures"]] == ["first figure"]  # what it measured before is kept


def test_a_section_missing_a_dependency_is_skipped_with_the_reason(tmp_path, monkeypatch):
    def needs_a_package(report, scale, args):
        gpu_check._require("a_package_that_is_not_installed")

    monkeypatch.setitem(gpu_check.SECTION_FUNCTIONS, "environment", needs_a_package)
    gpu_check.run_section(_arguments(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "skipped"
    assert result["reason"].startswith("a_package_that_is_not_installed is not installed")
    table = gpu_check.table([{**result, "seconds": 0.5}])
    assert "| environment | section | – |  | skipped: a_package_that_is_not_installed is not installed" in (
        "\n".join(table)
    )


def test_a_dry_run_holds_only_the_correctness_checks_to_their_targets():
    report = gpu_check.Report("losses", dry_run=True)
    report.held("speed", "1 ms", "≤ 1.3× floor", False)
    report.held("gradients", "0", "≤ 1e-4", False, on_cpu=True)
    assert [f.verdict for f in report.figures] == ["not held (dry run)", "missed"]
    report = gpu_check.Report("losses")
    report.held("speed", "1 ms", "≤ 1.3× floor", True)
    assert report.figures[0].verdict == "met"


def test_a_section_past_its_time_is_stopped_and_reported_and_the_next_one_runs(tmp_path, monkeypatch, capsys):
    timeouts = {**gpu_check.DRY_SCALE.timeouts, "environment": 0.01}
    monkeypatch.setattr(
        gpu_check, "DRY_SCALE", gpu_check.dataclasses.replace(gpu_check.DRY_SCALE, timeouts=timeouts)
    )
    out = tmp_path / "out"
    code = gpu_check.main(["--dry-run", "--out", str(out), "--sections", "environment"])
    assert code == 1
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["failed"] == ["environment"]
    assert summary["sections"][0]["reason"].startswith("timed out after 0.01 s")
    assert "timed out after 0.01 s" in capsys.readouterr().out


def test_results_already_in_the_folder_are_not_overwritten(tmp_path, capsys):
    (tmp_path / "gpu_check.json").write_text("{}")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"gpu_check: {tmp_path / 'gpu_check.json'} exists: pass --overwrite or another --out"
    assert (tmp_path / "gpu_check.json").read_text() == "{}"


def test_without_cuda_the_full_check_refuses_and_names_the_dry_run(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpu_check: no CUDA device: the check measures GPU figures; on a CPU use --dry-run"
    )
    assert not (tmp_path / "out").exists()


def test_a_dry_run_does_not_write_into_the_benchmarks(tmp_path, capsys):
    benchmarks = tmp_path / "BENCHMARKS.md"
    original = f"{gpu_check.BENCHMARKS_BEGIN}\nnot measured\n{gpu_check.BENCHMARKS_END}\n"
    benchmarks.write_text(original)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "o"), "--benchmarks", str(benchmarks)]) == 2
    assert "--benchmarks records GPU figures" in capsys.readouterr().err
    assert benchmarks.read_text() == original


def test_the_table_goes_between_the_gpu_sections_markers_and_nowhere_else(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    before = "# Benchmarks\n\n## GPU\n\nHow it is measured.\n\n"
    after = "\n\n## Later\n\ntext\n"
    benchmarks.write_text(
        f"{before}{gpu_check.BENCHMARKS_BEGIN}\nold table\n{gpu_check.BENCHMARKS_END}{after}"
    )
    gpu_check.fill_benchmarks(benchmarks, "H200; table\n\n| a | b |\n")
    text = benchmarks.read_text()
    filled = f"{gpu_check.BENCHMARKS_BEGIN}\nH200; table\n\n| a | b |\n{gpu_check.BENCHMARKS_END}"
    assert text == before + filled + after
    gpu_check.fill_benchmarks(benchmarks, "second run\n")  # a rerun replaces the first run's table
    assert "old table" not in benchmarks.read_text() and "H200" not in benchmarks.read_text()
    assert "second run" in benchmarks.read_text()


def test_the_projects_benchmarks_file_has_the_markers_to_fill():
    text = (REPO / "BENCHMARKS.md").read_text()
    assert text.count(gpu_check.BENCHMARKS_BEGIN) == 1 and text.count(gpu_check.BENCHMARKS_END) == 1
    assert (
        text.index("## GPU") < text.index(gpu_check.BENCHMARKS_BEGIN) < text.index(gpu_check.BENCHMARKS_END)
    )


def test_a_file_without_the_markers_is_refused_before_anything_runs(tmp_path, capsys):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("no markers")
    assert gpu_check.main(["--out", str(tmp_path / "o"), "--benchmarks", str(benchmarks)]) == 2
    assert "line to write after" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_filling_a_file_without_the_markers_leaves_it_untouched(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("no markers")
    with pytest.raises(ValueError, match="has no"):
        gpu_check.fill_benchmarks(benchmarks, "table")
    assert benchmarks.read_text() == "no markers"
