"""Every GPU figure of the toolkit in one run: `make gpu-check` (≤ 8 minutes on one H100/H200).

    .venv/bin/python tools/gpu_check.py --out gpu_check                      # on a CUDA machine
    .venv/bin/python tools/gpu_check.py --out gpu_check --benchmarks BENCHMARKS.md  # and its GPU section
    .venv/bin/python tools/gpu_check.py --dry-run --out /tmp/gpu_check       # on a CPU, tiny sizes, < 2 min
    .venv/bin/python tools/gpu_check.py --sections losses grad_cache --out gpu_check_rerun
    python3 tools/gpu_check.py --bundle gpu_bundle --out gpu_check   # no internet: gpu_bundle.py made it
    .venv/bin/python tools/gpu_check.py --record gpu_check --benchmarks BENCHMARKS.md  # results run elsewhere

Sections, in this order, each in its own subprocess (so that an out-of-memory or a hang loses that section
alone, its peak memory is its own, and each builds its own Accelerator), each timed and, where a dependency
is missing, skipped with the reason:

- environment: GPU name and memory, torch / CUDA / cuDNN versions, bf16 support, package versions.
- losses: NT-Xent and SupCon forward+backward at 16,384 and 65,536 × 128 float32 embeddings — time and peak
  memory beside the floor (one logits matmul + cross-entropy) and lightly's NTXentLoss.
- augmentation: views/s of the batch pipeline (`BatchViews`, kornia, on the GPU, synchronised) at 32 and
  224 px on batches of 512, beside the per-image pipeline (`PerImageViews`) in DataLoader workers.
- training_step: the SSL step (two GPU-made views per image, encoder, NT-Xent, backward, SGD) beside the
  supervised step (one view per image, backbone + linear classifier, cross-entropy) at the same views per
  step, bf16 autocast, channels-last — ResNet-50 at 224 px and ResNet-18 with the CIFAR stem at 32 px,
  eager and with `torch.compile` of the backbone both steps share.
- grad_cache: ResNet-18 at 224 px, batch 8,192 (16,384 views) with `train.grad_cache_chunk`, beside the
  plain step at that batch and at the chunk's; and the gradient check: the cached step's parameter
  gradients equal the plain step's (float32, stochastic depth on, so the replay of the CUDA generator is
  what makes them equal; a control run without the replay must differ).
- pretraining: the Fashion-MNIST recipe through `accelerate launch` for `--pretrain-epochs` (GPU views,
  bf16, a checkpoint, the encoder file), then `ssl-toolkit probe` on it (the dry run: on digits).

Results: a Markdown table on stdout, `gpu_check.json` (every figure), `gpu_check.md` (the table) and
`gpu_check.log` (every section's output) in `--out`; `--benchmarks FILE` also writes the table into FILE's
GPU section. The exit status is 0 when no section failed, 1 otherwise, 2 for a bad argument.

`--dry-run` runs the same code on the CPU with tiny sizes: CUDA-only figures (peak GPU memory, the CUDA
generator's replay) are skipped with that reason and `torch.compile` uses its `eager` backend (the same
graph capture, no code generation), so that a GPU's first minutes are not spent on a typo.

This file is the command line and the orchestration (the time budget, each section started in its own
process by `ssl_toolkit.process.launch`, the table, `--record`, the bundle); the sizes, the report and the
sections that do not train are in `gpu_check_sections.py`, the training sections in `gpu_check_training.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python3 tools/gpu_check.py` where the toolkit is not installed
    sys.path.insert(0, str(REPO))

from gpu_check_sections import (  # noqa: E402
    DRY_SCALE,
    FASHION_MNIST_FILES,  # noqa: F401 - gpu_bundle.py reads the file list here
    GPU_SCALE,
    SECTIONS,
    Figure,
    Report,
    Scale,
    Skip,
    augmentation,
    environment,
    losses,
)
from gpu_check_training import grad_cache, pretraining, training_step  # noqa: E402

from ssl_toolkit.files import write_json, write_text_atomically  # noqa: E402
from ssl_toolkit.process.launch import Command, Launched, Subprocess  # noqa: E402

SECTION_RUNNER = Path(__file__).resolve()  # what each section's process runs, with --section NAME
BENCHMARKS_BEGIN = "<!-- gpu-check results: begin -->"
BENCHMARKS_END = "<!-- gpu-check results: end -->"
DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
MIN_SECTION_SECONDS = 5  # a section the budget gives less is not started: the check's time is spent
BUDGET_BOUND = "the check's time budget less what the later sections keep"
STOP_GRACE_SECONDS = 15  # a stopped section's process group gets this long after SIGTERM, then SIGKILL

SECTION_FUNCTIONS: dict[str, Callable[[Report, Scale, argparse.Namespace], None]] = {
    "environment": environment,
    "losses": losses,
    "augmentation": augmentation,
    "training_step": training_step,
    "grad_cache": grad_cache,
    "pretraining": pretraining,
}


class BadArgument(Exception):
    """An argument the check cannot run with; the message names it and the fix (exit status 2)."""


class BundleError(BadArgument):
    """A bundle that cannot be installed; the message names the path and the fix."""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for gpu_check.json, gpu_check.md, gpu_check.log")
    parser.add_argument(
        "--record",
        metavar="RESULTS",
        help="run nothing: write the table of a check run elsewhere (its --out folder) into --benchmarks",
    )
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--benchmarks", help="also write the table into this file's GPU section")
    parser.add_argument("--work-dir", help="the pretraining run and section files (default OUT/work)")
    parser.add_argument(
        "--fashion-mnist",
        help=f"Fashion-MNIST's folder (default: the bundle's, else {DEFAULT_FASHION_MNIST})",
    )
    parser.add_argument(
        "--bundle",
        help="a folder made by tools/gpu_bundle.py: its wheels are installed into BUNDLE/site for the "
        "sections, and its fashion-mnist/ is the default data (a machine without internet)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        help="seconds for the whole check (default 480 on a GPU, 600 dry); sections past it are not run",
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=5, help="Fashion-MNIST epochs (117 steps each)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--section-result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.section:
        return run_section(args)
    if args.record:
        return record(Path(args.record), args.benchmarks)
    try:
        check = prepare(args, list(argv if argv is not None else sys.argv[1:]))
    except BadArgument as error:
        return bad_argument(str(error))
    return check.run()


def refuse_bad_arguments(args: argparse.Namespace) -> None:
    """Raise BadArgument for arguments the check cannot run with, before anything is installed or made."""
    if not args.out:
        raise BadArgument("--out FOLDER is needed (or --record RESULTS --benchmarks FILE)")
    out = Path(args.out)
    if (out / "gpu_check.json").exists() and not args.overwrite:
        raise BadArgument(f"{out / 'gpu_check.json'} exists: pass --overwrite or another --out")
    if args.benchmarks and not Path(args.benchmarks).is_file():
        raise BadArgument(f"--benchmarks {args.benchmarks}: no such file")
    if args.benchmarks and BENCHMARKS_BEGIN not in Path(args.benchmarks).read_text():
        raise BadArgument(f"--benchmarks {args.benchmarks}: no '{BENCHMARKS_BEGIN}' line to write after")
    if args.benchmarks and args.dry_run:
        raise BadArgument("--benchmarks records GPU figures; a --dry-run writes only to --out")
    if args.time_budget is not None and not args.time_budget > 0:
        raise BadArgument(f"--time-budget {args.time_budget:g}: must be a number of seconds > 0, e.g. 480")


def prepare(args: argparse.Namespace, command_line: list[str]) -> Check:
    """The check the arguments ask for: the bundle installed, the data folder chosen, a GPU found (unless
    a dry run), the output folders made; BadArgument when one of them cannot be."""
    refuse_bad_arguments(args)
    bundle_site = None
    if args.bundle:
        bundle_site = install_bundle(Path(args.bundle))
        bundled_data = Path(args.bundle) / "fashion-mnist"
        if args.fashion_mnist is None and bundled_data.is_dir():
            args.fashion_mnist = str(bundled_data.resolve())
    args.fashion_mnist = args.fashion_mnist or str(DEFAULT_FASHION_MNIST)
    if not args.dry_run:
        import torch  # the parent's one use of torch: whether there is a GPU to measure

        if not torch.cuda.is_available():
            raise BadArgument("no CUDA device: the check measures GPU figures; on a CPU use --dry-run")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        work = Path(args.work_dir or Path(args.out) / "work")
        work.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadArgument(f"cannot create {error.filename}: {error.strerror}") from None
    args.work_dir = str(work.resolve())
    return Check(args, command_line, bundle_site)


class Check:
    """One run of the check: its sections in order, each in its own process and within the time budget,
    the results written after every section (a kill loses only the running one)."""

    def __init__(self, args: argparse.Namespace, command_line: list[str], bundle_site: str | None):
        self.args, self.command_line = args, command_line
        self.out = Path(args.out)
        self.log = self.out / "gpu_check.log"
        self.scale = DRY_SCALE if args.dry_run else GPU_SCALE
        self.budget = args.time_budget or self.scale.budget
        self.started_at = datetime.now(timezone.utc)
        self.started = time.perf_counter()
        self.sections: list[dict] = []
        self.interrupted = False
        path = (str(REPO), str(REPO / "tools"), bundle_site, os.environ.get("PYTHONPATH"))
        self.environment = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        # The sections are this command again with --section; a section does not install the bundle
        # again, and reads the data folder it is given last.
        self.passed = [*command_line, "--fashion-mnist", args.fashion_mnist]

    def run(self) -> int:
        """Every section, then the table on stdout (and in --benchmarks); the exit status."""
        # SIGTERM (a scheduler's stop) as Ctrl-C: the running section is recorded as interrupted, the
        # rest skipped, and what finished is written.
        previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
        self.log.write_text("")
        with _restored(signal.SIGTERM, previous_handler):
            for index, section in enumerate(self.args.sections):
                result = self.attempt(section, later=self.args.sections[index + 1 :])
                self.sections.append(result)
                self.write_results()
                print(
                    f"[gpu_check] {section}: {result['status']} in {result['seconds']:.1f} s "
                    f"{result['reason']}",
                    flush=True,
                )
        markdown, failed = self.write_results()
        print()
        print(markdown)
        if self.interrupted:
            return 130
        if self.args.benchmarks:
            fill_benchmarks(Path(self.args.benchmarks), markdown)
        return 1 if failed else 0

    def attempt(self, section: str, later: list[str]) -> dict:
        """`section`'s result, timed: run in its own process, or why it was not."""
        started = time.perf_counter()
        seconds_left = self.budget - (started - self.started)
        timeout, why = section_time(section, later, self.scale, seconds_left)
        if self.interrupted:
            result = _unrun(section, "skipped", "the check was interrupted before it")
        elif why == BUDGET_BOUND and timeout < MIN_SECTION_SECONDS:
            reason = f"{self.budget:g} s budget spent before it (--time-budget to widen)"
            result = _unrun(section, "out of time", reason)
        else:
            print(f"[gpu_check] {section} … (at most {round(timeout, 2):g} s)", flush=True)
            try:
                result = self.in_own_process(section, timeout, why)
            except KeyboardInterrupt:
                self.interrupted = True
                result = _unrun(section, "interrupted", "stopped by a signal")
        return {**result, "seconds": time.perf_counter() - started}

    def in_own_process(self, section: str, timeout: float, why: str) -> dict:
        """One section in its own process, its output appended to the log; its result, or why there is
        none. A section stopped part-way (its time, a crash) keeps the figures it had written."""
        work = Path(self.args.work_dir)
        result_file = work / f"section_{section}.json"
        result_file.unlink(missing_ok=True)
        arguments = [*self.passed, "--section", section, "--section-result", str(result_file)]
        with self.log.open("a") as log:
            log.write(f"\n===== {section} =====\n")
        # A session of its own, so that a timeout or a signal stops the section's children (DataLoader
        # workers, accelerate launch's training process) with it.
        launched = Subprocess(python=sys.executable).start(
            Command.of_script(SECTION_RUNNER, [*arguments, "--work-dir", str(work)]),
            log=self.log,
            environment=self.environment,
            cwd=REPO,
            new_session=True,
        )
        try:
            finished = launched.wait(timeout)
            stop = f"its process exited {finished.exit_code} part-way (see gpu_check.log)"
        except subprocess.TimeoutExpired:
            _stop_group(launched)
            stop = f"timed out after {round(timeout, 2):g} s ({why}; see gpu_check.log)"
        except KeyboardInterrupt:
            _stop_group(launched)
            raise
        if not result_file.exists():
            return _unrun(section, "failed", stop)
        result = json.loads(result_file.read_text())
        if result["status"] != "running":
            return result
        kept = f"; its {len(result['figures'])} figures before it kept" if result["figures"] else ""
        return {**result, "status": "failed", "reason": stop + kept}

    def write_results(self) -> tuple[str, list[str]]:
        """gpu_check.json and .md of the sections finished so far; the table and the failed sections."""
        total = time.perf_counter() - self.started
        whole = Report("whole check", dry_run=self.args.dry_run)
        whole.held(
            f"{len(self.sections)} of {len(self.args.sections)} sections",
            f"{total / 60:.1f} min",
            f"≤ {self.budget / 60:g} min",
            total <= self.budget,
        )
        rows = [*table(self.sections), whole.figures[0].row()]
        markdown = "\n".join([self.header(total), "", *rows]) + "\n"
        ended_badly = ("failed", "interrupted", "out of time")
        failed = [s["section"] for s in self.sections if s["status"] in ended_badly]
        summary = {
            "started": self.started_at.isoformat(),
            "dry_run": self.args.dry_run,
            "command": ["tools/gpu_check.py", *self.command_line],
            "time_budget": self.budget,
            "seconds": total,
            "failed": failed,
            "sections": self.sections,
        }
        write_json(self.out / "gpu_check.json", summary)
        write_text_atomically(self.out / "gpu_check.md", markdown)
        return markdown, failed

    def header(self, total: float) -> str:
        """The table's first line: the GPU, when, the command, the time it took."""
        environment = next((s for s in self.sections if s["section"] == "environment"), {"details": {}})
        gpu = environment["details"].get("gpu", {}).get("name", "no GPU (dry run on the CPU)")
        return (
            f"{gpu}; {self.started_at:%Y-%m-%d %H:%M} UTC; "
            f"`tools/gpu_check.py {' '.join(self.command_line)}`; "
            f"{total / 60:.1f} min in all (target ≤ 8 min on one H100/H200)"
        )


