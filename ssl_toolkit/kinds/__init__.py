"""Data kinds: what the engine and evaluation need from one kind of data (see `base.DataKind`)."""

from ssl_toolkit.kinds.base import (
    DATA_KINDS,
    DataKind,
    TrainingData,
    data_kind_class,
    kind_by_name,
    register_data_kind,
)
from ssl_toolkit.kinds.image import ImageKind
from ssl_toolkit.kinds.sequence import SequenceKind

__all__ = [
    "DATA_KINDS",
    "DataKind",
    "ImageKind",
    "SequenceKind",
    "TrainingData",
    "data_kind_class",
    "kind_by_name",
    "register_data_kind",
]
