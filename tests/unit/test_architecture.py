"""The boundaries of docs/architecture.md, held against the code.

* the matcher imports neither grpc, sqlite3, protobuf nor yaml;
* the scheduler's core (``scheduler/core``) imports no ``outrider.v1``, no grpc, no SQL driver;
* ``scheduler/`` and ``agent/`` never import each other;
* the shared package and SDK (``outrider/``) never import the scheduler or the agent;
* the scheduler never imports PyYAML (pipelines arrive in their wire form);
* no hand-written module is over 600 lines, and no class over 400.

Imports are checked twice: every ``import`` statement in the source, including those
inside functions (what a lazy import would hide), and what importing the package
really loads, in a fresh interpreter (what a chain of imports would hide).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def sources(package: str) -> Iterator[Path]:
    for path in sorted((ROOT / package).rglob("*.py")):
        if "v1" in path.relative_to(ROOT).parts:  # generated stubs
            continue
        yield path


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            yield node.lineno, base
            for alias in node.names:  # `from scheduler import matcher` imports scheduler.matcher
                yield node.lineno, f"{base}.{alias.name}"


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sources(package):
        for line, name in imported_names(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    return bad


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("scheduler/matcher", ("grpc", "sqlite3", "google.protobuf", "outrider.v1", "yaml", "scheduler.api",
                               "scheduler.store")),
        ("scheduler/core", ("grpc", "sqlite3", "psycopg", "google.protobuf", "outrider.v1", "yaml",
                            "scheduler.api", "scheduler.store.sqlite")),
        ("scheduler", ("agent", "yaml", "outrider.pipeline", "outrider.client", "outrider.cli")),
        ("agent", ("scheduler",)),
        ("outrider", ("scheduler", "agent")),
    ],
)
def test_no_forbidden_import_statement(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(package, forbidden) == []


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (["scheduler.matcher"], ["grpc", "sqlite3", "google.protobuf", "yaml"]),
        (["scheduler.core.engine", "scheduler.core.planner", "scheduler.core.dispatch"],
         ["outrider.v1", "grpc", "sqlite3", "google.protobuf", "yaml"]),
        (["scheduler.server", "scheduler.main"], ["yaml", "agent"]),
    ],
)
def test_importing_loads_nothing_forbidden(modules: list[str], forbidden: list[str]) -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(f for f in {forbidden!r} if any(n == f or n.startswith(f + '.') for n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {modules} loads {out.stdout.strip()}"


def test_modules_and_classes_stay_small() -> None:
    too_big = []
    for package in ("outrider", "scheduler", "agent"):
        for path in sources(package):
            text = path.read_text()
            lines = text.count("\n")
            if lines > MAX_MODULE_LINES:
                too_big.append(f"{path.relative_to(ROOT)}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > MAX_CLASS_LINES:
                        too_big.append(f"{path.relative_to(ROOT)}: class {node.name}: {size} lines")
    assert too_big == []