def section_time(section: str, later: list[str], scale: Scale, seconds_left: float) -> tuple[float, str]:
    """The seconds `section` may run, and what bounds them: its own timeout, or the check's budget less
    what the `later` sections keep for themselves."""
    own = scale.timeouts[section]
    allowed = seconds_left - sum(scale.reserves[s] for s in later)
    if own <= allowed:
        return own, "the section's limit"
    return max(allowed, 0.0), BUDGET_BOUND


def _stop_group(launched: Launched) -> None:
    """Stop a section's process group (SIGTERM, then SIGKILL after the grace) and collect its end."""
    process = launched.process
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    launched.wait()  # ended now: its log is closed


@contextlib.contextmanager
def _restored(signum: int, handler):
    try:
        yield
    finally:
        signal.signal(signum, handler)


def _unrun(section: str, status: str, reason: str) -> dict:
    return {"section": section, "status": status, "reason": reason, "figures": [], "details": {}}


def run_section(args: argparse.Namespace) -> int:
    """In the section's own process: run it, write its report as JSON."""
    section, scale = args.section, DRY_SCALE if args.dry_run else GPU_SCALE
    report = Report(section, dry_run=args.dry_run, path=Path(args.section_result))
    status, reason = "ok", ""
    try:
        SECTION_FUNCTIONS[section](report, scale, args)
    except Skip as skip:
        status, reason = "skipped", str(skip)
    except Exception as error:
        import traceback

        traceback.print_exc()
        status, reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0][:300]
    report.save(status, reason)
    return 0


