"""A short run of tools/fault_injection.py: runs killed with SIGKILL and resumed end bit-identical."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from pretraining_runs import REFERENCE_STEPS

TOOL = Path(__file__).resolve().parent.parent / "tools" / "fault_injection.py"


def _tool():
    if "fault_injection" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fault_injection", TOOL)
        module = importlib.util.module_from_spec(spec)
        sys.modules["fault_injection"] = module  # its dataclasses look their module up while being made
        spec.loader.exec_module(module)
    return sys.modules["fault_injection"]


def test_upcoming_saves_end_with_the_final_one():
    tool = _tool()
    assert tool.upcoming_saves(0, 8, 3) == [3, 6, 8]
    assert tool.upcoming_saves(6, 8, 3) == [8]
    assert tool.upcoming_saves(8, 8, 3) == [8]  # a finished run resumed saves its last step again
    assert tool.upcoming_saves(0, 8, 4) == [4, 8]


@pytest.mark.slow
def test_killed_and_resumed_runs_match_the_uninterrupted_ones_bit_for_bit(
    tmp_path, capsys, one_process_reference, two_process_reference
):
    # 4 kills: 2 for the single process and 2 for the 2-process launch, one of each pair during a save, the
    # other at a random moment; the uninterrupted runs are the session's references, which the tool checks
    # before it reuses them.
    references = tmp_path / "references"
    references.mkdir()
    (references / "1").symlink_to(one_process_reference.path)
    (references / "2").symlink_to(two_process_reference.path)
    arguments = [
        "--kills",
        "4",
        "--processes",
        "1",
        "2",
        "--steps",
        str(REFERENCE_STEPS),
        "--checkpoint-every",
        "3",
    ]
    code = _tool().main(
        [*arguments, "--seed", "1", "--output-dir", str(tmp_path), "--reference-dir", str(references)]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert output.count(f"reference run of {REFERENCE_STEPS} steps reused from") == 2, output
    summaries = [line for line in output.splitlines() if "kills landed" in line]
    assert len(summaries) == 2, output
    assert all(line.endswith(": IDENTICAL") for line in summaries), output
    assert "1 process: kills landed 2/2," in output
    assert "2 processes: kills landed 2/2," in output
    assert all(f"steps compared {REFERENCE_STEPS}/{REFERENCE_STEPS}" in line for line in summaries), output
