"""UCR / UEA time series in the `.ts` format: each series is one client, each time step one event whose
numeric fields are the series' dimensions (`dim_0`, `dim_1`, …).

The archives that ship inside aeon's and sktime's wheels are found without importing either package (their
import costs seconds): `pip install aeon --no-deps` is enough, since only the data files are read. A folder
of `{NAME}_TRAIN.ts` and `{NAME}_TEST.ts` given as `data.root` works as well.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from ssl_toolkit.kinds.sequences.events import EventSequences

# data.name → the problem's name in the archive.
UCR_DATASETS = {
    "ucr_acsf1": "ACSF1",
    "ucr_arrowhead": "ArrowHead",
    "ucr_basic_motions": "BasicMotions",
    "ucr_gunpoint": "GunPoint",
    "ucr_italy_power_demand": "ItalyPowerDemand",
    "ucr_japanese_vowels": "JapaneseVowels",
    "ucr_osuleaf": "OSULeaf",
    "ucr_plaid": "PLAID",
}
PACKAGE_FOLDERS = (("aeon", "datasets/data"), ("sktime", "datasets/data"))


class TimeSeriesError(ValueError):
    """A `.ts` archive that is missing or cannot be read; the message names the file and the fix."""


def archive_folders(problem: str, root: str | Path | None) -> list[Path]:
    """Where `{problem}_TRAIN.ts` may be: `root` itself and `root/problem`, or the folders of the installed
    aeon and sktime packages."""
    if root is not None:
        return [Path(root), Path(root) / problem]
    folders = []
    for package, inside in PACKAGE_FOLDERS:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders += [Path(location) / inside / problem for location in spec.submodule_search_locations]
    return folders


def find_archive(problem: str, split: str, root: str | Path | None) -> Path:
    name = f"{problem}_{split.upper()}.ts"
    folders = archive_folders(problem, root)
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    where = ", ".join(str(folder) for folder in folders) or "no aeon or sktime installation"
    raise TimeSeriesError(
        f"{name} not found (looked in {where}); install aeon (`pip install aeon --no-deps` is enough: only "
        f"its data files are read) or point data.root at a folder holding {problem}_TRAIN.ts and "
        f"{problem}_TEST.ts"
    )


def read_ts(path: Path, classes: list[str] | None = None) -> EventSequences:
    """The series of one `.ts` file; `classes` fixes the class order (the train file's), else the header's."""
    header: dict[str, str] = {}
    series: list[torch.Tensor] = []
    labels: list[str] = []
    in_data = False
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TimeSeriesError(f"{path} cannot be read ({error})") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower() == "@data":
                in_data = True
            elif line.startswith("@"):
                key, _, value = line[1:].partition(" ")
                header[key.lower()] = value.strip()
            continue
        parts = line.split(":")
        if header.get("timestamps", "false").lower() == "true":
            raise TimeSeriesError(
                f"{path}: series with time stamps are not read; convert them to plain values"
            )
        labelled = header.get("classlabel", "false").lower().startswith("true")
        dims = parts[:-1] if labelled else parts
        try:
            values = [
                [math.nan if v.strip() in ("?", "") else float(v) for v in dim.split(",")] for dim in dims
            ]
        except ValueError:
            raise TimeSeriesError(f"{path}, line {number}: a value is not a number") from None
        if len({len(dim) for dim in values}) != 1:
            raise TimeSeriesError(f"{path}, line {number}: the dimensions of a series differ in length")
        steps = torch.tensor(values, dtype=torch.float32).T  # (length, dims)
        if torch.isnan(steps).any():
            # Trailing missing values pad series of unequal length; others cannot be left as NaN.
            keep = ~torch.isnan(steps).any(1)
            last = int(keep.nonzero().max()) + 1 if keep.any() else 0
            steps = steps[:last]
            if len(steps) == 0 or torch.isnan(steps).any():
                raise TimeSeriesError(f"{path}, line {number}: missing values inside the series")
        series.append(steps)
        labels.append(parts[-1].strip() if labelled else "")
    if not series:
        raise TimeSeriesError(f"{path} holds no series (no lines after @data)")
    if classes is None:
        declared = header.get("classlabel", "").split()[1:]
        classes = declared or sorted(set(labels))
    index = {name: position for position, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise TimeSeriesError(f"{path}: labels {', '.join(unknown)} are not among the classes {classes}")
    dims = series[0].shape[1]
    if any(steps.shape[1] != dims for steps in series):
        raise TimeSeriesError(f"{path}: the series have different numbers of dimensions")
    lengths = torch.tensor([len(steps) for steps in series])
    offsets = torch.zeros(len(series) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    flat = torch.cat(series)
    numeric = [f"dim_{d}" for d in range(dims)]
    values = {name: flat[:, d].contiguous() for d, name in enumerate(numeric)}
    targets = torch.tensor([index[label] for label in labels])
    return EventSequences(values, offsets, targets, list(classes), {}, numeric)


def load_ucr(problem: str, split: str, root: str | Path | None = None) -> EventSequences:
    """Split `train` or `test` of a UCR / UEA problem; the classes are ordered as in the train file."""
    train = read_ts(find_archive(problem, "train", root))
    if split == "train":
        return train
    return read_ts(find_archive(problem, "test", root), classes=train.classes)
