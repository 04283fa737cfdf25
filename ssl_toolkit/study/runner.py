"""Running a study: each (cell, seed) a fresh pretraining process, then its evaluations; one line each in
`DIR/results.jsonl`, appended as it finishes; reports at the end.

A study resumes: the (cell, seed) pairs already in results.jsonl are not run again, and every run is started
with `train.resume=auto`, so one killed mid-way continues from its last checkpoint. A run that fails is
recorded with its status (`out_of_memory`, `diverged`, `error`), read from the outcome file its process
leaves (`ssl_toolkit.process`), and never stops the study; one stopped by a signal stops the study.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.files import DirectoryLock, json_text
from ssl_toolkit.process.launch import AccelerateLaunch, Command, InProcess, Launcher, Subprocess
from ssl_toolkit.process.status import RunFailure, Status
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.study.publish import publish_study_reports
from ssl_toolkit.study.report import write_reports
from ssl_toolkit.study.results import read_results
from ssl_toolkit.study.spec import Cell, Study, run_name

# results.jsonl's statuses: a run that could not start for its input is an error like any other failure.
RESULT_STATUS = {Status.OUT_OF_MEMORY: "out_of_memory", Status.DIVERGED: "diverged"}


class StudyDirectory:
    """The files of a study in `path`: results.jsonl, runs/, logs/ and the reports."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results = self.path / "results.jsonl"
        self.runs = self.path / "runs"
        self.logs = self.path / "logs"

    def log(self, name: str) -> Path:
        """The output of a run's processes, pretraining and evaluation, appended in order."""
        return self.logs / f"{name}.log"

    def outcome(self, name: str, step: str) -> Path:
        """Where the process of `step` (pretrain, evaluate) of run `name` records how it ended."""
        return self.logs / f"{name}.{step}.outcome.json"

    def read_results(self) -> list[dict]:
        return read_results(self.results)

    def drop_partial_line(self) -> None:
        """Cut a last line that a killed study left half written, so that the next one starts a line."""
        if not self.results.is_file():
            return
        text = self.results.read_bytes()
        if text and not text.endswith(b"\n"):
            self.results.write_bytes(text[: text.rfind(b"\n") + 1])

    def append_result(self, result: dict) -> None:
        with self.results.open("a") as handle:
            handle.write(json_text(result) + "\n")


def _pretraining_metrics(run: RunDirectory) -> dict:
    """pretrain.json's figures; the time per epoch from the last session (a resume may have shortened it)."""
    summary = run.read_summary()
    metrics = {"views_per_s": summary.get("views_per_s"), "final_loss": summary.get("final_loss")}
    if summary.get("peak_memory_mb") is not None:
        metrics["peak_memory_mb"] = summary["peak_memory_mb"]
    steps, epochs, session_steps = (
        summary.get("steps"),
        summary.get("epochs"),
        summary.get("steps_this_session"),
    )
    if steps and epochs and session_steps:
        seconds_per_epoch = summary["seconds"] / (session_steps * epochs / steps)
        metrics.update(seconds_per_epoch=seconds_per_epoch, pretrain_seconds=seconds_per_epoch * epochs)
    return metrics


def _evaluation_metrics(run: RunDirectory, evaluation: str) -> dict:
    if evaluation == "probe":
        probe = json.loads(run.probe.read_text())
        return {
            "probe_top1": probe.get("top1"),
            "probe_top5": probe.get("top5"),
            "probe_auroc": probe.get("auroc"),
        }
    if evaluation == "boosting":
        boosting = json.loads(run.probe_result("boosting").read_text())
        return {"boosting_top1": boosting.get("top1"), "boosting_auroc": boosting.get("auroc")}
    knn = json.loads(run.knn.read_text())
    return {"knn_top1": knn.get("top1")}


class StudyInterrupted(RuntimeError, RunFailure):
    """A run stopped for a signal (the study's, or its own): rerun the study to continue."""

    status = Status.INTERRUPTED


