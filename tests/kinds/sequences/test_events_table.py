"""A user's events table: reading, sorting by time, labels and splits, and one clear line per problem."""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.kinds.sequences.kind import SequenceKind
from ssl_toolkit.kinds.sequences.tables import TableError, read_events

EVENTS = """id,time,mcc,amount
b,2024-01-03T10:00:00,shop,5.0
a,2024-01-02T00:00:00,food,1.5
b,2024-01-01T09:00:00,food,2.0
"""


def _write(folder, events: str, labels: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.csv").write_text(events)
    if labels is not None:
        (folder / "labels.csv").write_text(labels)
    return folder


def _numeric_events(rows: int = 60) -> str:
    """Clients c0…c9, events in reverse time order in the file."""
    lines = ["id,time,kind,amount"]
    for row in range(rows):
        lines.append(f"c{row % 10},{rows - row},{'xy'[row % 2]},{row * 0.5}")
    return "\n".join(lines) + "\n"


def test_events_are_grouped_by_client_and_sorted_by_time(tmp_path):
    folder = _write(tmp_path / "t", _numeric_events())
    clients, split = read_events(folder, ["kind"], ["amount"])
    assert len(clients) == 10 and clients.ids[:3] == ["c0", "c1", "c2"]
    events, target = clients[0]
    assert target == -1  # no labels.csv: unlabelled
    # c0 holds rows 0, 10, …, 50, written with times 60, 50, …, 10: time order is the reverse.
    assert events["amount"].tolist() == [25.0, 20.0, 15.0, 10.0, 5.0, 0.0]
    assert clients.categorical == {"kind": 3} and set(events["kind"].tolist()) == {1}
    assert sorted(split["train"].tolist()) == list(range(10)) and len(split["test"]) == 0


def test_iso_times_sort_and_labels_give_targets_and_a_split(tmp_path):
    labels = "id,target,split\na,yes,train\nb,no,test\n"
    clients, split = read_events(_write(tmp_path / "t", EVENTS, labels), ["mcc"], ["amount"])
    b = clients.ids.index("b")
    assert clients[b][0]["amount"].tolist() == [2.0, 5.0]  # 1 January before 3 January
    assert clients.classes == ["no", "yes"] and clients.targets.tolist()[b] == 0
    assert split["test"].tolist() == [b] and split["train"].tolist() == [clients.ids.index("a")]


def test_without_a_split_column_labelled_clients_split_80_20_by_class(tmp_path):
    labels = "id,target\n" + "".join(f"c{i},{i % 2}\n" for i in range(10))
    clients, split = read_events(_write(tmp_path / "t", _numeric_events(), labels), ["kind"], ["amount"])
    assert clients.classes == ["0", "1"]
    assert torch.bincount(clients.targets[split["test"]]).tolist() == [1, 1]
    assert len(split["train"]) == 8


@pytest.mark.parametrize(
    ("events", "labels", "fields", "fragment"),
    [
        (EVENTS, None, (["mcc"], ["amt"]), "no column 'amt'; its columns are id, time, mcc, amount"),
        ("id,time,mcc,amount\n", None, (["mcc"], ["amount"]), "has no events"),
        ("", None, (["mcc"], ["amount"]), "is empty"),
        (EVENTS.replace("1.5", "nan"), None, (["mcc"], ["amount"]), "column 'amount' has 1 missing, NaN"),
        (EVENTS.replace("1.5", ""), None, (["mcc"], ["amount"]), "(the first in row 2)"),
        (EVENTS.replace("2024-01-02T00:00:00", "soon"), None, (["mcc"], ["amount"]), "'soon' is neither"),
        (EVENTS.replace("2024-01-02T00:00:00", "3"), None, (["mcc"], ["amount"]), "mixes numbers and date"),
        (EVENTS, "id,target\nz,1\n", (["mcc"], ["amount"]), "1 id(s) have no events, e.g. 'z'"),
        (EVENTS, "id,target\na,1\na,0\n", (["mcc"], ["amount"]), "'a' appear more than once"),
        (EVENTS, "id,target,split\na,1,val\n", (["mcc"], ["amount"]), "holds 'val'; use train or test"),
        (EVENTS, None, ([], []), "data.categorical=[...] and/or data.numeric=[...]"),
        (EVENTS, "id,target\na,1\nb,\n", (["mcc"], ["amount"]), "row 2: client 'b' has a blank target; give"),
        (
            EVENTS.replace("food,1.5", "food,1,5"),
            None,
            (["mcc"], ["amount"]),
            "line 3: 5 values for 4 columns",
        ),
        (
            "id,time,mcc,amount\nc0,1,x,0\nc1,2,y,1\nc0,yesterday,x,2\n",
            None,
            (["mcc"], ["amount"]),
            "column 'time', row 3: 'yesterday' is neither a number nor an ISO date-time",
        ),
    ],
    ids=[
        "column",
        "no_rows",
        "empty_file",
        "nan",
        "blank",
        "time",
        "mixed_time",
        "unknown_id",
        "repeated_id",
        "split",
        "fields",
        "blank_target",
        "long_row",
        "word_in_numeric_time",
    ],
)
def test_each_problem_is_one_line_naming_the_file_and_the_fix(tmp_path, events, labels, fields, fragment):
    folder = _write(tmp_path / "t", events, labels)
    with pytest.raises(TableError) as error:
        read_events(folder, *fields)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    assert str(folder) in message


def test_a_csv_with_a_byte_order_mark_is_read_as_utf8(tmp_path):
    # Excel's "CSV UTF-8" starts both files with a byte-order mark, whatever the machine's locale.
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "events.csv").write_text("\ufeff" + EVENTS.replace("shop", "café"), encoding="utf-8")
    (folder / "labels.csv").write_text("\ufeffid,target\na,oui\nb,déjà\n", encoding="utf-8")
    clients, _ = read_events(folder, ["mcc"], ["amount"])
    assert clients.ids == ["b", "a"] and clients.classes == ["déjà", "oui"]
    assert clients.categorical == {"mcc": 3}  # café, food


