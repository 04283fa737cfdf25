"""Kill tiny pretraining runs with SIGKILL, resume them, check that they end bit-identical to unkilled ones.

    python tools/fault_injection.py --kills 20 --processes 1 2 --output-dir runs/fault_injection

For each process count: an uninterrupted reference run goes to the end; then a second run is killed with
SIGKILL over and over and resumed with `train.resume=auto` each time, until an attempt finishes. Half of the
kills are aimed at a checkpoint save: the tool polls `checkpoints/` every 2 ms and kills as soon as the
`.tmp_step_*` folder of the chosen save appears (a save it does not see in time is reported as missed). The
other half land at a random moment of the training. The finished run must then log every step exactly once
with the reference's loss, bit for bit, and write the same encoder tensors (`torch.equal`).

With `--reference-dir DIR`, finished uninterrupted runs DIR/1 and DIR/2 (by process count) of the same steps
and run config (`reference_problem`) stand for the references, which are then not trained again. They must
have run on one thread (`OMP_NUM_THREADS=1`), as the tool's runs do, or no loss can match bit for bit.

Each attempt prints one line (the kill moment, whether it landed during a save, the step it resumed from),
each process count one summary line. The exit code is 0 only if every run matched its reference.

A 2-process run is `accelerate launch --multi_gpu` on CPU (gloo). Its launcher starts each worker in a new
session, so killing the launcher's process group alone would spare the workers, which would then get SIGTERM
from their parent's death and stop cleanly with a checkpoint; the tool instead freezes the launcher's group
and every descendant with SIGSTOP and then sends each SIGKILL, so that all of them die at the same moment.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssl_toolkit.process.launch import AccelerateLaunch, Command, Finished, Launcher, Subprocess
from ssl_toolkit.process.outcome import Outcome

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = REPO / "recipes" / "quickstart.yaml"
POLL_S = 0.002
# One thread for torch's arithmetic in every child, the references included: the same thread count on
# every attempt keeps the floating-point reductions in the same order.
THREADS = "1"

RESUMED = re.compile(r"resumed from (?P<checkpoint>\S+) at step (?P<step>\d+);")
FRESH_START = re.compile(r"train\.resume=\S+: no checkpoint in \S+ yet; starting at step 0")
STEP_DONE = re.compile(r"^step (?P<step>\d+)/\d+ ")
TMP_PREFIX = ".tmp_step_"
# What a reused reference run's config may set otherwise (besides run.*): nothing a step computes, nor the
# schedule (train.epochs, train.max_steps), nor which steps are logged (log.every). Views are seeded by
# (seed, epoch, index), whatever the number of DataLoader workers.
REFERENCE_MAY_DIFFER = frozenset({
    "data.download", "data.num_workers", "train.checkpoint_every", "train.resume", "train.resume_allow",
    "train.max_bad_steps", "train.collective_timeout_s", "log.trackers", "log.group",
})  # fmt: skip


def tiny_overrides(steps: int, checkpoint_every: int) -> list[str]:
    """The tests' tiny run (about 50 ms a step on 2 CPU cores), longer and checkpointed often."""
    return [
        "data.image_size=8",
        "model.backbone=test_resnet",
        "model.proj_dim=16",
        "train.batch_size=32",
        f"train.max_steps={steps}",
        f"train.checkpoint_every={checkpoint_every}",
        "log.trackers=[]",
        "log.every=1",
    ]


