"""Evaluation commands run one after another in one 2-process launch, for every test that checks a command
under `accelerate launch`: the processes start and join their group once instead of once per command.

Launched as `accelerate launch --multi_gpu --num_processes 2 tests/two_process_commands.py PLAN OUT_DIR`,
PLAN a JSON file mapping a name to `ssl-toolkit` arguments; each process writes, per command,
OUT_DIR/NAME.rank<R>.json: its exit code and what it printed on stdout and stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path


def main(plan: Path, out_dir: Path) -> None:
    from ssl_toolkit.cli import main as cli_main
    from ssl_toolkit.process.launch import reset_accelerate

    rank = os.environ["RANK"]
    for name, arguments in json.loads(plan.read_text()).items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli_main(arguments)
        record = {"exit_code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
        (out_dir / f"{name}.rank{rank}.json").write_text(json.dumps(record))
        reset_accelerate()  # the next command builds its own Accelerator; the process group stays
    import torch.distributed

    # Leave together: a process exiting while gloo still talks to the other aborts ("terminate called").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
