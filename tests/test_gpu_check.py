"""`tools/gpu_check.py`, the one command that measures every GPU figure, exercised on the CPU (dry run)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

import gpu_check  # noqa: E402
import gpu_check_sections  # noqa: E402

# The whole dry run (every section, about 1.5 minutes) is `make gpu-check-dry-run`, which CI runs after
# `make test`; here, two of its sections.
DRY_RUN_SECTIONS = ("environment", "losses")


@pytest.mark.slow
def test_a_dry_run_of_some_sections_runs_them_on_the_cpu_and_writes_their_table(tmp_path):
    out = tmp_path / "check"
    command = [str(TOOLS / "gpu_check.py"), "--dry-run", "--out", str(out), "--sections", *DRY_RUN_SECTIONS]
    done = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-5000:]

    summary = json.loads((out / "gpu_check.json").read_text())
    sections = {s["section"]: s for s in summary["sections"]}
    assert list(sections) == list(DRY_RUN_SECTIONS)
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

    environment = sections["environment"]["details"]
    assert environment["packages"]["torch"] == importlib.metadata.version("torch")
    assert environment["fashion_mnist"]["path"] == str(gpu_check.DEFAULT_FASHION_MNIST)
    assert "gpu" not in environment  # no CUDA device here
    figures = {f["case"]: f for s in summary["sections"] for f in s["figures"]}
    cases = sections["losses"]["details"]["cases"]
    for n in gpu_check_sections.DRY_SCALE.loss_sizes:
        for loss in ("floor", "ntxent", "supcon", "lightly_ntxent"):
            assert "ms" in figures[f"{loss}, N = {n:,}"]["value"]
            # Peak memory is a GPU figure: on the CPU it is not measured.
            assert cases[f"{loss}@{n}"]["ms"] > 0 and cases[f"{loss}@{n}"]["peak_mib"] is None
            assert "– (CUDA only)" in figures[f"{loss}, N = {n:,}"]["value"]

    markdown = (out / "gpu_check.md").read_text()
    assert "| section | case | figure | target | verdict |" in markdown
    assert markdown.strip() in done.stdout
    for name in DRY_RUN_SECTIONS:
        assert f"| {name} | section time |" in markdown
    assert "| whole check | 2 of 2 sections |" in markdown
    assert (out / "gpu_check.log").read_text().count("--section ") == len(DRY_RUN_SECTIONS)


@pytest.mark.slow
def test_the_command_runs_without_the_toolkit_installed_and_without_torch(tmp_path):
    """What a bare GPU machine's `python3 tools/gpu_check.py` does: no site-packages (-S), so neither the
    installed toolkit nor torch; the command finds the repository's own and imports no torch itself."""
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text(f"{gpu_check.BENCHMARKS_BEGIN}\nnot measured\n{gpu_check.BENCHMARKS_END}\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "gpu_check.json").write_text(json.dumps({"dry_run": False, "sections": []}))
    (results / "gpu_check.md").write_text("NVIDIA H100 80GB HBM3; table\n")
    script = (
        f"import sys; sys.path.insert(0, {str(TOOLS)!r}); import gpu_check; assert 'torch' not in sys.modules"
    )
    imported = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    record = ["--record", str(results), "--benchmarks", str(benchmarks)]
    done = subprocess.run(
        [sys.executable, "-S", str(TOOLS / "gpu_check.py"), *record],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "NVIDIA H100 80GB HBM3; table" in benchmarks.read_text()


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
        gpu_check_sections._require("a_package_that_is_not_installed")

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
    report = gpu_check_sections.Report("losses", dry_run=True)
    report.held("speed", "1 ms", "≤ 1.3× floor", False)
    report.held("gradients", "0", "≤ 1e-4", False, on_cpu=True)
    assert [f.verdict for f in report.figures] == ["not held (dry run)", "missed"]
    report = gpu_check_sections.Report("losses")
    report.held("speed", "1 ms", "≤ 1.3× floor", True)
    assert report.figures[0].verdict == "met"


@pytest.mark.slow
def test_a_section_past_its_time_is_stopped_and_reported_and_the_next_one_runs(tmp_path, monkeypatch, capsys):
    timeouts = {**gpu_check.DRY_SCALE.timeouts, "environment": 0.01}
    monkeypatch.setattr(gpu_check, "DRY_SCALE", dataclasses.replace(gpu_check.DRY_SCALE, timeouts=timeouts))
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


def test_a_section_gets_its_own_limit_or_what_the_budget_leaves_after_the_later_sections_reserves():
    scale = gpu_check_sections.GPU_SCALE
    # Every section keeps its reserve when the ones before it keep to theirs, and no reserve is above
    # the section's own limit.
    assert sum(scale.reserves.values()) <= scale.budget
    assert all(scale.reserves[s] <= scale.timeouts[s] for s in gpu_check_sections.SECTIONS)
    assert gpu_check.section_time("losses", ["augmentation"], scale, 480) == (150, "the section's limit")
    later = ["grad_cache", "pretraining"]
    assert gpu_check.section_time("training_step", later, scale, 400) == (190, gpu_check.BUDGET_BOUND)
    assert gpu_check.section_time("training_step", later, scale, 100) == (0.0, gpu_check.BUDGET_BOUND)
    assert gpu_check.section_time("pretraining", [], scale, 1e6) == (300, "the section's limit")


def test_sections_past_the_time_budget_are_not_run_and_the_check_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    code = gpu_check.main(
        ["--dry-run", "--out", str(out), "--sections", "environment", "losses", "--time-budget", "1"]
    )
    assert code == 1
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["failed"] == ["environment", "losses"] and summary["time_budget"] == 1
    for section in summary["sections"]:
        assert section["status"] == "out of time"
        assert section["reason"] == "1 s budget spent before it (--time-budget to widen)"
    markdown = (out / "gpu_check.md").read_text()
    assert "| whole check | 2 of 2 sections |" in markdown and "| ≤ 0.0166667 min |" in markdown
    assert "losses: out of time" in capsys.readouterr().out


@pytest.mark.parametrize("budget", ["0", "-5", "nan"])
def test_a_time_budget_that_is_not_a_positive_number_of_seconds_is_refused(tmp_path, capsys, budget):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "o"), "--time-budget", budget]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gpu_check: --time-budget {float(budget):g}: must be a number of seconds > 0, e.g. 480"
    )


