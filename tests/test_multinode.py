"""The multi-node path on one machine: two `accelerate launch` commands, machine ranks 0 and 1, one gloo
process each, meeting at 127.0.0.1 as two nodes would at the main node's address."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from pretraining_runs import QUICKSTART, TINY_RUN, load_module, records

from ssl_toolkit.process.launch import free_port

WORKER = Path(__file__).resolve().parent / "losses" / "cross_process_losses.py"
LAUNCH_TIMEOUT_S = 240


def _kill_with_its_workers(pid: int) -> None:
    """SIGKILL a launch that is still running and the workers it started, which torch's launcher puts in
    sessions of their own (out of reach of a signal to the launch's process group)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        launch = psutil.Process(pid)
        for process in [*launch.children(recursive=True), launch]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _launch_two_machines(arguments: list[str], cwd: Path) -> list[tuple[int | None, str, str]]:
    """Run `accelerate launch ... arguments` as machine 0 and machine 1 at once; (returncode, stdout, stderr)
    of each, by machine rank, returncode None for a launch still running at the timeout."""
    port = free_port()
    # One thread per process: the two processes share this machine's cores.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    launches = []
    try:
        for machine_rank in (0, 1):
            command = [
                sys.executable, "-m", "accelerate.commands.launch",
                "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                "--machine_rank", str(machine_rank),
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                "--mixed_precision", "no", "--dynamo_backend", "no",
                *arguments,
            ]  # fmt: skip
            stdout = (cwd / f"machine{machine_rank}.out").open("w+")
            stderr = (cwd / f"machine{machine_rank}.err").open("w+")
            # Output goes to files, not pipes: waiting on one launch while the other fills a pipe would
            # block it inside a collective.
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=cwd, env=environment)
            launches.append((process, stdout, stderr))
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        outcomes = []
        for process, stdout, stderr in launches:
            try:
                returncode = process.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                returncode = None
            stdout.seek(0)
            stderr.seek(0)
            outcomes.append((returncode, stdout.read(), stderr.read()))
        return outcomes
    finally:
        for process, stdout, stderr in launches:
            _kill_with_its_workers(process.pid)
            process.wait()
            stdout.close()
            stderr.close()


def _assert_both_succeeded(outcomes: list[tuple[int | None, str, str]]) -> None:
    for machine_rank, (returncode, stdout, stderr) in enumerate(outcomes):
        ending = (
            f"timed out after {LAUNCH_TIMEOUT_S} s" if returncode is None else f"return code {returncode}"
        )
        assert returncode == 0, f"machine {machine_rank}: {ending}\n{stdout[-2000:]}\n{stderr[-3000:]}"


@pytest.mark.slow
def test_losses_over_two_machines_equal_one_process_on_the_concatenated_batch(tmp_path):
    _assert_both_succeeded(_launch_two_machines([str(WORKER), str(tmp_path)], tmp_path))
    worker = load_module(WORKER)
    launched = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(worker.WORLD)]
    assert [process["placement"] for process in launched] == [
        {"node_rank": 0, "local_rank": 0},
        {"node_rank": 1, "local_rank": 0},
    ]
    for case in worker.CASES:
        single_loss, single_grads = worker.losses_and_view_grads(case)
        # Each process's loss is its share of the global mean: their mean is the global loss.
        mean_loss = sum(process["results"][case][0] for process in launched) / worker.WORLD
        assert mean_loss == pytest.approx(single_loss, rel=1e-9), case
        # The gather sends back to each process the gradient of every process's loss, i.e. the gradient
        # of WORLD × the global loss: divided by WORLD, it is the single process's gradient on those rows.
        for rank, process in enumerate(launched):
            for view, (grad, single_grad) in enumerate(
                zip(process["results"][case][1], single_grads, strict=True)
            ):
                rows = single_grad[rank * worker.BATCH : (rank + 1) * worker.BATCH]
                torch.testing.assert_close(grad / worker.WORLD, rows, msg=f"{case}, rank {rank}, view {view}")


@pytest.mark.slow
def test_tiny_pretraining_over_two_machines(tmp_path):
    arguments = [
        "-m", "ssl_toolkit.pretrain", str(QUICKSTART),
        *TINY_RUN, "train.max_steps=2", f"run.output_dir={tmp_path}", "run.name=two_machines",
    ]  # fmt: skip
    outcomes = _launch_two_machines(arguments, tmp_path)
    _assert_both_succeeded(outcomes)
    assert "global batch 64 (2 processes)" in outcomes[0][1]
    assert [record["step"] for record in records(tmp_path / "two_machines")] == [1, 2]  # main process only
