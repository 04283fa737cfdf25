"""Every check of an evaluation command under `accelerate launch` with two processes, run in one launch.

`evaluate_on_two_processes` prepares what the checks evaluate (a copy of the tests' tiny run; a run on a
small image folder, one of whose test images was since removed and another corrupted), runs every command
in one 2-process launch of `two_process_commands.py`, and returns where each command's results are.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from image_folders import corrupt_file, write_folder
from pretraining_runs import ONE_THREAD, REPO, pretrain_tiny

from ssl_toolkit.process.launch import AccelerateLaunch, Command
from ssl_toolkit.run_dir import RunDirectory

WORKER = REPO / "tests" / "two_process_commands.py"


@dataclass(frozen=True)
class TwoProcessEvaluations:
    tiny: RunDirectory  # knn, the SGD probe and fine-tuning ran on it
    folder: RunDirectory  # knn ran on it, with data.root=images
    images: Path
    output: Path

    @classmethod
    def of(cls, base: Path) -> TwoProcessEvaluations:
        """What `evaluate_on_two_processes(..., base)` made."""
        return cls(
            RunDirectory(base / "tiny"),
            RunDirectory(base / "runs" / "folder"),
            base / "images",
            base / "output",
        )

    def printed(self, command: str) -> list[dict]:
        """Per process, rank 0 first: the command's exit code and what it printed."""
        return [json.loads((self.output / f"{command}.rank{rank}.json").read_text()) for rank in (0, 1)]


def evaluate_on_two_processes(finished_tiny_run: Path, base: Path) -> TwoProcessEvaluations:
    tiny = shutil.copytree(finished_tiny_run, base / "tiny")
    images = write_folder(base / "images")
    folder = pretrain_tiny(base / "runs", "folder", "data.name=imagefolder", f"data.root={images}")
    (images / "test" / "c" / "img_04.png").unlink()  # 15 test images: the processes' shares need padding
    corrupt_file(images / "test" / "b" / "img_02.png")
    plan = {
        "knn": ["knn", str(tiny), "--k", "20"],
        "sgd_probe": ["probe", str(tiny), "--protocol", "sgd", "--epochs", "1"],
        "finetune": ["finetune", str(tiny), "--label-fraction", "0.1", "--epochs", "1"],
        "folder_knn": ["knn", str(folder), f"data.root={images}", "--k", "5"],
    }
    output = base / "output"
    output.mkdir()
    (base / "plan.json").write_text(json.dumps(plan))
    finished = AccelerateLaunch(num_processes=2).run(
        Command.of_script(WORKER, [str(base / "plan.json"), str(output)]),
        log=base / "launch.log",
        environment=ONE_THREAD,
        cwd=base,
    )
    assert finished.exit_code == 0, (base / "launch.log").read_text()[-3000:]
    return TwoProcessEvaluations.of(base)
