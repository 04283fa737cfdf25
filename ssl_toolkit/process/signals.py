"""The signals that stop a command: which they are, and how a command other than pretraining stops on them.

Pretraining stops at its next step boundary with a checkpoint (`ssl_toolkit.training.stop_signals`); every
other command (evaluation, export, a study's driver) stops where it is: `raising_on_stop_signals` turns the
signal into `CommandInterrupted`, which the entry point reports as one line with exit code 4. Their results
are written whole or not at all (`ssl_toolkit.files`), so an interrupted command leaves nothing partial.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from ssl_toolkit.process.status import RunFailure, Status

# SIGTERM: `kill`, a scheduler's preemption; SIGINT: Ctrl-C; SIGUSR1: SLURM's warning before a time limit;
# SIGHUP: the terminal or ssh session closed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


def ignored_by_nohup(number: int) -> bool:
    """Whether `number` is SIGHUP left ignored by `nohup`, whose runs must outlive their terminal."""
    return number == signal.SIGHUP and signal.getsignal(number) == signal.SIG_IGN


class CommandInterrupted(RuntimeError, RunFailure):
    """A command stopped by a signal before it finished; what it had written is whole, the rest not begun."""

    status = Status.INTERRUPTED


@contextlib.contextmanager
def raising_on_stop_signals(what: str = "the command") -> Iterator[None]:
    """Within the block, a stop signal raises CommandInterrupted in the main thread (elsewhere: nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number, frame):
        raise CommandInterrupted(
            f"{signal.Signals(number).name} received: {what} stopped before it finished; the files it "
            "had finished are whole and nothing partial is left: run it again"
        )

    previous = {
        number: signal.signal(number, interrupt) for number in STOP_SIGNALS if not ignored_by_nohup(number)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
