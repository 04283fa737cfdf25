"""Forward+backward time and peak memory of contrastive losses, as ratios to a softmax "floor".

    .venv/bin/python tools/bench_losses.py                       # N = 2048 8192 16384, every loss
    .venv/bin/python tools/bench_losses.py --sizes 1024 2048 --repeats 2 --markdown --json bench.json
    .venv/bin/python tools/bench_losses.py --losses floor ntxent lightly_ntxent --device cuda

Every loss sees N embeddings of dimension `--dim` (float32): `x = randn(N, dim)`, seeded, so all
contenders get the same input. Pair losses get the two halves of `x` (rows i and i + N/2 are a
positive pair); label losses get 100 random classes (`pml_ntxent` gets the pair ids as labels).

`floor` is the least any softmax contrastive loss can do with autograd: one N×N similarity matrix,
diagonal masked, cross-entropy to the positive. Every other loss is reported relative to it.

Method. Each (loss, N) runs in fresh subprocesses (this script with the hidden `--worker` flag, started by
`ssl_toolkit.process.launch.Subprocess`), so peak memory is that case's alone and an out-of-memory failure
only loses that case. A memory worker runs one warm-up forward+backward, then one pass whose peak is
measured; if that succeeds, a time worker runs one warm-up and `--repeats` timed passes
(time.perf_counter; the median is reported). A worker writes its figures to a result file and ends through
the toolkit's entry point, so the outcome file says how it ended: an allocation failure there (recognised
by `ssl_toolkit.process.status.as_failure`) or a SIGKILL nobody here sent (the kernel's OOM killer) is
reported as `OOM`, any other failure as `error:` and its message.

Peak memory ("peak (MiB)") is the rise of the toolkit's one peak-memory measure
(`ssl_toolkit.process.memory`) during the measured pass, over what was held just before it:
- CPU: the process's resident-set high-water mark (VmHWM), restarted at the resident set (VmRSS) just
  before the pass by `reset_peak_memory` (/proc/self/clear_refs), after freed heap was handed back with
  malloc_trim. By default glibc keeps freed blocks of up to 32 MiB resident for reuse, which made the
  floor's peak at N = 2048 read twice its live size; so the memory worker runs with
  MALLOC_MMAP_THRESHOLD_=262144 (every block of 256 KiB or more mapped on its own and unmapped when freed)
  and the resident set follows live tensors. The time worker keeps glibc's default, as a training run
  would. Where the high-water mark cannot be restarted the measured pass is the first one, without
  warm-up, and an upper bound (VmHWM may still hold the import peak).
- CUDA: torch.cuda.max_memory_allocated() over memory_allocated() before the pass.
Bounds: on CPU the worker's address space is capped (RLIMIT_AS, the launcher's `memory_limit_mb`) at this
process's size once torch is imported and its threads started, plus `--memory-limit-gb`, so a greedy loss
fails at allocation with an error instead of pushing the machine into swap or the OOM killer. CUDA
reserves a huge virtual range, so under `--device cuda` no cap is set. In both cases the parent also
watches the worker's resident set and kills it above `--memory-limit-gb` (`OOM`), and kills it after
`--timeout` seconds (`timeout`).
Threads: torch's default (reported in the header).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ssl_toolkit.process.launch import Command, Subprocess
from ssl_toolkit.process.memory import peak_memory_mb, reset_peak_memory
from ssl_toolkit.process.outcome import run_entry_point
from ssl_toolkit.process.status import Status

TEMPERATURE = 0.1
NUM_CLASSES = 100
SEED = 0
MEMORY_ADVICE = "the case needs more than --memory-limit-gb allows: a smaller N, or a higher limit"
MIB = 1 << 20
# For the memory phase only: glibc maps every block of this size or more on its own and unmaps it when
# freed, so the resident set follows live tensors (see the module docstring).
MEMORY_PHASE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 << 10)}
PHASES = ("memory", "time")

CORE_LOSSES = ("floor", "ntxent", "supcon", "lightly_ntxent", "pml_ntxent", "pml_supcon")
# The toolkit's other losses, through its registry:
# name -> (registered loss name, keyword arguments as a function of the dimension).
REGISTRY_LOSSES: dict[str, tuple[str, Callable[[int], dict[str, object]]]] = {
    "triplet_all": ("triplet", lambda dim: {"mining": "all"}),
    "triplet_hard": ("triplet", lambda dim: {"mining": "hard"}),
    "contrastive": ("contrastive", lambda dim: {}),
    "contrastive_hard_16": ("contrastive", lambda dim: {"neg_count": 16}),
    "coles": ("coles", lambda dim: {}),
    "sigmoid": ("sigmoid", lambda dim: {}),
    "arcface": ("arcface", lambda dim: {"num_classes": NUM_CLASSES, "embedding_dim": dim}),
    "cross_entropy": ("cross_entropy", lambda dim: {"num_classes": NUM_CLASSES, "embedding_dim": dim}),
}
ALL_LOSSES = CORE_LOSSES + tuple(REGISTRY_LOSSES)


# --------------------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------------------


def resident_mib(pid: int) -> float | None:
    """A running worker's resident set (VmRSS, MiB), for the parent's watchdog; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def address_space_mib() -> float:
    """This process's address space (VmSize), MiB."""
    return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE") / MIB


