"""Starting a command and collecting how it ended: in this process, as a subprocess, or under
`accelerate launch`.

A `Command` is a Python module (`-m`) or script and its arguments; a launcher starts it with the outcome
file named in its environment, its output appended to a log, optionally under an address-space limit, and
returns a `Launched` whose `wait()` gives a `Finished`: the exit code, the outcome (read from the file, or
told by the exit code when the process wrote none), the peak resident memory and the seconds it took.
Which launcher is used is the caller's choice; what becomes of the command is read the same way for all.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssl_toolkit.process.memory import child_peak_memory_mb
from ssl_toolkit.process.outcome import OUTCOME_VARIABLE, Outcome, clear_outcome, exit_code_of, read_outcome

LAUNCHER_WORDS = ("accelerate", "torchrun", "torch.distributed")


@dataclass(frozen=True)
class Command:
    """A Python program: `target` is a module run with `-m` (`module=True`) or a script's path."""

    target: str
    arguments: tuple[str, ...] = ()
    module: bool = True

    @classmethod
    def of_module(cls, name: str, arguments: Sequence[str] = ()) -> Command:
        return cls(name, tuple(arguments))

    @classmethod
    def of_script(cls, path: str | Path, arguments: Sequence[str] = ()) -> Command:
        return cls(str(path), tuple(arguments), module=False)

    def python_arguments(self) -> list[str]:
        """What follows the interpreter (or `accelerate launch`) on the command line."""
        return [*(["-m", self.target] if self.module else [self.target]), *self.arguments]


@dataclass(frozen=True)
class Finished:
    """How a launched command ended.

    Attributes:
        exit_code: the process's (negative: killed by that signal).
        outcome: from its outcome file, or told by the exit code when it wrote none.
        peak_memory_mb: the largest resident set of the process and its waited children (MiB), or None.
        seconds: wall time from start to end.
    """

    exit_code: int
    outcome: Outcome
    peak_memory_mb: float | None
    seconds: float


class Launched:
    """A started command: `wait()` for how it ended; `process` is its Popen (None when it ran in this
    process)."""

    def __init__(
        self,
        process: subprocess.Popen | None,
        outcome_path: Path,
        started: float,
        on_exit=None,
        outcome_is_temporary: bool = False,
    ):
        self.process = process
        self.outcome_path = outcome_path
        self.outcome_is_temporary = outcome_is_temporary
        self.started = started
        self._on_exit = on_exit
        self._finished: Finished | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._finished.exit_code if self._finished else self.process.poll()

    def wait(self, timeout: float | None = None) -> Finished:
        """Wait for the end (subprocess.TimeoutExpired after `timeout` seconds, the process left running)."""
        if self._finished is None:
            peak_mb = None
            if timeout is None and self.process.returncode is None:
                _, status, usage = os.wait4(self.process.pid, 0)
                self.process.returncode = os.waitstatus_to_exitcode(status)
                peak_mb = child_peak_memory_mb(usage)
            else:
                self.process.wait(timeout)
            self._finish(self.process.returncode, peak_mb)
        return self._finished

    def _finish(self, exit_code: int, peak_mb: float | None) -> None:
        if self._on_exit is not None:
            self._on_exit()
        outcome = read_outcome(self.outcome_path) or Outcome.of_exit_code(exit_code)
        if self.outcome_is_temporary:  # nobody asked to keep it: read, then gone
            shutil.rmtree(self.outcome_path.parent, ignore_errors=True)
        self._finished = Finished(exit_code, outcome, peak_mb, time.monotonic() - self.started)


class Launcher(ABC):
    """Starts a `Command`; see the module docstring."""

    @abstractmethod
    def start(
        self,
        command: Command,
        *,
        outcome: str | Path | None = None,
        log: str | Path | None = None,
        environment: Mapping[str, str] | None = None,
        memory_limit_mb: int | None = None,
        cwd: str | Path | None = None,
        stdout: int | None = None,
        new_session: bool = False,
    ) -> Launched:
        """Start `command`: its outcome file at `outcome` (a temporary one if None; an earlier one there is
        removed first), stdout and stderr appended to `log` (or to `stdout`, e.g. subprocess.PIPE, with
        stderr into `log`), `environment` added to this one's."""

    def run(self, command: Command, **options) -> Finished:
        """`start` and wait for the end."""
        return self.start(command, **options).wait()


def _outcome_path(outcome: str | Path | None) -> tuple[Path, bool]:
    """The outcome file to name in the command's environment and whether it is temporary: `outcome`,
    cleared of an earlier command's, or a fresh temporary name, removed once read."""
    if outcome is not None:
        path = Path(outcome)
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_outcome(path)
        return path, False
    return Path(tempfile.mkdtemp(prefix="ssl_toolkit_outcome_")) / "outcome.json", True


