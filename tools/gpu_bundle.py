"""One folder that lets `make gpu-check` run on a GPU machine without internet, beside a CUDA PyTorch image.

    .venv/bin/python tools/gpu_bundle.py --out gpu_bundle --python-version 3.12   # where pip reaches PyPI
    # copy the repository and gpu_bundle/ to the GPU machine, then, with the Python that holds CUDA PyTorch:
    make gpu-check GPU_CHECK_PYTHON=python3 GPU_BUNDLE=gpu_bundle

The folder holds `wheels/` (by default kornia, kornia-rs and lightly, at the versions installed beside this
script, built for the target's Python on x86-64 manylinux), `fashion-mnist/` (the four idx files of
Debian's dataset-fashion-mnist) and `bundle.json` (what is in it, and for which Python). The GPU machine's
image is expected to hold what the check imports besides: torch, torchvision, timm, accelerate,
scikit-learn, safetensors, PyYAML, tensorboard, matplotlib, tqdm and numpy (images made for PyTorch work
do). `tools/gpu_check.py --bundle gpu_bundle` installs the wheels into `gpu_bundle/site` with pip and no
index, and puts that folder on every section's path.

Exit status 0, or 2 with one line naming what could not be fetched and why.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from gpu_check import DEFAULT_FASHION_MNIST, FASHION_MNIST_FILES  # what the check reads

# What the GPU check imports that images made for PyTorch work usually lack (kornia-rs is kornia's
# compiled part; lightly is the loss check's peer).
DEFAULT_PACKAGES = ("kornia", "kornia-rs", "lightly")
# The manylinux tags pip matches exactly, newest first: one of them fits any wheel built for x86-64 Linux.
MANYLINUX_X86_64 = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


class BundleError(Exception):
    """What could not go into the bundle; the message names it and the fix."""


def pinned(package: str) -> str:
    """`name==version` as installed here, so that the GPU machine runs what the tests ran; a name given
    with a version stays as it is; a name not installed here is left unpinned."""
    if any(sign in package for sign in "=<>!~"):
        return package
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def download_wheels(requirements: list[str], wheels: Path, python_version: str, platforms: list[str]) -> None:
    """Each requirement's wheel alone (no dependencies: the image has them) for that Python and platform."""
    wheels.mkdir(parents=True, exist_ok=True)
    for requirement in requirements:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", python_version, "--implementation", "cp", "--dest", str(wheels)]
        for tag in platforms:
            command += ["--platform", tag]
        done = subprocess.run([*command, requirement], capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["(no output)"]
            raise BundleError(
                f"pip could not download a wheel of {requirement} for Python {python_version} on "
                f"{platforms[0]}: {lines[-1].strip()} (another version: --packages NAME==VERSION)"
            )


def check_fashion_mnist(source: Path) -> None:
    missing = [name for name in FASHION_MNIST_FILES if not (source / name).is_file()]
    if missing:
        raise BundleError(
            f"{source} lacks {', '.join(missing)}: apt-get install dataset-fashion-mnist, pass "
            "--fashion-mnist DIR, or --no-data"
        )


def copy_fashion_mnist(source: Path, destination: Path) -> None:
    check_fashion_mnist(source)
    destination.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        shutil.copyfile(source / name, destination / name)


def make_bundle(
    out: Path,
    packages: list[str],
    python_version: str,
    platforms: list[str],
    fashion_mnist: Path | None,
) -> dict:
    """Fill `out` (wheels/, fashion-mnist/, bundle.json); returns what bundle.json says."""
    if fashion_mnist is not None:
        check_fashion_mnist(fashion_mnist)  # before any download
    requirements = [pinned(package) for package in packages]
    download_wheels(requirements, out / "wheels", python_version, platforms)
    if fashion_mnist is not None:
        copy_fashion_mnist(fashion_mnist, out / "fashion-mnist")
    contents = {
        "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python_version": python_version,
        "platforms": platforms,
        "requirements": requirements,
        "wheels": sorted(p.name for p in (out / "wheels").glob("*.whl")),
        "fashion_mnist": sorted(FASHION_MNIST_FILES) if fashion_mnist is not None else [],
    }
    (out / "bundle.json").write_text(json.dumps(contents, indent=2) + "\n")
    return contents


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the bundle's folder (made if missing)")
    parser.add_argument(
        "--python-version",
        default=".".join(platform.python_version_tuple()[:2]),
        help="the GPU machine's Python, e.g. 3.12 (default: this one's)",
    )
    parser.add_argument(
        "--packages",
        nargs="+",
        default=list(DEFAULT_PACKAGES),
        help="wheels to bundle, NAME or NAME==VERSION (default: %(default)s, at the versions installed here)",
    )
    parser.add_argument(
        "--platforms", nargs="+", default=list(MANYLINUX_X86_64), help="pip's --platform tags to accept"
    )
    parser.add_argument("--fashion-mnist", default=str(DEFAULT_FASHION_MNIST), help="Fashion-MNIST's folder")
    parser.add_argument("--no-data", action="store_true", help="wheels only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        contents = make_bundle(
            out,
            args.packages,
            args.python_version,
            args.platforms,
            None if args.no_data else Path(args.fashion_mnist),
        )
    except BundleError as error:
        print(f"gpu_bundle: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"gpu_bundle: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and "site" not in p.parts)
    print(
        f"{out}: {len(contents['wheels'])} wheels for Python {args.python_version} "
        f"({', '.join(contents['wheels'])}), "
        f"{'Fashion-MNIST, ' if contents['fashion_mnist'] else ''}{size / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
