"""A wheel built from the repository works outside it: packaged recipes and studies, the command, the version;
it carries the license."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from pretraining_runs import REPO

from ssl_toolkit import __version__

PACKAGED_FILES_LOAD = """
from ssl_toolkit.config import load_config
from ssl_toolkit.study.spec import load_study
from importlib.resources import files
studies = files("ssl_toolkit") / "recipes" / "studies"
print(load_config("quickstart").data.name, sum(len(load_study(p).cells()) for p in studies.iterdir()))
"""


def _run(command: list, cwd: Path) -> str:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_with_its_recipes_and_command(tmp_path):
    # Built from a copy, so that the build writes nothing into the repository.
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "ssl_toolkit", source / "ssl_toolkit", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", source], tmp_path
    )
    (wheel,) = (tmp_path / "dist").glob("ssl_toolkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
        # Every module and data file of the package, in every subpackage (a kind's folder, training/, ...).
        shipped = {
            path.relative_to(REPO).as_posix()
            for path in (REPO / "ssl_toolkit").rglob("*")
            if path.is_file() and path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts
        }
        assert shipped <= packaged, sorted(shipped - packaged)
        dist_info = f"ssl_toolkit-{__version__}.dist-info"
        assert archive.read(f"{dist_info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata

    # A fresh venv that sees the test environment's packages (torch, timm, ...) but not its ssl_toolkit:
    # a path line in a .pth file adds the folder without running the editable install's own .pth hook.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
    )
    (purelib / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = _run([python, "-c", "import ssl_toolkit; print(ssl_toolkit.__file__)"], elsewhere)
    assert Path(location.strip()).is_relative_to(venv)
    command = venv / "bin" / "ssl-toolkit"
    assert _run([command, "--version"], elsewhere).strip() == f"ssl-toolkit {__version__}"
    listing = _run([command, "recipes"], elsewhere)
    assert "quickstart" in listing and "imagenet_simclr_resnet50" in listing
    # The packaged recipes and study files load from the installed package (what pretraining reads first;
    # the training itself is the same code the rest of the suite runs from the repository).
    loaded = _run([python, "-c", PACKAGED_FILES_LOAD], elsewhere).split()
    assert loaded[0] == "digits" and int(loaded[1]) > 0
