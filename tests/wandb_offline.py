"""Reading what an offline W&B run wrote: the summary updates in its `run-<id>.wandb` record logs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER = b":W&B"  # then a 2-byte magic number and a version byte
BLOCK_SIZE = 32 * 1024  # LevelDB's log format: records in chunks that never cross a block
CHUNK_HEADER = struct.Struct("<IHB")  # CRC-32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every protobuf `Record` in one `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(HEADER), f"{path} is not a W&B record log"
    position, pending = 7, b""
    while position + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # block trailer padding
            position += left_in_block
            continue
        _crc, length, kind = CHUNK_HEADER.unpack_from(data, position)
        if kind == 0 and length == 0:
            break
        start = position + CHUNK_HEADER.size
        pending += data[start : start + length]
        position = start + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def flush() -> None:
    """Wait for wandb-core to close every run's record log.

    `run.finish()` only tells the service that a run is done; the service writes the last records and
    closes the file afterwards, so a read right after `finish()` can miss them on a loaded machine.
    Tearing the service down waits for that.
    """
    import wandb

    wandb.teardown()


def summary(run_dir: Path) -> dict:
    """The summary values that every W&B segment under `run_dir/wandb` set, the later ones winning."""
    flush()
    values = {}
    for path in sorted((run_dir / "wandb").glob("*run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime):
        for record in records(path):
            if record.WhichOneof("record_type") == "summary":
                values.update({u.key: json.loads(u.value_json) for u in record.summary.update if u.key})
    return values


def run_ids(run_dir: Path) -> set[str]:
    """The run ids of every W&B segment under `run_dir/wandb`."""
    flush()
    return {path.stem.removeprefix("run-") for path in (run_dir / "wandb").glob("*run-*/run-*.wandb")}
