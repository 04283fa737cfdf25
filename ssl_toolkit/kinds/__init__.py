"""Data kinds: what the engine and evaluation need from one kind of data (see `base.DataKind`).

Each kind lives in a folder of its own (`images/`, `sequences/`) holding its datasets, views and encoders;
nothing outside that folder imports its insides. Importing this package registers the kinds below.
"""

from ssl_toolkit.kinds.base import (
    DATA_KINDS,
    DataKind,
    TrainingData,
    create_data_kind,
    data_kind_class,
    kind_by_name,
    register_data_kind,
)
from ssl_toolkit.kinds.images import ImageKind
from ssl_toolkit.kinds.sequences import SequenceKind

__all__ = [
    "DATA_KINDS",
    "DataKind",
    "ImageKind",
    "SequenceKind",
    "TrainingData",
    "create_data_kind",
    "data_kind_class",
    "kind_by_name",
    "register_data_kind",
]
