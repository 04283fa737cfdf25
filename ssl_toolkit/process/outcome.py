"""The outcome file: how a command's process ended (status, message, step), in JSON, for whoever started it.

Whoever starts a command names the file in the environment variable `SSL_TOOLKIT_OUTCOME`; the command's
entry point (`run_entry_point`) writes it when the command returns or fails, and pretraining also leaves one
in its run directory (`RunDirectory.outcome`). Under a launcher of several processes each process other than
rank 0 writes `<file>.rank<N>` beside it; `read_outcome` merges them, the most severe status first. Callers
read this file, never the process's stderr (the model: torch elastic's error file and `@record`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ssl_toolkit.files import write_json
from ssl_toolkit.process.status import GENERIC_MEMORY_ADVICE, Status, as_failure, status_of_exit_code

OUTCOME_VARIABLE = "SSL_TOOLKIT_OUTCOME"
MESSAGE_CHARACTERS = 1000


@dataclass(frozen=True)
class Outcome:
    """How a process ended.

    Attributes:
        status: ok, bad_input, diverged, interrupted, out_of_memory or error.
        message: the one line the process printed for it (None when it finished).
        step: the last training step it completed, for pretraining.
    """

    status: Status
    message: str | None = None
    step: int | None = None

    @property
    def exit_code(self) -> int:
        return int(self.status.exit_code)

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        step = data.get("step")
        return cls(Status(data["status"]), data.get("message"), None if step is None else int(step))

    @classmethod
    def of_error(
        cls, error: BaseException, step: int | None = None, memory_advice: str = GENERIC_MEMORY_ADVICE
    ):
        """The outcome a process that raised `error` ends with (status error for a bug)."""
        failure = as_failure(error, memory_advice)
        if failure is not None:
            return cls(failure.status, _one_line(str(failure)), step if step is not None else failure.step)
        if isinstance(error, KeyboardInterrupt):
            return cls(Status.INTERRUPTED, "KeyboardInterrupt", step)
        if isinstance(error, SystemExit):  # argparse's usage errors exit 2
            code = exit_code_of(error)
            return cls(status_of_exit_code(code)[0], f"exited with {code}", step)
        return cls(Status.ERROR, _one_line(f"{type(error).__name__}: {error}"), step)

    @classmethod
    def of_exit_code(cls, exit_code: int) -> Outcome:
        """What a process that wrote no outcome file tells by its exit code alone."""
        status, message = status_of_exit_code(exit_code)
        return cls(status, message or None)


def exit_code_of(exit: SystemExit) -> int:
    """The exit code a SystemExit ends the process with: None is 0, a message is 1."""
    return 0 if exit.code is None else exit.code if isinstance(exit.code, int) else 1


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MESSAGE_CHARACTERS]


def rank_outcome_path(path: str | Path, rank: int | str) -> Path:
    """Where process `rank` of a group writes the outcome asked for at `path`: `path` itself for rank 0,
    `<path>.rank<N>` beside it for the others."""
    path = Path(path)
    return path if str(rank) in ("", "0") else path.with_name(f"{path.name}.rank{rank}")


def process_outcome_path(path: str | Path) -> Path:
    """Where this process writes the outcome a launcher asked for at `path` (torchrun and accelerate
    launch set RANK)."""
    return rank_outcome_path(path, os.environ.get("RANK", "0"))


def write_outcome(path: str | Path, outcome: Outcome) -> None:
    """Write `outcome` to `path`, atomically; a failed write (a full disk) loses only the file, not the
    exit code, which says the same."""
    with contextlib.suppress(OSError):
        write_json(path, outcome.as_dict())


def read_outcome(path: str | Path) -> Outcome | None:
    """The outcome at `path` merged with those its other processes wrote beside it (`<path>.rank<N>`): the
    most severe status wins; None when no process wrote one (or it cannot be read)."""
    path = Path(path)
    found = []
    for candidate in [path, *sorted(path.parent.glob(f"{path.name}.rank*"))]:
        try:
            found.append(Outcome.from_dict(json.loads(candidate.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return None
    return max(found, key=lambda outcome: outcome.status.severity)  # the first of the most severe


def clear_outcome(path: str | Path) -> None:
    """Remove an earlier outcome at `path` (and its ranks'), so that a new process's silence is not read
    as the last one's words."""
    path = Path(path)
    for stale in [path, *path.parent.glob(f"{path.name}.rank*")]:
        stale.unlink(missing_ok=True)


def run_entry_point(body: Callable[[], object], memory_advice: str = GENERIC_MEMORY_ADVICE) -> int:
    """Run a command's `body` and return its exit code (0, or the int `body` returns); the outcome goes to
    `$SSL_TOOLKIT_OUTCOME` if set.

    An error the user can act on (a `RunFailure`, an allocation failure) is printed as one `error:` line and
    ends with its status's code. Anything else is a bug: its outcome says `error` and it propagates with its
    traceback.
    """
    destination = os.environ.get(OUTCOME_VARIABLE)

    def record(outcome: Outcome) -> None:
        if destination:
            write_outcome(process_outcome_path(destination), outcome)

    try:
        returned = body()
    except BaseException as error:
        outcome = Outcome.of_error(error, memory_advice=memory_advice)
        record(outcome)
        failure = as_failure(error, memory_advice)
        if failure is None:
            raise
        # One line, whatever the message holds (a YAML parser's report spans several).
        print(f"error: {' '.join(str(failure).split())}", file=sys.stderr, flush=True)
        return outcome.exit_code
    code = returned if isinstance(returned, int) else 0  # a command may end with a code of its own
    record(Outcome(Status.OK) if code == 0 else Outcome.of_exit_code(code))
    return code
