"""Writing files so that a reader never sees half of one: atomic replacement, strict JSON, a full disk named.

Every file or folder that must appear whole is written under a temporary name beside it (`.tmp_<name>`) and
renamed into place (`replaced_atomically`, or `partial_path` + `move_into_place` when several processes
write the partial folder); a rename within one folder is atomic.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssl_toolkit.process.status import RunFailure, Status

PARTIAL_PREFIX = ".tmp_"


def partial_path(path: str | Path) -> Path:
    """Where `path` is written before it is complete: `.tmp_<name>` beside it."""
    path = Path(path)
    return path.with_name(f"{PARTIAL_PREFIX}{path.name}")


def remove_path(path: str | Path) -> None:
    """Remove a file, a link or a whole folder at `path`, if there is one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def move_into_place(partial: str | Path, path: str | Path) -> None:
    """Rename the finished `partial` (a file or a folder) to `path`, replacing what is there.

    A rename cannot replace a folder, so an old folder is moved aside first and put back if the rename fails.
    """
    partial, path = Path(partial), Path(path)
    folders = partial.is_dir() or (path.is_dir() and not path.is_symlink())
    if not (folders and (path.exists() or path.is_symlink())):
        partial.replace(path)
        return
    old = path.with_name(f".old_{path.name}")
    remove_path(old)
    path.rename(old)
    try:
        partial.rename(path)
    except BaseException:
        old.rename(path)
        raise
    remove_path(old)


@contextlib.contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write (a file or a folder), moved to `path` when the block
    succeeds and removed if it fails: a reader sees the old `path` or the finished new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    remove_path(partial)
    try:
        yield partial
        move_into_place(partial, path)
    except BaseException:
        remove_path(partial)
        raise


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 4 << 20  # less free space than this after a failed write: the write failed for want of it


class StorageFull(OSError, RunFailure):
    """A write failed because the disk (or the quota) is full; the message names what was being written."""

    status = Status.BAD_INPUT  # free space, then resume


def storage_full_error(path: str | Path, error: BaseException) -> StorageFull | None:
    """A StorageFull naming `path` when `error` means no space was left, else None.

    torch reports a full disk as "unexpected pos" or "iostream error", without the OS's words, so a failed
    write on a file system with (next to) no free space counts as one too.
    """
    text = str(error)
    full = getattr(error, "errno", None) in NO_SPACE_ERRNOS or "No space left" in text or "quota" in text
    if not full:
        existing = Path(path)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            full = shutil.disk_usage(existing).free < NEARLY_FULL_BYTES
        except OSError:
            full = False
    return StorageFull(f"No space left on device writing {path}") if full else None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk while writing `path` into StorageFull naming it; other errors pass unchanged."""
    try:
        yield
    except StorageFull:
        raise
    except Exception as error:  # safetensors raises its own type; unrelated errors re-raise
        full = storage_full_error(path, error)
        if full is None:
            raise
        raise full from error


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so that it is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """Strict JSON (no bare NaN or Infinity: they become null)."""
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value: Any) -> None:
    """Write `value` as strict JSON to `path`, atomically: a reader sees the old file or the new one."""
    write_text_atomically(path, json_text(value, indent=2) + "\n")


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` to `path` through `replaced_atomically`, a full disk named as StorageFull."""
    with writing(path), replaced_atomically(path) as partial:
        partial.write_text(text)


def write_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str]) -> Path:
    """`tensors` and `metadata` as a safetensors file at `path`, atomically, with an ordinary file's mode.

    safetensors creates its files 0600 whatever the umask; the file written here gets the mode the umask
    gives a new file, as every other file of a run directory has.
    """
    from safetensors.torch import save_file

    with replaced_atomically(path) as partial:
        partial.touch()  # created as any new file is, so its mode is what the umask leaves of 0666
        mode = stat.S_IMODE(partial.stat().st_mode)
        save_file(tensors, str(partial), metadata=metadata)
        os.chmod(partial, mode)
    return Path(path)


class DirectoryLock:
    """An exclusive lock on a directory (a run's, a study's), held until `release` or the holder's death.

    It is an advisory `flock` on `DIRECTORY/.lock`, which the kernel releases when its holder dies however
    it dies (kill -9 included), so a dead holder never blocks the next one; the file names the holder.
    """

    FILE_NAME = ".lock"

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / self.FILE_NAME
        self._handle = None

    def acquire(self) -> str | None:
        """Take the lock; None on success, else a description of the run holding it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            return _describe_holder(holder)
        handle.seek(0)
        handle.truncate()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        self._handle = handle
        return None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