class StudyRunner:
    """Runs the cells × seeds of `study` into `directory` (see the module docstring).

    `launcher` starts each pretraining (default: a subprocess, or `accelerate launch` with the study's
    `accelerate_config`); `evaluation_launcher` each evaluation (default: a subprocess, or `launcher` when
    it runs commands in this process).
    """

    def __init__(
        self,
        study: Study,
        directory: str | Path,
        launcher: Launcher | None = None,
        evaluation_launcher: Launcher | None = None,
    ):
        self.study = study
        self.directory = StudyDirectory(directory)
        if launcher is None:
            config = study.accelerate_config
            launcher = Subprocess() if config is None else AccelerateLaunch(config_file=config)
        self.launcher = launcher
        self.evaluation_launcher = evaluation_launcher or (
            launcher if isinstance(launcher, InProcess) else Subprocess()
        )

    def pretrain_command(self, cell: Cell, seed: int, run: RunDirectory) -> Command:
        return Command.of_module(
            "ssl_toolkit.pretrain",
            [
                str(self.study.recipe),
                *self.study.overrides,
                *cell.arguments(),
                f"seed={seed}",
                *run.config_overrides(),
                f"log.group={self.study.name}",  # one W&B group for the study's runs (when W&B is on)
                "train.resume=auto",  # a fresh run the first time, the rest of a killed one afterwards
            ],
        )

    def evaluation_command(self, run: RunDirectory) -> Command:
        """One process for the study's evaluations: the run's data is embedded once for all of them."""
        arguments = ["evaluate", str(run.path), "--evaluations", *self.study.evaluate]
        if "probe" in self.study.evaluate and self.study.probe_weight_decay is not None:
            arguments += ["--weight-decay", repr(self.study.probe_weight_decay)]
        return Command.of_module("ssl_toolkit.cli", arguments)

    def planned(self) -> list[tuple[int, Cell, int]]:
        return [
            (index, cell, seed) for index, cell in enumerate(self.study.cells()) for seed in self.study.seeds
        ]

    def run_directory(self, index: int, cell: Cell, seed: int) -> RunDirectory:
        return RunDirectory(self.directory.runs / run_name(index, cell, seed))

    def dry_run(self) -> None:
        for index, cell, seed in self.planned():
            run = self.run_directory(index, cell, seed)
            print(f"{cell.name} seed={seed}")
            print("  " + _shown(self.launcher, self.pretrain_command(cell, seed, run)))
            if self.study.evaluate:
                print("  " + _shown(self.evaluation_launcher, self.evaluation_command(run)))

    def run(self, retry_failed: bool = False) -> list[dict]:
        """Every (cell, seed) not in results.jsonl yet (with `retry_failed`, the failed ones too); returns all
        results of the study's cells."""
        self.directory.path.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(self.directory.path)
        holder = lock.acquire()
        if holder is not None:
            raise ConfigError(
                f"study directory {self.directory.path} is in use by a running study ({holder})"
            )
        # Ctrl-C reaches the running run too, which stops with a checkpoint; the study then stops after it.
        ignoring = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignoring else None
        try:
            shutil.copyfile(self.study.source, self.directory.path / "study.yaml")
            self.directory.drop_partial_line()
            return self._run_missing(retry_failed)
        finally:
            if ignoring:
                signal.signal(signal.SIGINT, previous)
            lock.release()

    def _run_missing(self, retry_failed: bool) -> list[dict]:
        recorded = self.directory.read_results()
        done = {(r["cell"], r["seed"]) for r in recorded if r["status"] == "ok" or not retry_failed}
        planned = self.planned()
        for number, (index, cell, seed) in enumerate(planned, start=1):
            if (cell.name, seed) in done:
                continue
            started = time.perf_counter()
            result = self.run_one(index, cell, seed)
            self.directory.append_result(result)
            print(
                f"[{number}/{len(planned)}] {cell.name} seed={seed}: {result['status']} "
                f"in {time.perf_counter() - started:.0f} s"
                + (f" ({result['message']})" if result["message"] else ""),
                flush=True,
            )
        names = {cell.name for cell in self.study.cells()}
        latest = {(r["cell"], r["seed"]): r for r in self.directory.read_results() if r["cell"] in names}
        return list(latest.values())

    def run_one(self, index: int, cell: Cell, seed: int) -> dict:
        """Pretrain (or finish pretraining) the cell's run with `seed`, evaluate it, and describe it.

        How each process ended is read from the outcome file it leaves, never from its output.
        """
        run = self.run_directory(index, cell, seed)
        name = run.path.name
        log = self.directory.log(name)
        result = {"cell": cell.name, "overrides": cell.settings, "seed": seed, "status": "ok",
                  "message": None, "run_dir": str(run.path)}  # fmt: skip
        if not (run.summary.is_file() and run.encoder.is_file()):
            finished = self.launcher.run(
                self.pretrain_command(cell, seed, run),
                outcome=self.directory.outcome(name, "pretrain"),
                log=log,
                memory_limit_mb=self.study.memory_limit_mb,
            )
            outcome = finished.outcome
            if outcome.status is Status.INTERRUPTED:
                raise StudyInterrupted(
                    f"{name} was stopped by a signal ({outcome.message}); rerun the study to continue it "
                    "from its last checkpoint"
                )
            if outcome.status is not Status.OK:
                status = RESULT_STATUS.get(outcome.status, "error")
                return {**result, "status": status, "message": outcome.message,
                        "peak_memory_mb": finished.peak_memory_mb}  # fmt: skip
            result["peak_memory_mb"] = finished.peak_memory_mb
        result.update(_pretraining_metrics(run))
        if self.study.evaluate:
            finished = self.evaluation_launcher.run(
                self.evaluation_command(run), outcome=self.directory.outcome(name, "evaluate"), log=log
            )
            if finished.outcome.status is not Status.OK:
                return {**result, "status": "error", "message": f"evaluation: {finished.outcome.message}"}
            for evaluation in self.study.evaluate:
                result.update(_evaluation_metrics(run, evaluation))
        return result


def _shown(launcher: Launcher, command: Command) -> str:
    """The command line `launcher` runs `command` as (`python -m ...` for the in-process launcher)."""
    argv = (
        launcher.argv(command)
        if isinstance(launcher, Subprocess)
        else ["python", *command.python_arguments()]
    )
    return " ".join(argv)


def run_study(
    study: Study, directory: str | Path, *, launcher: Launcher | None = None, retry_failed: bool = False
) -> list[dict]:
    """Run what `study` still lacks into `directory` (see `StudyRunner`), then write its reports (and add
    them to W&B when the study logs there); returns every result of its cells."""
    runner = StudyRunner(study, directory, launcher)
    results = runner.run(retry_failed=retry_failed)
    written = write_reports(runner.directory.path, study.as_dict(), results)
    for path in written:
        print(f"wrote {path}")
    if study.logs_to_wandb():
        publish_study_reports(study.name, runner.directory.path, results, written)
    failed = sum(result["status"] != "ok" for result in results)
    print(f"{len(results)} runs, {failed} failed; results in {runner.directory.results}")
    return results