def table(sections: list[dict]) -> list[str]:
    lines = ["| section | case | figure | target | verdict |", "|---|---|---|---|---|"]
    for result in sections:
        for figure in result["figures"]:
            lines.append(Figure(**figure).row())
        if result["status"] != "ok":
            lines.append(
                Figure(result["section"], "section", "–", "", f"{result['status']}: {result['reason']}").row()
            )
        lines.append(Figure(result["section"], "section time", f"{result['seconds']:.1f} s").row())
    return lines


def fill_benchmarks(path: Path, markdown: str) -> None:
    """Put `markdown` between the GPU section's markers in `path` (the rest of the file untouched)."""
    text = path.read_text()
    begin, end = text.find(BENCHMARKS_BEGIN), text.find(BENCHMARKS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} has no '{BENCHMARKS_BEGIN}' … '{BENCHMARKS_END}' markers to fill")
    filled = text[: begin + len(BENCHMARKS_BEGIN)] + "\n" + markdown.strip() + "\n" + text[end:]
    write_text_atomically(path, filled)


def install_bundle(bundle: Path) -> str:
    """Install the wheels of `bundle` (tools/gpu_bundle.py's folder) into `bundle/site`, once, with this
    Python's pip and no index; returns the folder to put on the sections' PYTHONPATH."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels:
        raise BundleError(
            f"--bundle {bundle}: no {bundle / 'wheels'}/*.whl; make it with `python tools/gpu_bundle.py "
            f"--out {bundle} --python-version X.Y` where there is internet"
        )
    site = bundle / "site"
    stamp = site / ".installed"
    listed = "\n".join(w.name for w in wheels)
    if stamp.is_file() and stamp.read_text() == listed:
        return str(site.resolve())
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    command += ["--no-compile", "--upgrade", "--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BundleError(
            f"--bundle {bundle}: pip could not install its wheels into {site}: {last} "
            f"(made for this Python, {platform.python_version()}? gpu_bundle.py --python-version)"
        )
    write_text_atomically(stamp, listed)
    return str(site.resolve())


def record(results: Path, benchmarks: str | None) -> int:
    """Fill `benchmarks` with the table of a finished GPU check in `results` (run on another machine)."""
    if not benchmarks:
        return bad_argument("--record needs --benchmarks FILE, the file whose GPU section it fills")
    try:
        summary = json.loads((results / "gpu_check.json").read_text())
        markdown = (results / "gpu_check.md").read_text()
    except (OSError, ValueError) as error:
        return bad_argument(
            f"--record {results}: no readable gpu_check.json and gpu_check.md there ({error})"
        )
    if summary.get("dry_run"):
        return bad_argument(f"--record {results}: a dry run's figures are not recorded")
    try:
        fill_benchmarks(Path(benchmarks), markdown)
    except (OSError, ValueError) as error:
        return bad_argument(f"--benchmarks {benchmarks}: {error}")
    print(f"{benchmarks}: GPU section filled from {results / 'gpu_check.md'}")
    return 0


def bad_argument(message: str) -> int:
    print(f"gpu_check: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