def release_free_heap() -> None:
    """Hand freed malloc memory back to the kernel, so that reusing it raises the resident set again."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    total_ram_gib = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        match = re.search(r"^MemTotal:\s+(\d+) kB", f.read(), re.MULTILINE)
        if match:
            total_ram_gib = round(int(match.group(1)) / (1 << 20), 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": total_ram_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------------
# Worker: one (loss, N) per process
# --------------------------------------------------------------------------------------------------


def build_step(name: str, x, labels, dim: int) -> tuple[Callable[[], object], list]:
    """The loss `name` as a zero-argument forward on `x`, and the loss's own parameters."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    half = n // 2

    if name == "floor":
        positive = torch.arange(n, device=x.device).roll(half)

        def floor():
            z = F.normalize(x, dim=1)
            # In place where autograd allows it (mm and a scalar division keep no output for backward),
            # so that the floor holds no N×N tensor that a careful implementation would avoid.
            logits = (z @ z.T).div_(TEMPERATURE)
            logits.fill_diagonal_(float("-inf"))
            return F.cross_entropy(logits, positive)

        return floor, []

    if name == "ntxent":
        from ssl_toolkit.losses import NTXentLoss

        module = NTXentLoss(temperature=TEMPERATURE, gather_distributed=False)
        return lambda: module(x[:half], x[half:]), []

    if name == "supcon":
        from ssl_toolkit.losses import SupConLoss

        module = SupConLoss(temperature=TEMPERATURE, gather_distributed=False)
        return lambda: module(x, labels), []

    if name == "lightly_ntxent":
        from lightly.loss import NTXentLoss as LightlyNTXent

        # memory_bank_size=0: negatives from the batch only, as SimCLR; no gathering across processes.
        module = LightlyNTXent(temperature=TEMPERATURE, memory_bank_size=0, gather_distributed=False)
        return lambda: module(x[:half], x[half:]), []

    if name == "pml_ntxent":
        from pytorch_metric_learning.losses import NTXentLoss as PMLNTXent

        module = PMLNTXent(temperature=TEMPERATURE)
        pair_labels = torch.arange(half, device=x.device).repeat(2)
        return lambda: module(x, pair_labels), []

    if name == "pml_supcon":
        from pytorch_metric_learning.losses import SupConLoss as PMLSupCon

        module = PMLSupCon(temperature=TEMPERATURE)
        return lambda: module(x, labels), []

    if name in REGISTRY_LOSSES:
        from ssl_toolkit.losses import create_loss

        registered, kwargs = REGISTRY_LOSSES[name]
        module = create_loss(registered, **kwargs(dim)).to(x.device)
        return lambda: module(x, labels), list(module.parameters())

    raise ValueError(f"unknown loss {name!r}")


def address_space_cap_mb(limit_gb: float) -> int:
    """A worker's address-space cap: this process's size once torch is imported and its intra-op pool
    started, plus `limit_gb`."""
    # Counted from there because torch's mapped libraries (~3 GiB of address space, mostly never
    # resident) would otherwise eat into the budget. Thread stacks and malloc arenas are reserved lazily,
    # so the pool is started first to count it in the baseline, as a worker's is before its pass.
    import torch

    torch.ones(1 << 16).mul(2).sum()
    return int(address_space_mib() + limit_gb * 1024)


