"""The docs live in the repository: their links resolve inside it, and nothing points outside it."""

from __future__ import annotations

import re

import pytest
from pretraining_runs import REPO

MARKDOWN = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = [*MARKDOWN, *sorted((REPO / "ssl_toolkit").rglob("*.py")), *sorted((REPO / "tools").glob("*.py"))]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(path):
    for target in re.findall(r"\]\(([^)#]+)\)", path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"{path.name} links to {target}"


@pytest.mark.parametrize("path", TEXT, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_to_a_folder_beside_the_repository(path):
    outside = "../" + "shared"  # spelled in two pieces, so this file does not match itself
    assert outside not in path.read_text()


def test_the_design_docs_exist():
    assert {p.name for p in (REPO / "docs").glob("*.md")} >= {
        "design.md",
        "config.md",
        "run-directory.md",
        "losses.md",
    }