@pytest.fixture
def time_zone(monkeypatch):
    """Sets the process's time zone (TZ) for the test; the machine's own is back afterwards."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def _time_order(folder, zone: str, set_zone) -> list[float] | str:
    """Client b's amounts in time order under `zone`, or the table's error without its folder."""
    set_zone(zone)
    try:
        clients, _ = read_events(folder, ["mcc"], ["amount"])
    except TableError as error:
        return str(error).replace(str(folder), "DIR")
    return clients[clients.ids.index("b")][0]["amount"].tolist()


def test_times_order_the_same_in_every_time_zone_and_a_mix_of_zoned_and_plain_is_refused(tmp_path, time_zone):
    def table(name: str, first: str, second: str):
        return _write(
            tmp_path / name, f"id,time,mcc,amount\nb,{first},x,1.0\na,{first},x,0.0\nb,{second},x,2.0\n"
        )

    tables = {
        # 09:00 in UTC, against a plain noon: before it in UTC, after it (03:00 UTC) in Tokyo.
        "mixed": table("mixed", "2024-01-01T09:00:00+00:00", "2024-01-01T12:00:00"),
        # Instants: 08:00 in Tokyo is 23:00 UTC the day before, so it comes first whatever the text says.
        "zoned": table("zoned", "2024-01-01T00:30:00+00:00", "2024-01-01T08:00:00+09:00"),
        # Wall-clock times: 02:30 does not exist in New York on 10 March 2024 (clocks jump from 02:00 to
        # 03:00); read in that zone, it would land after 03:10.
        "plain": table("plain", "2024-03-10T02:30:00", "2024-03-10T03:10:00"),
    }
    orders = {
        zone: {name: _time_order(folder, zone, time_zone) for name, folder in tables.items()}
        for zone in ("UTC", "Asia/Tokyo", "America/New_York")
    }
    assert orders["Asia/Tokyo"] == orders["UTC"] and orders["America/New_York"] == orders["UTC"]
    assert orders["UTC"]["zoned"] == [2.0, 1.0] and orders["UTC"]["plain"] == [1.0, 2.0]
    assert orders["UTC"]["mixed"] == (
        "DIR/events.csv: column 'time' mixes date-times with a time zone "
        "(row 1: '2024-01-01T09:00:00+00:00') and without one (row 3: '2024-01-01T12:00:00'); "
        "give every time a zone (e.g. 2024-03-01T12:30:00+00:00) or none"
    )


def test_a_missing_table_and_a_missing_root_name_the_key(tmp_path):
    with pytest.raises(TableError, match=r"neither events\.parquet nor events\.csv"):
        read_events(tmp_path, ["mcc"], [])
    config = load_config(None, ["data.name=events", "data.numeric=[amount]"])
    with pytest.raises(ConfigError, match=r"data\.name='events': it needs data\.root"):
        SequenceKind(config).dataset("train")


def test_the_sequence_kind_reads_the_table_through_the_config(tmp_path):
    labels = "id,target\n" + "".join(f"c{i},{'ab'[i % 2]}\n" for i in range(10))
    folder = _write(tmp_path / "t", _numeric_events(), labels)
    overrides = [
        f"data.root={folder}",
        "data.name=events",
        "data.categorical=[kind]",
        "data.numeric=[amount]",
    ]
    kind = SequenceKind(load_config(None, overrides))
    train, test = kind.dataset("train"), kind.dataset("test")
    assert len(train) + len(test) == 10 and len(test) == 2
    assert kind.preprocessing()["categorical"] == {"kind": 3} and list(kind.preprocessing()["numeric"]) == [
        "amount"
    ]
    broken = SequenceKind(load_config(None, [*overrides[:-1], "data.numeric=[price]"]))
    with pytest.raises(ConfigError, match="no column 'price'"):
        broken.dataset("train")


def test_a_parquet_table_without_pyarrow_says_how_to_read_it(tmp_path, monkeypatch):
    import sys

    (tmp_path / "events.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(TableError, match=r"needs pyarrow to be read: pip install pyarrow"):
        read_events(tmp_path, ["mcc"], [])


def test_a_csv_table_pretrains_and_is_probed(tmp_path):
    from pretraining_runs import QUICKSTART, logged_losses, pretrain_tiny

    from ssl_toolkit.eval.probe import run_probe
    from ssl_toolkit.kinds.sequences.events import synthetic_events

    generated = synthetic_events(60, 2, min_length=10, max_length=30, seed=0)
    lines, labels = ["id,time,event_type,amount"], ["id,target"]
    for client in range(len(generated)):
        events, target = generated[client]
        for step, (code, amount) in enumerate(zip(events["event_type"], events["amount"], strict=True)):
            lines.append(f"u{client},{step},t{int(code)},{float(amount):.4f}")
        labels.append(f"u{client},{'ab'[target]}")
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "events.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "table" / "labels.csv").write_text("\n".join(labels) + "\n")
    overrides = [
        "data.name=events", f"data.root={tmp_path / 'table'}", "data.categorical=[event_type]",
        "data.numeric=[amount]", "augment.split_count=2", "augment.cnt_min=5", "augment.cnt_max=15",
        "model.backbone=cnn1d", "model.backbone_args={channels: 16, num_layers: 2}", "model.proj_dim=8",
        "loss.name=coles", "train.batch_size=16", "train.max_steps=3", "log.trackers=[]", "log.every=1",
        f"run.output_dir={tmp_path}", "run.name=table_run",
    ]  # fmt: skip
    run_dir = pretrain_tiny(tmp_path, config=load_config(QUICKSTART, overrides))
    assert len(logged_losses(run_dir)) == 3
    probe = run_probe(run_dir, weight_decay=1e-3)
    assert probe["num_train"] + probe["num_test"] == 60 and probe["classes"] == ["a", "b"]


def _short_clients_table(folder, labels: str | None, long_client: bool = False):
    """Clients c0…c11 of 8 to 13 events (classes a / b), and with `long_client` a client of 30."""
    lines = ["id,time,kind,amount"]
    lengths = {f"c{client}": 8 + client % 6 for client in range(12)}
    if long_client:
        lengths["long"] = 30
    for client, length in lengths.items():
        lines += [f"{client},{step},{'xy'[step % 2]},{step * 0.5}" for step in range(length)]
    return _write(folder, "\n".join(lines) + "\n", labels)


LABELS = "id,target\n" + "".join(f"c{client},{'ab'[client % 2]}\n" for client in range(12))
TRANSFORMER = "model.backbone_args={d_model: 16, num_layers: 1, num_heads: 2, max_length: 16}"


def _transformer_overrides(root, output_dir) -> list[str]:
    return [
        "data.name=events", f"data.root={root}", "data.categorical=[kind]", "data.numeric=[amount]",
        "augment.split_count=2", "augment.cnt_min=4", "augment.cnt_max=8", "model.backbone=transformer",
        TRANSFORMER, "model.proj_dim=8", "loss.name=coles", "train.batch_size=6", "train.max_steps=2",
        "log.trackers=[]", "log.knn_every=0", f"run.output_dir={output_dir}", "run.name=transformer",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    """A finished tiny run of a transformer (max_length 16) on a labelled table of short clients."""
    from pretraining_runs import QUICKSTART, pretrain_tiny

    folder = tmp_path_factory.mktemp("transformer")
    table = _short_clients_table(folder / "table", LABELS)
    return pretrain_tiny(folder, config=load_config(QUICKSTART, _transformer_overrides(table, folder)))


@pytest.mark.parametrize(
    ("labels", "long_client", "fragment"),
    [
        (
            None,
            False,
            "labels.csv does not exist, so no client has a class to evaluate; write it with columns id",
        ),
        (
            "id,target,split\n" + "".join(f"c{client},{'ab'[client % 2]},train\n" for client in range(12)),
            False,
            "labels.csv puts no client in the test split, which evaluation scores: give it a split column",
        ),
        (
            LABELS + "long,a\n",
            True,
            (
                "model.backbone_args.max_length=16, but client 'long' of the ",
                " split has 30 events and evaluation embeds each client whole; pretrain again with a larger "
                "model.backbone_args.max_length",
            ),
        ),
    ],
    ids=["no_labels_csv", "no_test_rows", "longer_than_max_length"],
)
def test_probe_says_in_one_line_what_the_table_lacks(
    tmp_path, capsys, transformer_run, labels, long_client, fragment
):
    from ssl_toolkit.cli import main

    run_dir = shutil.copytree(transformer_run, tmp_path / "run")
    table = _short_clients_table(tmp_path / "table", labels, long_client)
    capsys.readouterr()
    assert main(["probe", str(run_dir), f"data.root={table}"]) == 2
    error = capsys.readouterr().err.strip()
    fragments = (fragment,) if isinstance(fragment, str) else fragment
    assert "\n" not in error and all(part in error for part in fragments), error
    assert not (run_dir / "probe.json").exists()


def test_probe_scores_the_labelled_clients_and_leaves_the_unlabelled_out(tmp_path, transformer_run):
    from ssl_toolkit.eval.probe import run_probe

    # c0…c5 labelled (c0, c1 in test), c6…c11 unlabelled pretraining data, in the train split.
    labels = "id,target,split\n" + "".join(
        f"c{client},{'ab'[client % 2]},{'test' if client < 2 else 'train'}\n" for client in range(6)
    )
    table = _short_clients_table(tmp_path / "table", labels)
    run_dir = shutil.copytree(transformer_run, tmp_path / "run")
    probe = run_probe(run_dir, overrides=[f"data.root={table}"], weight_decay=1e-3)
    assert probe["num_train"] == 4 and probe["num_test"] == 2


def test_a_client_longer_than_the_transformer_takes_is_refused_before_pretraining(tmp_path):
    from pretraining_runs import QUICKSTART

    table = _short_clients_table(tmp_path / "table", None, long_client=True)
    kind = SequenceKind(load_config(QUICKSTART, _transformer_overrides(table, tmp_path)))
    with pytest.raises(ConfigError) as error:
        kind.create_encoder()
    assert str(error.value) == (
        "model.backbone_args.max_length=16, but client 'long' has 30 events and evaluation embeds each "
        "client whole; set model.backbone_args.max_length=30 or more"
    )
