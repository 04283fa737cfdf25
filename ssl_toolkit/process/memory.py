"""Peak memory, measured one way everywhere (pretraining's summary, the benchmarks, the GPU check).

On CUDA it is the most memory PyTorch's tensors held on the device (`cuda_allocated`); elsewhere the
process's resident-set high-water mark (`cpu_max_rss`, VmHWM; DataLoader workers not included). To measure
a stretch of work alone, `reset_peak_memory` first: it restarts the high-water mark where it can (CUDA's
statistics; Linux's `/proc/self/clear_refs`) and returns what is held then, which the peak is measured
above. A launcher measures a child process from outside with the same quantity (`wait4`'s ru_maxrss).
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

MIB = 2**20


def _status_mib(field: str) -> float | None:
    """A `/proc/self/status` field (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _is_cuda(device) -> bool:
    return getattr(device, "type", str(device).split(":")[0]) == "cuda"


def peak_memory_mb(device="cpu") -> tuple[float, str]:
    """The high-water mark (MiB) on `device` since the process started or the last reset, and its kind
    (`cuda_allocated` or `cpu_max_rss`)."""
    if _is_cuda(device):
        import torch

        return torch.cuda.max_memory_allocated(device) / MIB, "cuda_allocated"
    high_water = _status_mib("VmHWM")
    if high_water is None:  # ru_maxrss is in KiB on Linux, in bytes on macOS; it cannot be reset
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        high_water = max_rss / (MIB if sys.platform == "darwin" else 1024)
    return high_water, "cpu_max_rss"


def reset_peak_memory(device="cpu") -> tuple[float, bool]:
    """Restart the high-water mark on `device`; returns what is held now (MiB) and whether the reset took
    (without it, a CPU peak still holds everything since the process started)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MIB, True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to VmRSS (Linux ≥ 4.0)
        reset = True
    except OSError:
        reset = False
    current = _status_mib("VmRSS")
    if current is None:
        current = peak_memory_mb(device)[0]
    return current, reset and (_status_mib("VmHWM") or 0) <= current + 1


def child_peak_memory_mb(rusage) -> float:
    """A waited child's high-water mark (MiB) from its `resource.struct_rusage` (its own waited children
    included)."""
    return rusage.ru_maxrss / (MIB if sys.platform == "darwin" else 1024)


MEMORY_LIMIT_VARIABLE = "SSL_TOOLKIT_MEMORY_LIMIT_MB"


def limit_memory_from_environment() -> int | None:
    """Cap this process's address space at what it maps now plus `$SSL_TOOLKIT_MEMORY_LIMIT_MB` MiB, so
    that an allocation past it fails at once (an out-of-memory error, as a GPU's would) instead of swapping;
    returns the cap in MiB, or None without the variable.

    Called once the command's libraries are imported: PyTorch alone maps gigabytes of address space (3.8 GB
    with CUDA's libraries), so a limit counted from zero would stop the import itself, not the run.
    """
    value = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if not value:
        return None
    mapped = _status_mib("VmSize")
    if mapped is None:  # not Linux: nothing to count from
        return None
    cap_mib = int(mapped + float(value))
    resource.setrlimit(resource.RLIMIT_AS, (cap_mib << 20, cap_mib << 20))
    return cap_mib