def run_worker(args: argparse.Namespace) -> dict[str, object]:
    import torch

    name, n, phase = args.worker[0], int(args.worker[1]), args.worker[2]
    device = torch.device(args.device)
    result: dict[str, object] = {"loss": name, "n": n, "phase": phase, "threads": torch.get_num_threads()}

    generator = torch.Generator().manual_seed(SEED)
    # Drawn on the CPU so that every device sees the same numbers.
    x = torch.randn(n, args.dim, generator=generator).to(device).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator).to(device)
    step, params = build_step(name, x, labels, args.dim)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def forward_backward() -> float:
        x.grad = None
        for p in params:
            p.grad = None
        sync()
        start = time.perf_counter()
        loss = step()
        loss.backward()
        sync()
        return time.perf_counter() - start

    if phase == "time":
        warmup_s = forward_backward()
        times = [forward_backward() for _ in range(args.repeats)]
        result.update(
            status="ok",
            time_ms=statistics.median(times) * 1e3,
            times_ms=[t * 1e3 for t in times],
            warmup_ms=warmup_s * 1e3,
        )
        return result

    if device.type == "cuda":
        forward_backward()
        torch.cuda.empty_cache()
        before, _ = reset_peak_memory(device)
        forward_backward()
        peak = peak_memory_mb(device)[0] - before
        result.update(status="ok", peak_mib=peak, baseline_mib=before, memory_method="cuda")
        return result

    # The warm-up pass pages in code and starts threads; it is skipped only when the high-water mark
    # cannot be restarted, since then only the very first pass can show this loss's own peak.
    restartable = reset_peak_memory(device)[1]
    if restartable:
        forward_backward()
    x.grad = None
    for p in params:
        p.grad = None
    release_free_heap()
    before, _ = reset_peak_memory(device)
    forward_backward()
    peak = peak_memory_mb(device)[0] - before
    result.update(
        status="ok",
        peak_mib=peak,
        baseline_mib=before,
        memory_method="rss_clear_refs" if restartable else "rss_first_pass_upper_bound",
        malloc_env=" ".join(f"{k}={os.environ.get(k)}" for k in MEMORY_PHASE_ENV),
    )
    return result


def worker_main(args: argparse.Namespace) -> int:
    """One phase of one case: its figures to `--result`; how it ended to the outcome file the parent named
    (an allocation failure as out_of_memory, recognised by the toolkit's `as_failure`)."""

    def body() -> None:
        Path(args.result).write_text(json.dumps(run_worker(args)))

    return run_entry_point(body, memory_advice=MEMORY_ADVICE)


# --------------------------------------------------------------------------------------------------
# Parent: run the workers, print tables
# --------------------------------------------------------------------------------------------------


def run_phase(
    name: str, n: int, phase: str, args: argparse.Namespace, timeout: float, folder: Path
) -> dict[str, object]:
    """Run one worker process, watching its resident set and wall time; its result, or how it failed."""
    stem = folder / f"{name}_{n}_{phase}"
    result_path = stem.with_suffix(".result.json")
    result_path.unlink(missing_ok=True)
    command = Command.of_script(
        os.path.abspath(__file__),
        ["--worker", name, str(n), phase, "--result", str(result_path), "--device", args.device,
         "--dim", str(args.dim), "--repeats", str(args.repeats)],
    )  # fmt: skip
    launched = Subprocess().start(
        command,
        outcome=stem.with_suffix(".outcome.json"),
        log=stem.with_suffix(".log"),
        environment=MEMORY_PHASE_ENV if phase == "memory" else None,
        memory_limit_mb=args.address_space_cap_mb,
    )
    limit_mib = args.memory_limit_gb * 1024
    killed_for = None
    max_rss_mib = 0.0
    while True:
        try:
            finished = launched.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        rss = resident_mib(launched.pid) or 0.0
        max_rss_mib = max(max_rss_mib, rss)
        if killed_for is None and rss > limit_mib:
            killed_for = "OOM"
        elif killed_for is None and time.monotonic() - launched.started > timeout:
            killed_for = "timeout"
        if killed_for is not None:
            launched.process.kill()

    result: dict[str, object] = {"loss": name, "n": n, "phase": phase}
    outcome = finished.outcome
    if killed_for is not None:
        result["status"] = killed_for
        result["note"] = f"{phase} worker killed by the runner (VmRSS seen up to {max_rss_mib:.0f} MiB)"
    elif outcome.status is Status.OK and result_path.is_file():
        result = json.loads(result_path.read_text())
    elif outcome.status is Status.OUT_OF_MEMORY:  # the worker's allocation failure, or the OOM killer
        result.update(status="OOM", note=outcome.message)
    else:
        message = outcome.message or f"exit code {finished.exit_code}, and no result"
        result.update(status=f"error: {message[:160]}", note=message)
    if args.address_space_cap_mb is not None:
        result["address_space_cap_gib"] = round(args.address_space_cap_mb / 1024, 2)
    result["wall_s"] = round(finished.seconds, 2)
    return result


