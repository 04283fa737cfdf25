"""The package's layout rules: no import circle, every module imports on its own, each data kind owns its
folder, the engine knows no image library, modules stay readable in size, one module recognises an
allocation failure."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ssl_toolkit"
KINDS = sorted(path.name for path in (PACKAGE / "kinds").iterdir() if (path / "__init__.py").is_file())
MAX_PACKAGE_LINES = 400
MAX_TOOL_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Every ssl_toolkit module `path` imports, at its top or inside a function (`from package import
    module` counts as the module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def test_the_package_has_no_import_circle():
    finished: set[str] = set()

    def visit(module: str, chain: list[str]) -> None:
        if module in chain:
            cycle = [*chain[chain.index(module) :], module]
            pytest.fail("import circle: " + " → ".join(cycle))
        if module in finished:
            return
        for imported in sorted(GRAPH[module]):
            visit(imported, [*chain, module])
        finished.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def third_party_imports_at_the_top() -> list[str]:
    """The modules outside ssl_toolkit that its modules import when they load (not inside functions)."""
    found = set()
    for path in MODULES.values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module)
    return sorted(name for name in found if name.split(".")[0] not in ("ssl_toolkit", "__future__"))


# The libraries the package's modules load are imported once by the parent; each ssl_toolkit module is
# then imported in a fresh fork, so that one that works only after another of ours was imported first
# fails here.
EACH_MODULE_ALONE = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    separator = sys.argv.index("--")
    for library in sys.argv[1:separator]:
        importlib.import_module(library)
    names, running, failed = sys.argv[separator + 1 :], {}, []
    while names or running:
        while names and len(running) < 2:  # two children at a time, one per core
            name = names.pop(0)
            child = os.fork()
            if child == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            running[child] = name
        child, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(running[child])
        del running[child]
    print("failed:", " ".join(sorted(failed)))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="imports each module in a forked child")
def test_every_module_imports_on_its_own():
    result = subprocess.run(
        [sys.executable, "-c", EACH_MODULE_ALONE, *third_party_imports_at_the_top(), "--", *sorted(MODULES)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "failed:", result.stdout + result.stderr[-3000:]


def _owner(module: str) -> str | None:
    """The data kind whose folder holds `module`, if any."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "kinds" and parts[2] in KINDS else None


# Only these see a kind's package from outside: the registry that registers every kind and the package's
# top level, which offers the image kind's public names; neither reaches past the kind's own __init__.
KIND_PACKAGE_IMPORTERS = ("ssl_toolkit", "ssl_toolkit.kinds")


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_outside_a_kinds_folder_imports_its_insides(kind):
    package = f"ssl_toolkit.kinds.{kind}"
    trespassers = []
    for module, imported in GRAPH.items():
        if _owner(module) == kind:
            continue
        for target in imported:
            inside = target.startswith(package + ".")
            if inside or (target == package and module not in KIND_PACKAGE_IMPORTERS):
                trespassers.append(f"{module} imports {target}")
    assert not trespassers


def test_the_top_level_names_a_kind_offers_come_from_its_package():
    source = (PACKAGE / "__init__.py").read_text()
    assert not [kind for kind in KINDS if f'"ssl_toolkit.kinds.{kind}.' in source]


ENGINE = ("ssl_toolkit.pretrain", "ssl_toolkit.build", "ssl_toolkit.training", "ssl_toolkit.eval")
IMAGE_LIBRARIES = ("torchvision", "timm", "kornia", "PIL")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(ENGINE)))
def test_the_engine_imports_no_image_library(module):
    tree = ast.parse(MODULES[module].read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in names if name.split(".")[0] in IMAGE_LIBRARIES]


SOURCES = [*MODULES.values(), *sorted((REPO / "tools").glob("*.py"))]


def test_no_module_is_past_its_size():
    too_long = [
        f"{path.relative_to(REPO)}: {lines} lines"
        for path in SOURCES
        if (lines := len(path.read_text().splitlines()))
        > (MAX_PACKAGE_LINES if path.is_relative_to(PACKAGE) else MAX_TOOL_LINES)
    ]
    assert not too_long


def test_one_module_recognises_an_allocation_failure():
    phrase = "out of " + "memory"
    holders = [str(path.relative_to(REPO)) for path in SOURCES if phrase in path.read_text()]
    assert holders == ["ssl_toolkit/process/status.py"]
