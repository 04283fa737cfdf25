"""Event sequences: clients' events in memory (`events.py`, from tables in `tables.py`, UCR/UEA series in
`ucr.py`), their CoLES views and padded batches (`views.py`), the sequence encoders (`encoders.py`), and
`SequenceKind`, the seam the engine reaches them through."""

from ssl_toolkit.kinds.sequences.kind import SequenceKind

__all__ = ["SequenceKind"]