STOPPED_SECTION = """
import os, sys, time
sys.path.insert(0, {tools!r})
import gpu_check

def stops_part_way(report, scale, args):
    report.details["first"] = 1.0
    report.add("measured before the stop", "1 ms")
    {stop}

gpu_check.SECTION_FUNCTIONS["environment"] = stops_part_way
sys.exit(gpu_check.main())
"""


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        ("time.sleep(60)", "timed out after 3 s (the section's limit; see gpu_check.log)"),
        ("os._exit(3)", "its process exited 3 part-way (see gpu_check.log)"),
    ],
)
@pytest.mark.slow
def test_a_section_stopped_part_way_keeps_the_figures_it_measured(tmp_path, monkeypatch, stop, reason):
    runner = tmp_path / "stopped_section.py"
    runner.write_text(STOPPED_SECTION.format(tools=str(TOOLS), stop=stop))
    monkeypatch.setattr(gpu_check, "SECTION_RUNNER", runner)
    timeouts = {**gpu_check.DRY_SCALE.timeouts, "environment": 3}
    monkeypatch.setattr(gpu_check, "DRY_SCALE", dataclasses.replace(gpu_check.DRY_SCALE, timeouts=timeouts))
    out = tmp_path / "out"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--sections", "environment"]) == 1
    (section,) = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert section["status"] == "failed"
    assert section["reason"] == f"{reason}; its 1 figures before it kept"
    assert [f["case"] for f in section["figures"]] == ["measured before the stop"]
    assert section["details"] == {"first": 1.0}
    assert "| environment | measured before the stop | 1 ms |" in (out / "gpu_check.md").read_text()


