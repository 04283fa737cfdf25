"""Stopping on a signal: SIGTERM (SLURM preemption, `kill`), SIGINT (Ctrl-C), SIGUSR1 (SLURM's warning),
SIGHUP (the terminal closed; left alone under `nohup`).

The first signal asks the run to stop at the next step boundary, where every process agrees on it, saves a
checkpoint and exits with `ExitCode.INTERRUPTED`. A second signal, once `REPEAT_AFTER_S` have passed, exits at
once, even while the main thread waits inside a collective: signals arrive through a wakeup file descriptor
read by a thread, not through Python handlers that only run between bytecodes.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from ssl_toolkit.process.signals import STOP_SIGNALS, ignored_by_nohup
from ssl_toolkit.process.status import RunFailure, Status, exit_code_after_second_signal

# A launcher forwards the signal it got, and a terminal or SLURM signals every process too, so one Ctrl-C
# or one preemption reaches a process twice within milliseconds; only a later signal means "now".
REPEAT_AFTER_S = 2.0


class TrainingInterrupted(RuntimeError, RunFailure):
    """The run stopped early, resumably: a signal, or a peer process that stopped answering."""

    status = Status.INTERRUPTED  # resume with train.resume=auto


class StopSignals:
    """Records stop signals for the run in progress; a context manager that restores the old handlers.

    Only the main thread can install handlers: elsewhere (a thread of a notebook, say) it records nothing.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        for number in STOP_SIGNALS:
            if not ignored_by_nohup(number):
                self._previous[number] = signal.signal(number, _ignore_in_python)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._reader is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._writer.close()
        # Shutting the reader down ends the watching thread's recv at once; the writer's close alone would
        # not while a forked DataLoader worker still holds a copy of the writer.
        self._reader.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._reader.close()

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in STOP_SIGNALS:
                    self._record(signal.Signals(number))

    def _record(self, received: signal.Signals) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._received_at = received, now
            print(
                f"{received.name} received: stopping after this step with a checkpoint "
                f"(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
        elif now - self._received_at >= REPEAT_AFTER_S:
            print(
                f"{received.name} received again: exiting now, without a checkpoint",
                file=sys.stderr,
                flush=True,
            )
            os._exit(exit_code_after_second_signal(received))

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal (the loop's guard tells every process of any)."""
        return self.received is not None


def _ignore_in_python(signum, frame) -> None:
    """The Python-level handler does nothing: the wakeup descriptor already told the watching thread."""


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """In a DataLoader worker: leave stop signals to the main process, which shuts the workers down.

    A terminal's Ctrl-C and SLURM signal every process; a worker that died of it would break the batch the
    main process needs to finish its step and save.
    """
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
