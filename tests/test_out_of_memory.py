"""Running out of memory, on the GPU or on the host, exits with code 5 and one line saying what to lower."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from pretraining_runs import QUICKSTART, TINY_RUN

from ssl_toolkit.pretrain import main
from ssl_toolkit.process.outcome import read_outcome
from ssl_toolkit.process.status import ExitCode, Status
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.objective import ContrastiveObjective

WHAT_TO_LOWER = ("train.batch_size", "train.grad_cache_chunk", "data.image_size", "train.mixed_precision")

ALLOCATION_FAILURES = {
    "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has 1 GiB free."),
    "cpu_allocator": RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
        "to allocate 6400000000 bytes. Error code 12 (Cannot allocate memory)"
    ),
    "not_enough_memory": RuntimeError(
        "[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: you tried to "
        "allocate 6400000000 bytes."
    ),
    "memory_error": MemoryError(),
}


def _pretrain(tmp_path, name: str) -> int:
    return main([str(QUICKSTART), *TINY_RUN, f"run.output_dir={tmp_path}", f"run.name={name}"])


@pytest.mark.parametrize("failure", sorted(ALLOCATION_FAILURES))
def test_an_allocation_failure_in_the_step_exits_5_with_one_line(failure, tmp_path, monkeypatch, capsys):
    def fail(self, *args, **kwargs):
        raise ALLOCATION_FAILURES[failure]

    monkeypatch.setattr(ContrastiveObjective, "forward", fail)
    assert _pretrain(tmp_path, failure) == ExitCode.OUT_OF_MEMORY
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        "error: out of memory on the GPU: " if failure == "cuda" else "error: out of memory on the host: "
    )
    assert all(key in err for key in WHAT_TO_LOWER), err
    assert "Traceback" not in err
    outcome = read_outcome(RunDirectory(tmp_path / failure).outcome)  # what a caller reads instead of stderr
    assert (outcome.status, outcome.step) == (
        Status.OUT_OF_MEMORY,
        0,
    ) and err == f"error: {outcome.message}\n"


def test_another_runtime_error_keeps_its_traceback(tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("a bug in the step")

    monkeypatch.setattr(ContrastiveObjective, "forward", fail)
    with pytest.raises(RuntimeError, match="a bug in the step"):
        _pretrain(tmp_path, "bug")


# Under an address-space limit 2 GiB above what the started interpreter maps, so that a real allocation
# fails at once (a 40000 px view of one digit is 6.4 GB) instead of swapping or waking the OOM killer.
LIMITED_PRETRAINING = textwrap.dedent(
    """
    import resource, sys
    from ssl_toolkit.pretrain import main

    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 2 * 2**30, mapped + 2 * 2**30))
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the mapped size from /proc")
def test_a_real_host_allocation_failure_exits_5(tmp_path):
    command = [
        sys.executable, "-c", LIMITED_PRETRAINING, str(QUICKSTART), *TINY_RUN, "data.image_size=40000",
        f"run.output_dir={tmp_path}", "run.name=limited",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == ExitCode.OUT_OF_MEMORY, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory on the host: "), result.stderr
    assert "DefaultCPUAllocator" in lines[0]
