"""The README's "Use the pieces in your own training loop" blocks run as written."""

from __future__ import annotations

import re
import shutil

import pytest
from pretraining_runs import REPO

SECTION = "## Use the pieces in your own training loop"


def readme_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    start = readme.index(f"\n{SECTION}\n")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", readme[start:end], flags=re.DOTALL)


def test_the_own_loop_section_runs_block_by_block(tiny_run, tmp_path, monkeypatch, capsys):
    blocks = readme_blocks()
    assert len(blocks) >= 4
    # The blocks read runs/quickstart as `make demo` leaves it: a finished run stands in for it here.
    shutil.copytree(tiny_run, tmp_path / "runs" / "quickstart")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"README block {number}", "exec"), namespace)
        except Exception as error:  # name the block that failed
            pytest.fail(f"README block {number} raised {type(error).__name__}: {error}\n{block}")
    assert namespace["loss"].ndim == 0 and namespace["supervised"] != namespace["self_supervised"]
    assert namespace["h"].shape == (8, namespace["trained"].feature_dim)
    assert namespace["report"]["top1"] > 0.5  # digits, even after the 2 steps of the stand-in run
    assert "linear probe top-1" in capsys.readouterr().out
