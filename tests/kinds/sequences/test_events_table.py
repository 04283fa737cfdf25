"""A user's events table: reading, sorting by time, labels and splits, and one clear line per problem."""

from __future__ import annotations

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
    ],
)
def test_each_problem_is_one_line_naming_the_file_and_the_fix(tmp_path, events, labels, fields, fragment):
    folder = _write(tmp_path / "t", events, labels)
    with pytest.raises(TableError) as error:
        read_events(folder, *fields)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    assert str(folder) in message


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
