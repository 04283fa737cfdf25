"""Running a study: each (cell, seed) a fresh pretraining process, then its evaluations; one line each in
`DIR/results.jsonl`, appended as it finishes; reports at the end.

A study resumes: the (cell, seed) pairs already in results.jsonl are not run again, and every run is started
with `train.resume=auto`, so one killed mid-way continues from its last checkpoint. A run that fails is
recorded with its status (`out_of_memory`, `diverged`, `error`) and never stops the study.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.run_dir import RunDirectory, json_text
from ssl_toolkit.study.report import read_results
from ssl_toolkit.study.spec import Cell, Study, run_name
from ssl_toolkit.training.run_claim import RunLock
from ssl_toolkit.training.stop_signals import EXIT_INTERRUPTED, sigterm_when_parent_dies

EXIT_DIVERGED = 3
EXIT_OUT_OF_MEMORY = 5
MESSAGE_CHARACTERS = 400


class StudyDirectory:
    """The files of a study in `path`: results.jsonl, runs/, logs/ and the reports."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results = self.path / "results.jsonl"
        self.runs = self.path / "runs"
        self.logs = self.path / "logs"

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


def _launch(command: list[str], log: Path, memory_limit_mb: int | None) -> tuple[int, float]:
    """Run `command` with its output appended to `log`; its exit code and peak resident memory (MiB)."""

    def prepare_child() -> None:
        sigterm_when_parent_dies()  # the study's death stops the run, with a checkpoint
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the study ignores Ctrl-C while a run handles it
        if memory_limit_mb is not None:
            limit = memory_limit_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=prepare_child)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024  # KiB on Linux, of the process and its waited children


def _last_error(log: Path, since: int) -> str | None:
    """The run's own one-line error, or the last line it printed, from byte `since` of its log."""
    with log.open("rb") as handle:
        handle.seek(since)
        lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else None)
    return None if line is None else line[:MESSAGE_CHARACTERS]


def classify(code: int, message: str | None) -> str:
    """A failed run's status from its exit code and its error line.

    Under `accelerate launch` with several processes the launcher's own code hides the run's, so the
    error line decides too; a run killed by SIGKILL that the study did not send is the kernel's OOM killer.
    """
    text = (message or "").lower()
    if (
        code == EXIT_OUT_OF_MEMORY
        or code in (-signal.SIGKILL, 128 + signal.SIGKILL)
        or "out of memory" in text
    ):
        return "out_of_memory"
    if code == EXIT_DIVERGED or "nan or infinite" in text:
        return "diverged"
    return "error"


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


class StudyInterrupted(RuntimeError):
    """A run stopped for a signal (the study's, or its own): rerun the study to continue."""


class StudyRunner:
    """Runs the cells × seeds of `study` into `directory` (see the module docstring)."""

    def __init__(self, study: Study, directory: str | Path, python: str = sys.executable):
        self.study = study
        self.directory = StudyDirectory(directory)
        self.python = python

    def pretrain_command(self, cell: Cell, seed: int, name: str) -> list[str]:
        launcher = [self.python, "-m", "ssl_toolkit.pretrain"]
        if self.study.accelerate_config is not None:
            launcher = [self.python, "-m", "accelerate.commands.launch", "--config_file",
                        str(self.study.accelerate_config), "-m", "ssl_toolkit.pretrain"]  # fmt: skip
        return [
            *launcher,
            str(self.study.recipe),
            *self.study.overrides,
            *cell.arguments(),
            f"seed={seed}",
            f"run.output_dir={self.directory.runs}",
            f"run.name={name}",
            f"log.group={self.study.name}",  # one W&B group for the study's runs (when W&B is on)
            "train.resume=auto",  # a fresh run the first time, the rest of a killed one afterwards
        ]

    def evaluation_command(self, run: RunDirectory) -> list[str]:
        """One process for the study's evaluations: the run's data is embedded once for all of them."""
        command = [self.python, "-m", "ssl_toolkit.cli", "evaluate", str(run.path), "--evaluations"]
        command += self.study.evaluate
        if "probe" in self.study.evaluate and self.study.probe_weight_decay is not None:
            command += ["--weight-decay", repr(self.study.probe_weight_decay)]
        return command

    def planned(self) -> list[tuple[int, Cell, int]]:
        return [
            (index, cell, seed) for index, cell in enumerate(self.study.cells()) for seed in self.study.seeds
        ]

    def dry_run(self) -> None:
        for index, cell, seed in self.planned():
            name = run_name(index, cell, seed)
            print(f"{cell.name} seed={seed}")
            print("  " + " ".join(self.pretrain_command(cell, seed, name)))
            if self.study.evaluate:
                print("  " + " ".join(self.evaluation_command(RunDirectory(self.directory.runs / name))))

    def run(self, retry_failed: bool = False) -> list[dict]:
        """Every (cell, seed) not in results.jsonl yet (with `retry_failed`, the failed ones too); returns all
        results of the study's cells."""
        self.directory.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(RunDirectory(self.directory.path))
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
        """Pretrain (or finish pretraining) the cell's run with `seed`, evaluate it, and describe it."""
        name = run_name(index, cell, seed)
        run = RunDirectory(self.directory.runs / name)
        log = self.directory.logs / f"{name}.log"
        result = {"cell": cell.name, "overrides": cell.settings, "seed": seed, "status": "ok",
                  "message": None, "run_dir": str(run.path)}  # fmt: skip
        if not (run.summary.is_file() and run.encoder.is_file()):
            since = log.stat().st_size if log.is_file() else 0
            code, peak_mb = _launch(self.pretrain_command(cell, seed, name), log, self.study.memory_limit_mb)
            if code == EXIT_INTERRUPTED:
                raise StudyInterrupted(
                    f"{name} stopped for a signal with a checkpoint; rerun the study to continue"
                )
            if code != 0:
                message = _last_error(log, since)
                return {
                    **result,
                    "status": classify(code, message),
                    "message": message,
                    "peak_memory_mb": peak_mb,
                }
            result["peak_memory_mb"] = peak_mb
        result.update(_pretraining_metrics(run))
        if self.study.evaluate:
            since = log.stat().st_size
            code, _ = _launch(self.evaluation_command(run), log, None)
            if code != 0:
                return {**result, "status": "error", "message": f"evaluation: {_last_error(log, since)}"}
            for evaluation in self.study.evaluate:
                result.update(_evaluation_metrics(run, evaluation))
        return result