def run_case(name: str, n: int, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Memory, then time, each in a fresh process; the first failure ends the case."""
    # Two processes because the allocator setting that makes the resident set exact costs page faults
    # that a training run with glibc's default would not pay, and would bias the time.
    deadline = time.monotonic() + args.timeout
    result: dict[str, object] = {"loss": name, "n": n, "wall_s": 0.0}
    for phase in PHASES:
        part = run_phase(name, n, phase, args, deadline - time.monotonic(), folder)
        wall_s = result["wall_s"] + part.pop("wall_s")
        part.pop("phase", None)
        result.update(part, wall_s=round(wall_s, 2))
        if part["status"] != "ok":
            result["failed_phase"] = phase
            break
    return result


def ratio(value: object, reference: object) -> str:
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and reference > 0:
        return f"{value / reference:.2f}"
    return "–"


def format_table(rows: list[list[str]], markdown: bool) -> str:
    header, body = rows[0], rows[1:]
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(cells))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(row) for row in body])


def results_table(results: list[dict[str, object]], markdown: bool) -> str:
    by_name = {r["loss"]: r for r in results}
    floor = by_name.get("floor", {})
    lightly = by_name.get("lightly_ntxent", {})
    rows = [["loss", "time (ms)", "peak (MiB)", "time / floor", "mem / floor", "time / lightly"]]
    for r in results:
        if r["status"] != "ok":
            rows.append([r["loss"], str(r["status"]), "–", "–", "–", "–"])
            continue
        vs_lightly = ratio(r["time_ms"], lightly.get("time_ms")) if r["loss"] == "ntxent" else ""
        rows.append(
            [
                r["loss"],
                f"{r['time_ms']:.1f}",
                f"{r['peak_mib']:.1f}",
                ratio(r["time_ms"], floor.get("time_ms")),
                ratio(r["peak_mib"], floor.get("peak_mib")),
                vs_lightly,
            ]
        )
    return format_table(rows, markdown)


def header_lines(args: argparse.Namespace, info: dict[str, object]) -> list[str]:
    m = info["machine"]
    device = args.device
    if info.get("device_name"):
        device += f" ({info['device_name']})"
    cap = args.address_space_cap_mb
    cap = "" if cap is None else f" (address space capped at {cap / 1024:.1f} GiB)"
    return [
        f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        f"torch {info['torch']} ({info['threads']} threads), lightly {info['lightly']}, "
        f"pytorch-metric-learning {info['pml']}",
        f"device {device}, float32, dim {args.dim}, τ = {TEMPERATURE}, {NUM_CLASSES} classes, "
        f"median of {args.repeats} forward+backward after 1 warm-up",
        f"peak memory: {info['memory_method']}; limit {args.memory_limit_gb:g} GiB per case{cap}, "
        f"timeout {args.timeout:g} s",
    ]


def parent_main(args: argparse.Namespace) -> int:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    losses = list(ALL_LOSSES) if args.losses is None else args.losses

    if args.device.startswith("cuda"):
        memory_method = "torch.cuda.max_memory_allocated − memory_allocated before the pass"
    elif reset_peak_memory("cpu")[1]:
        memory_method = "VmHWM − VmRSS around one pass after warm-up (clear_refs), fixed mmap threshold"
    else:
        memory_method = "VmHWM − VmRSS on the first pass (clear_refs unavailable: upper bound)"
    info: dict[str, object] = {
        "machine": machine_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "lightly": package_version("lightly"),
        "pml": package_version("pytorch-metric-learning"),
        "memory_method": memory_method,
    }
    if args.device.startswith("cuda"):
        # Asked in a throwaway process so that the runner holds no CUDA context beside the workers.
        query = f"import torch; print(torch.cuda.get_device_name({args.device!r}))"
        info["device_name"] = subprocess.run(
            [sys.executable, "-c", query], capture_output=True, text=True, check=False
        ).stdout.strip()
    args.address_space_cap_mb = (
        None if args.device.startswith("cuda") else address_space_cap_mb(args.memory_limit_gb)
    )
    print("\n".join(header_lines(args, info)), flush=True)

    all_results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench_losses_") as folder:  # workers' results and outcomes
        for n in args.sizes:
            results = []
            for name in losses:
                print(f"  running {name} at N={n} ...", file=sys.stderr, flush=True)
                result = run_case(name, n, args, Path(folder))
                print(f"    {result['status']} ({result['wall_s']} s)", file=sys.stderr, flush=True)
                results.append(result)
            all_results += results
            print(f"\n{'### ' if args.markdown else ''}N = {n}\n", flush=True)
            print(results_table(results, args.markdown), flush=True)

    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("worker", "result", "json")}
        config.update(losses=losses, temperature=TEMPERATURE, num_classes=NUM_CLASSES, dtype="float32")
        payload = {"info": info, "config": config, "results": all_results}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[2048, 8192, 16384], help="numbers N of embeddings"
    )
    parser.add_argument("--losses", nargs="+", choices=ALL_LOSSES, help="subset to run (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case (median reported)")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0, help="per-case memory cap")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-case wall-clock limit (s)")
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--json", metavar="PATH", help="write all results to PATH")
    parser.add_argument("--worker", nargs=3, metavar=("LOSS", "N", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(n < 2 or n % 2 for n in args.sizes):
        parser.error("every size must be even (pair losses split N into two halves)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return worker_main(args) if args.worker else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
