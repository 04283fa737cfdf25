"""UCR / UEA `.ts` archives: series as clients, dimensions as numeric fields, clear errors."""

from __future__ import annotations

import pytest
import torch

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.kinds.sequences.kind import SequenceKind
from ssl_toolkit.kinds.sequences.ucr import TimeSeriesError, find_archive, read_ts

UNIVARIATE = """# a comment
@problemName Tiny
@timeStamps false
@univariate true
@classLabel true up down
@data
1.0,2.0,3.0:up
3.0,2.0,1.0,0.5:down
2.0,2.5:up
"""
MULTIVARIATE = """@problemName Tiny
@timeStamps false
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
1,2,3:4,5,6:b
7,8,?:9,10,?:a
"""


def _archive(folder, train=UNIVARIATE, test=UNIVARIATE):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Tiny_TRAIN.ts").write_text(train)
    (folder / "Tiny_TEST.ts").write_text(test)
    return folder


def test_each_series_is_a_client_with_its_values_in_order(tmp_path):
    clients = read_ts(_archive(tmp_path) / "Tiny_TRAIN.ts")
    assert clients.classes == ["up", "down"] and clients.targets.tolist() == [0, 1, 0]
    assert clients.lengths.tolist() == [3, 4, 2] and clients.numeric == ["dim_0"]
    assert clients[1][0]["dim_0"].tolist() == [3.0, 2.0, 1.0, 0.5]


def test_dimensions_become_fields_and_trailing_missing_values_shorten_a_series(tmp_path):
    clients = read_ts(_archive(tmp_path, train=MULTIVARIATE) / "Tiny_TRAIN.ts")
    assert clients.numeric == ["dim_0", "dim_1"] and clients.lengths.tolist() == [3, 2]
    events, target = clients[1]
    assert events["dim_1"].tolist() == [9.0, 10.0] and clients.classes[target] == "a"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (UNIVARIATE.replace("2.0,2.5:up", "2.0,x:up"), "line 9: a value is not a number"),
        (UNIVARIATE.replace("2.0,2.5:up", "2.0,?,2.5:up"), "missing values inside the series"),
        (UNIVARIATE.replace("3.0,2.0,1.0,0.5:down", "3.0:sideways"), "labels sideways are not among"),
        (UNIVARIATE.split("@data")[0] + "@data\n", "holds no series"),
        (MULTIVARIATE.replace("1,2,3:4,5,6:b", "1,2:4,5,6:b"), "dimensions of a series differ in length"),
    ],
    ids=["not_a_number", "gap", "unknown_label", "no_series", "ragged_dimensions"],
)
def test_a_broken_archive_is_one_line_naming_the_file(tmp_path, text, fragment):
    path = _archive(tmp_path, train=text) / "Tiny_TRAIN.ts"
    with pytest.raises(TimeSeriesError) as error:
        read_ts(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_a_missing_archive_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(TimeSeriesError, match=r"Tiny_TRAIN\.ts not found .*pip install aeon --no-deps"):
        find_archive("Tiny", "train", tmp_path)


def test_a_registered_problem_reads_from_data_root_with_the_train_files_classes(tmp_path, monkeypatch):
    from ssl_toolkit.kinds.sequences import ucr

    monkeypatch.setitem(ucr.UCR_DATASETS, "ucr_tiny", "Tiny")
    test_file = UNIVARIATE.replace("@classLabel true up down", "@classLabel true down up")
    folder = _archive(tmp_path / "archives" / "Tiny", test=test_file)
    kind = SequenceKind(load_config(None, ["data.name=ucr_tiny", f"data.root={folder.parent}"]))
    train, test = kind.dataset("train"), kind.dataset("test")
    assert test.classes == train.classes == ["up", "down"]  # the train file decides the class order
    assert torch.equal(test.targets, train.targets)
    assert kind.fields() == ([], ["dim_0"])
    missing = SequenceKind(load_config(None, ["data.name=ucr_tiny", f"data.root={tmp_path / 'none'}"]))
    with pytest.raises(ConfigError, match=r"data\.name='ucr_tiny': Tiny_TRAIN\.ts not found"):
        missing.dataset("train")