def child_environment() -> dict[str, str]:
    """What every child's environment adds to this one's."""
    return {
        "OMP_NUM_THREADS": THREADS,
        "MKL_NUM_THREADS": THREADS,
        "PYTHONUNBUFFERED": "1",  # the resume line must reach the tool when it is printed, not at exit
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def launcher(processes: int) -> Launcher:
    """A plain subprocess for one process; `accelerate launch --multi_gpu` (gloo on CPU, a free port: others
    may run multi-process jobs here too) for more."""
    return Subprocess() if processes == 1 else AccelerateLaunch(num_processes=processes)


def pretrain_command(recipe: Path, overrides: list[str]) -> Command:
    return Command.of_module("ssl_toolkit.pretrain", [str(recipe), *overrides])


# --- processes ---------------------------------------------------------------------------------------------


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name, in parentheses, may hold spaces: the fields after it are the reliable ones
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    return children


def _descendants(root: int) -> set[int]:
    children = _children_by_parent()
    found, frontier = set(), [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has closed its files, its lock included


def _signal(pid: int, number: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if not group:
            os.kill(pid, number)
            return
        pgid = os.getpgid(pid)
        if pgid != os.getpgrp():
            os.killpg(pgid, number)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the process, its process group and every descendant, all frozen first, then wait for them.

    Freezing first matters: a worker whose launcher dies first gets SIGTERM (its parent-death signal) and
    would have time to save a checkpoint, which is a clean stop, not a crash.
    """
    _signal(process.pid, signal.SIGSTOP, group=True)  # the launcher can start no one new from here on
    frozen: set[int] = set()
    while True:
        new = _descendants(process.pid) - frozen
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP, group=True)
            _signal(pid, signal.SIGSTOP, group=False)
        frozen |= new
    for pid in frozen:
        _signal(pid, signal.SIGKILL, group=True)
        _signal(pid, signal.SIGKILL, group=False)
    _signal(process.pid, signal.SIGKILL, group=True)
    _signal(process.pid, signal.SIGKILL, group=False)
    process.wait()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in frozen):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(p for p in frozen if _alive(p))} survived SIGKILL")
        time.sleep(0.01)


class RunningPretraining:
    """One attempt's `python -m ssl_toolkit.pretrain` (or launcher), in its own session, its stdout read
    line by line by a thread and copied, like its stderr, into a log file."""

    def __init__(self, processes: int, command: Command, log_path: Path):
        self.log_path = log_path
        log_path.unlink(missing_ok=True)  # the launcher appends; a rerun's attempt starts a new log
        self.launched = launcher(processes).start(
            command,
            outcome=log_path.with_suffix(".outcome.json"),
            log=log_path,  # stderr, after the command line
            environment=child_environment(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            new_session=True,
        )
        self.process = self.launched.process
        self.started = self.launched.started
        self._log = log_path.open("a")  # the stdout lines, as they are read
        self.resume_step: int | None = None
        self.resume_seen_at: float | None = None
        self.last_step: int | None = None  # the last step this attempt printed
        self.last_step_at: float | None = None
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            now = time.monotonic()
            with self._lock:
                self._log.write(line)
                self._log.flush()
                done = STEP_DONE.match(line)
                if done:
                    self.last_step, self.last_step_at = int(done["step"]), now
                if self.resume_step is None:
                    resumed = RESUMED.search(line)
                    if resumed or FRESH_START.search(line):
                        self.resume_step = int(resumed["step"]) if resumed else 0
                        self.resume_seen_at = now

    def resumed(self) -> tuple[int, float] | None:
        """The step this attempt resumed from and when it said so, once it has."""
        with self._lock:
            return None if self.resume_step is None else (self.resume_step, self.resume_seen_at)

    def last_printed_step(self) -> tuple[int | None, float | None]:
        with self._lock:
            return self.last_step, self.last_step_at

    def finish(self) -> Finished:
        finished = self.launched.wait()
        self._reader.join(timeout=30)
        self._log.close()
        return finished

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text()[-characters:]


# --- one attempt -------------------------------------------------------------------------------------------


def _tmp_folders(checkpoints: Path) -> dict[str, tuple[int, int]]:
    """Each `.tmp_step_*` folder by name, with what tells a new one from one left by an earlier attempt."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(checkpoints):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat(follow_symlinks=False)
                    found[entry.name] = (stat.st_ino, stat.st_ctime_ns)
    return found


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def upcoming_saves(resume_step: int, max_steps: int, checkpoint_every: int) -> list[int]:
    """The steps whose checkpoints an attempt resumed at `resume_step` writes (the last one always)."""
    periodic = range(checkpoint_every, max_steps, checkpoint_every)
    return [step for step in periodic if step > resume_step] + [max_steps]


@dataclass
class Attempt:
    number: int
    aim: str | None  # "save", "random", or None for an attempt left to finish
    resume_step: int | None = None
    killed_at_s: float | None = None  # after the attempt's start
    target_save: int | None = None
    during_save: bool = False
    missed_save: bool = False
    last_step: int | None = None  # the last step it printed before the kill
    exit_code: int | None = None
    outcome: Outcome | None = None  # what the run's outcome file (or exit code) says of its end
    training_seconds: float = 0.0  # from the resume line to the last step's line

    @property
    def killed(self) -> bool:
        return self.killed_at_s is not None

    def describe(self) -> str:
        resumed = "?" if self.resume_step is None else str(self.resume_step)
        line = f"  attempt {self.number:2d}: resumed from step {resumed:>3}, "
        if not self.killed:
            ended = "finished" if self.exit_code == 0 else f"exited with code {self.exit_code}"
            if self.exit_code != 0 and self.outcome is not None:
                ended += f" ({self.outcome.status.phrase}: {self.outcome.message})"
            planned = f" before its planned kill ({self.aim})" if self.aim else ""
            return line + ended + planned
        after = "before its first step" if self.last_step is None else f"after step {self.last_step:3d}"
        line += f"SIGKILL at {self.killed_at_s:6.3f} s {after}"
        if self.aim == "save":
            if self.missed_save:
                return line + f", aimed at the save of step {self.target_save}: MISSED (it completed unseen)"
            landed = "during" if self.during_save else "just after (renamed before the kill)"
            return line + f", {landed} the save of step {self.target_save}"
        return line + (", random moment" + (" (during a save)" if self.during_save else ""))


@dataclass
class RunSpec:
    processes: int
    recipe: Path
    run_dir: Path
    steps: int
    checkpoint_every: int

    def overrides(self, first: bool) -> list[str]:
        fresh = ["run.overwrite=true"] if first else []  # the tool's own folder, cleared for a new run
        return [
            *tiny_overrides(self.steps, self.checkpoint_every),
            f"run.output_dir={self.run_dir.parent}",
            f"run.name={self.run_dir.name}",
            "train.resume=auto",
            *fresh,
        ]


def run_attempt(
    spec: RunSpec, number: int, aim: str | None, rng: random.Random, seconds_per_step: float
) -> Attempt:
    """Start an attempt; with an aim, kill it during a chosen save or at a random moment of its training."""
    attempt = Attempt(number, aim)
    checkpoints = spec.run_dir / "checkpoints"
    tmp_before = _tmp_folders(checkpoints)
    log = spec.run_dir.parent / f"{spec.run_dir.name}.attempt{number:02d}.log"
    spec.run_dir.parent.mkdir(parents=True, exist_ok=True)
    running = RunningPretraining(
        spec.processes, pretrain_command(spec.recipe, spec.overrides(number == 1)), log
    )
    kill_time = None
    final_inode_before = None
    seen_target = False
    while running.process.poll() is None and aim is not None:
        resumed = running.resumed()
        if resumed is not None and attempt.resume_step is None:
            attempt.resume_step, said_at = resumed
            if aim == "save":
                attempt.target_save = rng.choice(
                    upcoming_saves(attempt.resume_step, spec.steps, spec.checkpoint_every)
                )
                final_inode_before = _inode(checkpoints / f"step_{attempt.target_save:08d}")
            else:
                # From the resume line on (a kill during the imports tests nothing the run writes), over
                # the reference's time for the steps left and one more (the final save and the encoder).
                remaining = spec.steps - attempt.resume_step + 1
                kill_time = said_at + rng.uniform(0, remaining * seconds_per_step)
        if aim == "save" and attempt.target_save is not None:
            name = f"{TMP_PREFIX}{attempt.target_save:08d}"
            current = _tmp_folders(checkpoints).get(name)
            if current is not None and current != tmp_before.get(name):
                seen_target = True
                break
            final_inode = _inode(checkpoints / f"step_{attempt.target_save:08d}")
            if final_inode is not None and final_inode != final_inode_before:
                attempt.missed_save = True
                break
        if kill_time is not None and time.monotonic() >= kill_time:
            break
        time.sleep(POLL_S)
    if aim is not None and running.process.poll() is None:
        attempt.killed_at_s = time.monotonic() - running.started
        kill_tree(running.process)
        attempt.last_step = running.last_printed_step()[0]
        tmp_after = _tmp_folders(checkpoints)
        unfinished = {name for name, mark in tmp_after.items() if tmp_before.get(name) != mark}
        if aim == "save":
            attempt.during_save = seen_target and f"{TMP_PREFIX}{attempt.target_save:08d}" in unfinished
        else:
            attempt.during_save = bool(unfinished)
    finished = running.finish()
    attempt.exit_code, attempt.outcome = finished.exit_code, finished.outcome
    resumed = running.resumed()
    last_step_at = running.last_printed_step()[1]
    if resumed is not None:
        attempt.resume_step = resumed[0]
        if not attempt.killed and last_step_at is not None:
            attempt.training_seconds = last_step_at - resumed[1]
    if not attempt.killed and attempt.exit_code != 0:
        print(running.log_tail(), file=sys.stderr)
    return attempt


# --- comparison --------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    steps_compared: int = 0
    max_loss_difference: float = 0.0
    tensors: int = 0
    tensors_equal: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.problems


def compare_runs(reference: Path, resumed: Path, steps: int) -> Comparison:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ssl_toolkit.run_dir import RunDirectory

    comparison = Comparison()
    expected_steps = list(range(1, steps + 1))
    losses = {}
    for name, path in (("reference", reference), ("resumed", resumed)):
        records = RunDirectory(path).read_metrics()
        logged = [record["step"] for record in records]
        if logged != expected_steps:
            comparison.problems.append(f"the {name} run logged steps {logged}, not 1..{steps} once each")
        losses[name] = {record["step"]: record["loss"] for record in records}
    for step in expected_steps:
        a, b = losses["reference"].get(step), losses["resumed"].get(step)
        if a is None or b is None:
            continue
        comparison.steps_compared += 1
        difference = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
        comparison.max_loss_difference = max(comparison.max_loss_difference, difference)
        if a != b:
            comparison.problems.append(f"step {step}: loss {b!r} after resumes, {a!r} uninterrupted")
    try:
        a = load_file(str(RunDirectory(reference).encoder))
        b = load_file(str(RunDirectory(resumed).encoder))
    except (OSError, SafetensorError) as error:
        comparison.problems.append(f"an encoder could not be read: {error}")
        return comparison
    if a.keys() != b.keys():
        comparison.problems.append(f"the encoders hold different tensors: {sorted(a.keys() ^ b.keys())}")
    comparison.tensors = len(a)
    for name in sorted(a.keys() & b.keys()):
        if (
            a[name].dtype == b[name].dtype
            and a[name].shape == b[name].shape
            and torch.equal(a[name], b[name])
        ):
            comparison.tensors_equal += 1
        else:
            comparison.problems.append(f"encoder tensor {name} differs")
    return comparison


# --- one process count -------------------------------------------------------------------------------------


def reference_problem(run_dir: Path, spec: RunSpec) -> str | None:
    """Why the run at `run_dir` cannot stand for `spec`'s reference (None when it can): it must have finished
    (pretrain.json and encoder.safetensors), trained `spec.steps` steps on `spec.processes` processes, and
    differ from `spec`'s config only where no step's bits can (`REFERENCE_MAY_DIFFER`)."""
    from ssl_toolkit.config import ConfigError, load_config
    from ssl_toolkit.run_dir import RunDirectory
    from ssl_toolkit.training.checkpoint_files import read_description
    from ssl_toolkit.training.resume_rules import changed_keys, describe

    run = RunDirectory(run_dir)
    if not (run.summary.is_file() and run.encoder.is_file()):
        return f"it has not finished ({run.summary.name} and {run.encoder.name} are not both there)"
    try:
        steps = run.read_summary().get("steps")
        last = run.checkpoint_dirs()[-1]
        processes = read_description(last)["num_processes"]
        saved = load_config(run.config)
    except (OSError, ValueError, KeyError, IndexError, ConfigError) as error:
        return f"it cannot be read ({type(error).__name__}: {error})"
    if steps != spec.steps:
        return f"it trained {steps} steps, not {spec.steps}"
    wanted = load_config(spec.recipe, spec.overrides(first=True))
    changes = {
        key: values
        for key, values in changed_keys(saved, processes, wanted, spec.processes).items()
        if not (key.startswith("run.") or key in REFERENCE_MAY_DIFFER)
    }
    return f"its run differs: {describe(changes)}" if changes else None


def reference_run(spec: RunSpec, label: str, existing: Path | None) -> float | None:
    """The uninterrupted reference: `existing` when it is a finished run of the same steps, else trained at
    `spec.run_dir`. Returns its seconds per step (None when it failed); `spec.run_dir` is then the run's."""
    if existing is not None:
        problem = reference_problem(existing, spec)
        if problem is None:
            from ssl_toolkit.run_dir import RunDirectory

            print(f"{label}: reference run of {spec.steps} steps reused from {existing}", flush=True)
            spec.run_dir = existing
            return RunDirectory(existing).read_summary()["seconds"] / spec.steps
        print(f"{label}: {existing} not reused: {problem}", flush=True)
    print(f"{label}: reference run of {spec.steps} steps", flush=True)
    attempt = run_attempt(spec, 1, None, random.Random(), 0.0)  # no kill: draws nothing
    if attempt.exit_code != 0:
        ended = f"{attempt.outcome.status.phrase}: {attempt.outcome.message}" if attempt.outcome else ""
        print(f"{label}: the reference run failed with exit code {attempt.exit_code} ({ended})", flush=True)
        return None
    return attempt.training_seconds / spec.steps


def fault_injection(
    processes: int,
    kills: int,
    steps: int,
    checkpoint_every: int,
    recipe: Path,
    output_dir: Path,
    rng: random.Random,
    reference_dir: Path | None = None,
) -> bool:
    """The reference (reused from `reference_dir/<processes>` where it can be), then the killed-and-resumed
    run, then the comparison; True if identical."""
    label = f"{processes} process{'es' if processes > 1 else ''}"
    base = output_dir / f"processes_{processes}"
    reference = RunSpec(processes, recipe, base / "reference", steps, checkpoint_every)
    existing = None if reference_dir is None else reference_dir / str(processes)
    seconds_per_step = reference_run(reference, label, existing)
    if seconds_per_step is None:
        return False

    killed = RunSpec(processes, recipe, base / "killed", steps, checkpoint_every)
    aims = ["save"] * math.ceil(kills / 2) + ["random"] * (kills // 2)
    rng.shuffle(aims)
    attempts: list[Attempt] = []
    for aim in [*aims, None]:
        attempt = run_attempt(killed, len(attempts) + 1, aim, rng, seconds_per_step)
        attempts.append(attempt)
        print(attempt.describe(), flush=True)
        if not attempt.killed:
            break
    finished = attempts[-1].exit_code == 0 and not attempts[-1].killed
    landed = [a for a in attempts if a.killed]
    aimed_at_saves = [a for a in landed if a.aim == "save"]
    during_saves = sum(a.during_save for a in landed)
    missed = sum(a.missed_save for a in aimed_at_saves)
    resumes = sum(1 for a in attempts[1:] if a.resume_step is not None)
    if not finished:
        print(f"{label}: FAILED, the last attempt exited with code {attempts[-1].exit_code}", flush=True)
        return False
    comparison = compare_runs(reference.run_dir, killed.run_dir, steps)
    for problem in comparison.problems[:20]:
        print(f"  {problem}", flush=True)
    verdict = "IDENTICAL" if comparison.identical else "DIFFERENT"
    print(
        f"{label}: kills landed {len(landed)}/{kills}, during saves {during_saves} "
        f"({len(aimed_at_saves)} aimed, {missed} missed), resumes {resumes}, "
        f"steps compared {comparison.steps_compared}/{steps}, "
        f"max |loss difference| {comparison.max_loss_difference:g}, "
        f"tensors equal {comparison.tensors_equal}/{comparison.tensors}: {verdict}",
        flush=True,
    )
    return comparison.identical


# --- command line ------------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in all, split between the counts")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--steps", type=int, default=30, help="train.max_steps of every run")
    parser.add_argument("--checkpoint-every", type=int, default=4, help="train.checkpoint_every")
    parser.add_argument("--seed", type=int, default=0, help="decides the kill moments and targeted saves")
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "fault_injection")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument(
        "--reference-dir",
        type=Path,
        help="finished uninterrupted runs to compare with, DIR/1 and DIR/2 by process count (trained with "
        "the same recipe, overrides and one thread); one that is missing or differs is trained anew",
    )
    args = parser.parse_args(argv)
    if args.kills < 0 or args.steps < 1 or args.checkpoint_every < 1:
        parser.error("--kills must be >= 0, --steps and --checkpoint-every >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    rng = random.Random(args.seed)
    recipe = args.recipe.resolve()
    output_dir = args.output_dir.resolve()
    reference_dir = None if args.reference_dir is None else args.reference_dir.resolve()
    counts = list(dict.fromkeys(args.processes))
    shares = [args.kills // len(counts) + (i < args.kills % len(counts)) for i in range(len(counts))]
    started = time.monotonic()
    results = [
        fault_injection(
            count, share, args.steps, args.checkpoint_every, recipe, output_dir, rng, reference_dir
        )
        for count, share in zip(counts, shares, strict=True)
    ]
    print(f"{'all identical' if all(results) else 'NOT identical'} in {time.monotonic() - started:.0f} s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