@dataclass(frozen=True)
class Subprocess(Launcher):
    """`python [-m] TARGET ARGS` in a new process (`python`: the interpreter, default this one's)."""

    python: str = sys.executable

    def argv(self, command: Command) -> list[str]:
        return [self.python, *command.python_arguments()]

    def start(self, command, *, outcome=None, log=None, environment=None, memory_limit_mb=None, cwd=None,
              stdout=None, new_session=False) -> Launched:  # fmt: skip
        argv = self.argv(command)
        outcome_path, temporary = _outcome_path(outcome)
        env = {**os.environ, **(environment or {}), OUTCOME_VARIABLE: str(outcome_path)}
        handle = None
        if log is not None:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            handle = Path(log).open("a")  # noqa: SIM115 - the child's output, closed when it ends
            handle.write(f"$ {' '.join(argv)}\n")
            handle.flush()

        def prepare_child() -> None:
            sigterm_when_parent_dies()  # the caller's death stops the run, with a checkpoint
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a caller that ignores Ctrl-C leaves it to the run
            if memory_limit_mb is not None:
                limit = memory_limit_mb << 20
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=stdout if stdout is not None else handle,
                stderr=handle if handle is not None else None,
                preexec_fn=prepare_child,
                start_new_session=new_session,
                text=stdout is not None,
            )
        except BaseException:
            if handle is not None:
                handle.close()
            raise
        on_exit = handle.close if handle else None
        return Launched(process, outcome_path, time.monotonic(), on_exit, outcome_is_temporary=temporary)


@dataclass(frozen=True)
class AccelerateLaunch(Subprocess):
    """`accelerate launch` of the command: from a config file, or `num_processes` CPU/GPU processes (gloo on
    CPU) on `num_machines` machines; `port` is the main process's (default: a free one on this machine)."""

    config_file: str | Path | None = None
    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    port: int | None = None
    options: tuple[str, ...] = field(default=("--mixed_precision", "no", "--dynamo_backend", "no"))

    def argv(self, command: Command) -> list[str]:
        launch = [self.python, "-m", "accelerate.commands.launch"]
        if self.config_file is not None:
            launch += ["--config_file", str(self.config_file)]
        else:
            if self.num_processes * self.num_machines > 1:
                launch.append("--multi_gpu")
            launch += ["--num_processes", str(self.num_processes), "--num_machines", str(self.num_machines)]
            if self.num_machines > 1:
                launch += [
                    "--machine_rank",
                    str(self.machine_rank),
                    "--main_process_ip",
                    self.main_process_ip,
                ]
            launch += ["--main_process_port", str(self.port or free_port()), *self.options]
        return [*launch, *command.python_arguments()]


class InProcess(Launcher):
    """The command's module `main(argv)` called in this process (no memory limit, no new session): for
    tests and notebooks, where a new interpreter's start-up would cost more than the run. Accelerate's
    process-wide state is cleared before and after, as a new process would start without it."""

    def start(self, command, *, outcome=None, log=None, environment=None, memory_limit_mb=None, cwd=None,
              stdout=None, new_session=False) -> Launched:  # fmt: skip
        if not command.module:
            raise ValueError(f"the in-process launcher runs modules, not the script {command.target}")
        unsupported = {
            "memory_limit_mb": memory_limit_mb,
            "cwd": cwd,
            "stdout": stdout,
            "new_session": new_session,
        }
        given = [name for name, value in unsupported.items() if value not in (None, False)]
        if given:
            raise ValueError(f"the in-process launcher cannot apply {', '.join(given)}: use Subprocess")
        outcome_path, temporary = _outcome_path(outcome)
        started = time.monotonic()
        reset_accelerate()
        shown = ["python", *command.python_arguments()]
        with (
            _environment({**(environment or {}), OUTCOME_VARIABLE: str(outcome_path)}),
            _output_to(log, shown),
        ):
            try:
                exit_code = importlib.import_module(command.target).main(list(command.arguments))
            except SystemExit as error:
                exit_code = exit_code_of(error)
            except Exception:  # a bug in the command: its outcome file says so, its traceback is in the log
                import traceback

                traceback.print_exc()
                exit_code = 1
            finally:
                reset_accelerate()
        launched = Launched(None, outcome_path, started, outcome_is_temporary=temporary)
        launched._finish(int(exit_code or 0), None)
        return launched


def reset_accelerate() -> None:
    """Forget Accelerate's singletons (its own tests' way), so that the next command builds its own."""
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(True)
        state.GradientState._reset_state()


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _output_to(log: str | Path | None, argv: list[str]) -> Iterator[None]:
    """This process's stdout and stderr appended to `log`, after the command line, as a subprocess's are."""
    if log is None:
        yield
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with Path(log).open("a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        writer = _LineWriter(handle)
        with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
            yield


class _LineWriter(io.TextIOBase):
    """A text stream into an open file, flushed at every write so the log is current."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, text: str) -> int:
        self._handle.write(text)
        self._handle.flush()
        return len(text)

    def isatty(self) -> bool:
        return False


def free_port() -> int:
    """A TCP port free on this machine now (others may run multi-process jobs here: 29500 may be taken)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sigterm_when_parent_dies() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return


def _parent_is_a_launcher() -> bool:
    try:
        command = (
            Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return False
    return any(word in command for word in LAUNCHER_WORDS)


def stop_with_parent() -> None:
    """Under `accelerate launch` or torchrun, stop (with a checkpoint) when the launcher dies.

    A launcher killed by a signal it does not forward (any signal, for the single-process launcher) would
    otherwise leave the run training unseen. A run started from a shell is left alone: `nohup` runs must
    outlive their shell.
    """
    if _parent_is_a_launcher():
        sigterm_when_parent_dies()
