"""A user's own events table: `events.parquet` or `events.csv` (+ optional `labels.csv`) → EventSequences.

`events.*` has one row per event: `id` (the client), `time` (a number, or an ISO date-time: all with a
time zone, or all without) and the fields the recipe names in `data.categorical` / `data.numeric`.
`labels.csv` has `id`, `target` and an optional `split` (`train` / `test`); clients without a label are
unlabelled pretraining data. CSV files are UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8").
Every problem with the files is a `TableError` naming the file, the row or column and the fix.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path

import torch

from ssl_toolkit.kinds.sequences.events import EventSequences, train_test_clients

EVENT_FILES = ("events.parquet", "events.csv")
LABELS_FILE = "labels.csv"
SPLITS = ("train", "test")


class TableError(ValueError):
    """An events or labels file that cannot be used as it is; the message names the file and the fix."""


def _read_columns(path: Path, wanted: list[str], optional: tuple[str, ...] = ()) -> dict[str, list]:
    """The `wanted` columns of a CSV or Parquet file, as lists of values (strings for CSV), and those of
    the `optional` columns the file has."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise TableError(
                f"{path} needs pyarrow to be read: pip install pyarrow, or write the table as events.csv"
            ) from None
        try:
            table = parquet.read_table(path)
        except Exception as error:  # pyarrow raises its own types for a damaged file
            raise TableError(f"{path} cannot be read as Parquet ({error}); write it again") from None
        names = table.column_names
        _require(path, names, wanted)
        return {
            name: table.column(name).to_pylist() for name in [*wanted, *(o for o in optional if o in names)]
        }
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would join the first name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise TableError(f"{path} is empty; it needs a header row with {', '.join(wanted)}")
            header = [name.strip() for name in header]
            _require(path, header, wanted)
            wanted = [*wanted, *(name for name in optional if name in header)]
            positions = [header.index(name) for name in wanted]
            columns: dict[str, list] = {name: [] for name in wanted}
            for row in reader:
                if not row:
                    continue
                if len(row) < len(header):
                    raise TableError(
                        f"{path}, line {reader.line_num}: {len(row)} values for {len(header)} columns; "
                        "give every row a value (empty if need be) for each column"
                    )
                if len(row) > len(header):  # a value with an unquoted comma, or a column without a name
                    raise TableError(
                        f"{path}, line {reader.line_num}: {len(row)} values for {len(header)} columns; quote "
                        "values that hold a comma, or name every column in the header"
                    )
                for name, position in zip(wanted, positions, strict=True):
                    columns[name].append(row[position])
    except UnicodeDecodeError:
        raise TableError(f"{path} is not a UTF-8 text CSV file") from None
    return columns


def _require(path: Path, present: list[str], wanted: list[str]) -> None:
    missing = [name for name in wanted if name not in present]
    if missing:
        raise TableError(
            f"{path} has no column {', '.join(map(repr, missing))}; its columns are {', '.join(present)}. "
            "Rename the column, or fix data.categorical / data.numeric"
        )


def _numbers(path: Path, name: str, values: list) -> torch.Tensor:
    parsed = []
    for row, value in enumerate(values):
        try:
            number = float(value) if value is not None and value != "" else math.nan
        except (TypeError, ValueError):
            raise TableError(f"{path}: column {name!r}, row {row + 1}: {value!r} is not a number") from None
        parsed.append(number)
    tensor = torch.tensor(parsed, dtype=torch.float64)
    bad = ~torch.isfinite(tensor)
    if bad.any():
        first = int(bad.nonzero()[0]) + 1
        raise TableError(
            f"{path}: column {name!r} has {int(bad.sum())} missing, NaN or infinite values (the first in "
            f"row {first}); fill or drop them before pretraining"
        )
    return tensor


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _time_style(value) -> tuple[str, datetime | None]:
    """What kind of time `value` is: "number", "zoned" or "naive" (a date-time, parsed), or "bad"."""
    if isinstance(value, datetime):
        moment = value
    elif _is_number(value):
        return "number", None
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return "bad", None
    return ("naive" if moment.utcoffset() is None else "zoned"), moment


def _times(path: Path, values: list) -> torch.Tensor:
    """Numbers as they are; ISO date-times as seconds, for ordering the events.

    Date-times with a zone are instants. Those without one are wall-clock times and stay so: they are
    counted as if in UTC, never in the machine's zone, so that every machine orders a table alike. No
    order between the two is right, so a column mixing them (or numbers and date-times) is refused.
    """
    try:
        return _numbers(path, "time", values)  # the usual column, in one pass
    except TableError:
        pass  # date-times, or a value to name below
    first: dict[str, int] = {}  # each style → its first row
    moments = []
    for row, value in enumerate(values):
        style, moment = _time_style(value)
        if style == "bad":
            blank = value is None or str(value).strip() == ""
            raise TableError(
                f"{path}: column 'time', row {row + 1}: "
                + (
                    "the time is missing; give every event a time"
                    if blank
                    else f"{value!r} is neither a number nor an ISO date-time (e.g. 2024-03-01T12:30:00)"
                )
            )
        first.setdefault(style, row)
        moments.append(moment)
    if "number" in first:
        if len(first) > 1:
            date_row = min(first.get("zoned", len(values)), first.get("naive", len(values)))
            raise TableError(
                f"{path}: column 'time' mixes numbers and date-times (row {first['number'] + 1}: "
                f"{values[first['number']]!r}, row {date_row + 1}: {values[date_row]!r}); write every time "
                "the same way"
            )
        return _numbers(path, "time", values)
    if len(first) > 1:
        zoned, naive = first["zoned"], first["naive"]
        raise TableError(
            f"{path}: column 'time' mixes date-times with a time zone (row {zoned + 1}: {values[zoned]!r}) "
            f"and without one (row {naive + 1}: {values[naive]!r}); give every time a zone (e.g. "
            "2024-03-01T12:30:00+00:00) or none"
        )
    return torch.tensor(
        [(m if m.utcoffset() is not None else m.replace(tzinfo=timezone.utc)).timestamp() for m in moments],
        dtype=torch.float64,
    )