def _wheel(folder: Path, name: str = "bundled_probe", version: str = "1.2.3") -> Path:
    """A pure-Python wheel made by hand: the package `name` with its dist-info."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


@pytest.mark.slow
def test_a_bundle_made_elsewhere_is_installed_for_the_sections_with_its_data(tmp_path, monkeypatch):
    """gpu_bundle.py fills the folder (pip's download replaced by a wheel made here); gpu_check.py
    --bundle installs it with no index, and the sections import it from there and read its data."""
    import gpu_bundle

    data = tmp_path / "debian_fashion_mnist"
    data.mkdir()
    for name in gpu_bundle.FASHION_MNIST_FILES:
        (data / name).write_bytes(b"idx")
    downloads = []

    def download(requirements, wheels, python_version, platforms):
        downloads.append((requirements, python_version))
        _wheel(wheels)

    monkeypatch.setattr(gpu_bundle, "download_wheels", download)
    bundle = tmp_path / "bundle"
    assert (
        gpu_bundle.main(["--out", str(bundle), "--python-version", "3.12", "--fashion-mnist", str(data)]) == 0
    )
    kornia = importlib.metadata.version("kornia")
    assert downloads == [
        (
            [
                f"kornia=={kornia}",
                f"kornia-rs=={importlib.metadata.version('kornia-rs')}",
                f"lightly=={importlib.metadata.version('lightly')}",
            ],
            "3.12",
        )
    ]
    contents = json.loads((bundle / "bundle.json").read_text())
    assert (
        contents["wheels"] == ["bundled_probe-1.2.3-py3-none-any.whl"]
        and contents["python_version"] == "3.12"
    )
    assert sorted(p.name for p in (bundle / "fashion-mnist").iterdir()) == sorted(
        gpu_bundle.FASHION_MNIST_FILES
    )

    out = tmp_path / "check"
    assert (
        gpu_check.main(["--dry-run", "--out", str(out), "--bundle", str(bundle), "--sections", "environment"])
        == 0
    )
    (environment,) = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert environment["details"]["bundle"] == {
        "site": str((bundle / "site").resolve()),
        "packages": {"bundled-probe": "1.2.3"},
    }
    assert environment["details"]["fashion_mnist"] == {
        "path": str((bundle / "fashion-mnist").resolve()),
        "found": True,
    }
    assert (bundle / "site" / "bundled_probe" / "__init__.py").is_file()


@pytest.mark.slow
def test_a_bundle_without_wheels_or_with_a_broken_one_is_one_line_and_exit_2(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "o"), "--bundle", str(bundle)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"gpu_check: --bundle {bundle}: no {bundle / 'wheels'}/*.whl; make it with")
    (bundle / "wheels").mkdir()
    (bundle / "wheels" / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "o"), "--bundle", str(bundle)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"gpu_check: --bundle {bundle}: pip could not install its wheels into {bundle / 'site'}"
    )
    assert "\n" not in error and not (tmp_path / "o").exists()


def test_the_bundle_refuses_a_data_folder_without_fashion_mnist_before_downloading(
    tmp_path, monkeypatch, capsys
):
    import gpu_bundle

    def no_download(*args):
        raise AssertionError("downloaded before the data was checked")

    monkeypatch.setattr(gpu_bundle, "download_wheels", no_download)
    assert gpu_bundle.main(["--out", str(tmp_path / "b"), "--fashion-mnist", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gpu_bundle: {tmp_path} lacks train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz: apt-get install dataset-fashion-mnist, pass "
        "--fashion-mnist DIR, or --no-data"
    )


def test_bundled_packages_are_pinned_to_the_versions_installed_here():
    import gpu_bundle

    assert gpu_bundle.pinned("kornia") == f"kornia=={importlib.metadata.version('kornia')}"
    assert gpu_bundle.pinned("lightly==1.5.0") == "lightly==1.5.0"
    assert gpu_bundle.pinned("a-package-not-installed-here") == "a-package-not-installed-here"


def test_results_brought_back_from_a_gpu_machine_fill_the_benchmarks(tmp_path, capsys):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text(f"## GPU\n{gpu_check.BENCHMARKS_BEGIN}\nnot measured\n{gpu_check.BENCHMARKS_END}\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "gpu_check.json").write_text(json.dumps({"dry_run": False, "sections": []}))
    (results / "gpu_check.md").write_text("NVIDIA H100 80GB HBM3; table\n")
    assert gpu_check.main(["--record", str(results), "--benchmarks", str(benchmarks)]) == 0
    assert "NVIDIA H100 80GB HBM3; table" in benchmarks.read_text()
    assert "not measured" not in benchmarks.read_text()

    (results / "gpu_check.json").write_text(json.dumps({"dry_run": True, "sections": []}))
    (results / "gpu_check.md").write_text("a dry run's table\n")
    assert gpu_check.main(["--record", str(results), "--benchmarks", str(benchmarks)]) == 2
    assert "a dry run's figures are not recorded" in capsys.readouterr().err
    assert gpu_check.main(["--record", str(tmp_path / "nothing"), "--benchmarks", str(benchmarks)]) == 2
    assert "no readable gpu_check.json and gpu_check.md there" in capsys.readouterr().err
    assert gpu_check.main(["--record", str(results)]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpu_check: --record needs --benchmarks FILE, the file whose GPU section it fills"
    )
    assert "NVIDIA H100 80GB HBM3; table" in benchmarks.read_text()
