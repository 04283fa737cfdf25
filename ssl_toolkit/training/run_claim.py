"""A run directory belongs to one run: claimed under a lock for the run's life, refused when already used.

The lock is an advisory `flock` on `RUN_DIR/.lock`, which the kernel releases when its holder dies however
it dies (kill -9 included), so a dead run never blocks the next one. The file also names the holder, for
the message that refuses a second run.
"""

from __future__ import annotations

import shutil

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ssl_toolkit.config import Config, ConfigError
from ssl_toolkit.files import DirectoryLock
from ssl_toolkit.run_dir import RunDirectory


def used_entries(run: RunDirectory) -> list[str]:
    """What a previous run left in the directory, sorted: not its lock file, nor the outcome of an attempt
    that stopped before it trained (a rerun after fixing a missing dataset takes the directory as it is)."""
    if not run.path.is_dir():
        return []
    attempt = (run.lock.name, run.outcome.name)
    return sorted(
        entry.name
        for entry in run.path.iterdir()
        if entry.name not in attempt and not entry.name.startswith(f"{run.outcome.name}.rank")
    )


def clear(run: RunDirectory) -> None:
    """Remove everything in the run directory but the lock this run holds."""
    for entry in run.path.iterdir():
        if entry.name == run.lock.name:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def claim(accelerator: Accelerator, config: Config, run: RunDirectory) -> DirectoryLock:
    """Take the run directory for this run, on the main process; every process raises if it is refused.

    Refused: a directory another live run holds, and a used directory without `train.resume` (unless
    `run.overwrite` clears it first).

    Raises:
        ConfigError: naming the directory and the ways forward.
    """
    lock = DirectoryLock(run.path)
    problem = None
    if accelerator.is_main_process:
        problem = _claim_on_main(lock, config, run)
    if accelerator.num_processes > 1:
        message = [problem]
        broadcast_object_list(message)
        problem = message[0]
    if problem is not None:
        lock.release()
        raise ConfigError(problem)
    return lock


def _claim_on_main(lock: DirectoryLock, config: Config, run: RunDirectory) -> str | None:
    holder = lock.acquire()
    if holder is not None:
        return (
            f"run directory {run.path} is in use by a run in progress ({holder}); wait for it to finish, "
            "or choose another run.name"
        )
    if config.run.overwrite:
        clear(run)
        return None
    used = used_entries(run)
    if used and config.train.resume is None:
        shown = ", ".join(used[:4]) + (", ..." if len(used) > 4 else "")
        lock.release()
        return (
            f"run directory {run.path} already holds a run ({shown}); continue it with train.resume=auto, "
            "choose another run.name, or set run.overwrite=true to clear it first"
        )
    return None