def _codes(values: list) -> tuple[torch.Tensor, int]:
    """Each value's code 1…K, in sorted order of the values as text (0 is padding); and K + 1."""
    vocabulary = {value: code for code, value in enumerate(sorted({str(v) for v in values}), start=1)}
    return torch.tensor([vocabulary[str(v)] for v in values], dtype=torch.long), len(vocabulary) + 1


def read_events(root: str | Path, categorical: list[str], numeric: list[str]) -> tuple[EventSequences, dict]:
    """Every client of `root`'s events table, events sorted by time, with their labels where there are any.

    Returns the clients and the split: `{"train": indices, "test": indices}` (from labels.csv's `split`
    column, else a seeded 80/20 split stratified by target; unlabelled clients are all in train).
    """
    root = Path(root)
    found = [root / name for name in EVENT_FILES if (root / name).is_file()]
    if not found:
        raise TableError(
            f"data.root={root} has neither {' nor '.join(EVENT_FILES)}; point data.root at the folder that "
            "holds the events table (columns id, time and the fields)"
        )
    if not categorical and not numeric:
        raise TableError(
            f"{found[0]}: name the fields to read with data.categorical=[...] and/or data.numeric=[...]"
        )
    path = found[0]
    columns = _read_columns(path, ["id", "time", *categorical, *numeric])
    if not columns["id"]:
        raise TableError(f"{path} has no events; it needs at least one row")
    ids = [str(value) for value in columns["id"]]
    times = _times(path, columns["time"])
    values = {name: _numbers(path, name, columns[name]).float() for name in numeric}
    cardinalities = {}
    for name in categorical:
        values[name], cardinalities[name] = _codes(columns[name])

    # Clients in order of first appearance; events by (client, time), stable for equal times.
    client_of, order_of_id = [], {}
    for value in ids:
        client_of.append(order_of_id.setdefault(value, len(order_of_id)))
    client = torch.tensor(client_of)
    by_time = torch.argsort(times, stable=True)
    order = by_time[torch.argsort(client[by_time], stable=True)]
    values = {name: column[order] for name, column in values.items()}
    lengths = torch.bincount(client, minlength=len(order_of_id))
    offsets = torch.zeros(len(order_of_id) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    client_ids = list(order_of_id)

    targets, classes, split = _read_labels(root / LABELS_FILE, order_of_id)
    clients = EventSequences(values, offsets, targets, classes, cardinalities, list(numeric), client_ids)
    if split is None:
        train, test = train_test_clients(targets, 0.2, seed=0)
    else:
        train = torch.nonzero(split == 0).squeeze(1)
        test = torch.nonzero(split == 1).squeeze(1)
    return clients, {"train": train, "test": test}


def _class_order(name: str) -> tuple:
    """Numeric class names in numeric order (2 before 10), then the others alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _read_labels(
    path: Path, order_of_id: dict[str, int]
) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """Targets (N,) (-1 unlabelled), class names and, with a `split` column, 0 (train) or 1 (test) per
    client."""
    targets = torch.full((len(order_of_id),), -1, dtype=torch.long)
    if not path.is_file():
        return targets, [], None
    columns = _read_columns(path, ["id", "target"], optional=("split",))
    unknown = [value for value in columns["id"] if str(value) not in order_of_id]
    if unknown:
        raise TableError(
            f"{path}: {len(unknown)} id(s) have no events, e.g. {', '.join(map(repr, unknown[:3]))}; "
            "drop them from labels.csv or add their events"
        )
    seen: set[str] = set()
    repeated = [value for value in map(str, columns["id"]) if value in seen or seen.add(value)]
    if repeated:
        raise TableError(
            f"{path}: id(s) {', '.join(map(repr, repeated[:3]))} appear more than once; give each client "
            "one row"
        )
    blank = next((row for row, value in enumerate(columns["target"]) if not str(value).strip()), None)
    if blank is not None:
        raise TableError(
            f"{path}, row {blank + 1}: client {str(columns['id'][blank])!r} has a blank target; give it a "
            "class, or leave it out of labels.csv (a client without a label is unlabelled pretraining data)"
        )
    classes = sorted({str(value) for value in columns["target"]}, key=_class_order)
    index_of = {name: index for index, name in enumerate(classes)}
    rows = torch.tensor([order_of_id[str(value)] for value in columns["id"]], dtype=torch.long)
    targets[rows] = torch.tensor([index_of[str(value)] for value in columns["target"]], dtype=torch.long)
    if "split" not in columns:
        return targets, classes, None
    bad = sorted({str(value) for value in columns["split"]} - set(SPLITS))
    if bad:
        raise TableError(f"{path}: column 'split' holds {', '.join(map(repr, bad))}; use train or test")
    split = torch.zeros(len(order_of_id), dtype=torch.long)  # unlabelled clients pretrain: train
    split[rows] = torch.tensor([SPLITS.index(str(value)) for value in columns["split"]], dtype=torch.long)
    return targets, classes, split
