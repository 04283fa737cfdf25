"""How a run ends: its status, its exit code, and the errors that carry them.

Every error a user can act on derives from `RunFailure` and names its `status`; an allocation failure
(CUDA or host memory) is recognised here and nowhere else (`as_failure`). Anything else is a bug: its
traceback is kept and it ends with status `error`.
"""

from __future__ import annotations

import enum
import errno
import os
import signal
import sys
from typing import ClassVar


class ExitCode(enum.IntEnum):
    """What a process's exit code means. A second stop signal N exits at once with 128 + N."""

    OK = 0
    ERROR = 1  # an unexpected failure (a bug): its traceback is on stderr
    BAD_INPUT = 2  # fix the config, the data or the run directory, or free disk space, then rerun
    DIVERGED = 3  # change the hyperparameters, then resume from the last good checkpoint
    INTERRUPTED = 4  # stopped for a signal or a lost peer, with a checkpoint: resume as it is
    OUT_OF_MEMORY = 5  # lower the memory a step needs, then rerun


def exit_code_after_second_signal(number: int) -> int:
    """The exit code of a process that a repeated stop signal `number` ended at once, without a checkpoint."""
    return 128 + number


class Status(str, enum.Enum):
    """How a run ended, as its outcome file and a study's results.jsonl record it."""

    OK = "ok"
    BAD_INPUT = "bad_input"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    OUT_OF_MEMORY = "out_of_memory"
    ERROR = "error"

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT_CODES[self]

    @property
    def phrase(self) -> str:
        """The words a report shows for it, e.g. in a table cell."""
        return self.value.replace("_", " ")

    @property
    def severity(self) -> int:
        """Which status describes a run of several processes: the highest of theirs (a process whose peer
        failed only sees an interruption; the failed one knows why)."""
        return _SEVERITY.index(self)


_EXIT_CODES = {
    Status.OK: ExitCode.OK,
    Status.BAD_INPUT: ExitCode.BAD_INPUT,
    Status.DIVERGED: ExitCode.DIVERGED,
    Status.INTERRUPTED: ExitCode.INTERRUPTED,
    Status.OUT_OF_MEMORY: ExitCode.OUT_OF_MEMORY,
    Status.ERROR: ExitCode.ERROR,
}
_SEVERITY = [
    Status.OK,
    Status.INTERRUPTED,
    Status.ERROR,
    Status.BAD_INPUT,
    Status.DIVERGED,
    Status.OUT_OF_MEMORY,
]


class RunFailure(Exception):
    """An error the user can act on: the command prints its message as one line and exits with its
    status's code. Subclasses name their status; `step` is the last training step done, where known."""

    status: ClassVar[Status] = Status.ERROR
    step: int | None = None


class UnusablePath(RunFailure):
    """The file system refused a path: read-only, not permitted, or full; the message names the path."""

    status = Status.BAD_INPUT


class OutOfMemory(RunFailure):
    """The run could not allocate memory on its accelerator or on the host; the message says what to lower."""

    status = Status.OUT_OF_MEMORY


GENERIC_MEMORY_ADVICE = "use smaller batches, or a machine with more memory"
OUT_OF_MEMORY_WORDS = "out of memory"
# Allocation failures that PyTorch reports as a RuntimeError: on the host (Linux and macOS, Windows), and on
# the GPU from libraries below PyTorch's allocator (a kernel's workspace, cuBLAS, NCCL).
HOST_ALLOCATION_PHRASES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")
GPU_ALLOCATION_PHRASES = (f"CUDA error: {OUT_OF_MEMORY_WORDS}", "CUBLAS_STATUS_ALLOC_FAILED")


def as_failure(error: BaseException, memory_advice: str = GENERIC_MEMORY_ADVICE) -> RunFailure | None:
    """`error` as the RunFailure it is or stands for (an allocation failure becomes OutOfMemory with
    `memory_advice`); None for a bug."""
    if isinstance(error, RunFailure):
        return error
    refused = _refused_path(error)
    if refused is not None:
        return refused
    torch = sys.modules.get("torch")  # a process that never imported torch has no torch errors
    if (torch is not None and isinstance(error, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and any(phrase in str(error) for phrase in GPU_ALLOCATION_PHRASES)
    ):
        where = "on the GPU"
    elif isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(phrase in str(error) for phrase in HOST_ALLOCATION_PHRASES)
    ):
        where = "on the host"
    else:
        return None
    # PyTorch's own message (what it tried to allocate) is kept, on the same line as the advice.
    detail = " ".join(str(error).split()) or type(error).__name__
    return OutOfMemory(f"{OUT_OF_MEMORY_WORDS} {where}: {memory_advice} ({detail})")


# What the file system can refuse that the user can fix: the path's permissions, its mount, its free space.
REFUSED_PATH_ERRNOS = {
    errno.EROFS: "make it writable or choose a path on a writable file system",
    errno.EACCES: "fix its permissions or choose another path",
    errno.EPERM: "fix its permissions or choose another path",
    errno.ENOSPC: "free space on its file system, then run the command again (a run resumes)",
    errno.EDQUOT: "free space within the quota, then run the command again (a run resumes)",
}


def _refused_path(error: BaseException) -> UnusablePath | None:
    """An OSError of a path that the user can fix (read-only, not permitted, full) as UnusablePath."""
    if not isinstance(error, OSError) or error.errno not in REFUSED_PATH_ERRNOS:
        return None
    path = error.filename if error.filename is not None else "a file"
    reason = error.strerror or os.strerror(error.errno)
    return UnusablePath(f"{path}: {reason}; {REFUSED_PATH_ERRNOS[error.errno]}")


def mentions_out_of_memory(text: str) -> bool:
    """Whether a message from outside the toolkit (a peer library's, a worker's) reports an allocation
    failure; for the tools that run other programs."""
    lowered = text.lower()
    return any(
        words in lowered
        for words in (OUT_OF_MEMORY_WORDS, "can't allocate memory", "cannot allocate memory", "bad_alloc")
    )


def status_of_exit_code(exit_code: int) -> tuple[Status, str]:
    """The status and message of a process that left no outcome file, from its exit code alone.

    A SIGKILL says nothing of why: an operator, a scheduler's hard time limit or the kernel's OOM killer
    sends it alike. It is a failure (the last checkpoint is kept: rerun to resume), not an out-of-memory.
    """
    if exit_code == 0:
        return Status.OK, ""
    number = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else None
    if number is not None and number in signal.Signals._value2member_map_:
        name = signal.Signals(number).name
        if number == signal.SIGKILL:
            return Status.ERROR, (
                f"killed by {name}, which no process can catch: by someone, by a scheduler's hard time limit "
                "or by the kernel short of memory (see `dmesg`); its last checkpoint is kept, rerun to resume"
            )
        return Status.INTERRUPTED, f"killed by {name} before it could record how it ended"
    for status in Status:
        if status is not Status.OK and status.exit_code == exit_code:
            return status, f"exit code {exit_code}, and no outcome recorded"
    return Status.ERROR, f"exit code {exit_code}, and no outcome recorded"
