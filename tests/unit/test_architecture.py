"""The boundaries of docs/architecture.md, held against the code.

* the matcher imports neither grpc, sqlite3, protobuf nor yaml;
* the scheduler's core (``scheduler/core``) imports no ``outrider.v1``, no grpc, no SQL driver, and
  neither store backend (``scheduler/store/sqlite.py``, ``scheduler/store/postgres.py``);
* a scheduler on SQLite never loads psycopg (the backend is imported when chosen);
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
                            "scheduler.api", "scheduler.store.sqlite", "scheduler.store.postgres",
                            "scheduler.store.select")),
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
        (["scheduler.matcher"], ["grpc", "sqlite3", "psycopg", "google.protobuf", "yaml"]),
        (["scheduler.core.engine", "scheduler.core.planner", "scheduler.core.dispatch"],
         ["outrider.v1", "grpc", "sqlite3", "psycopg", "google.protobuf", "yaml"]),
        (["scheduler.server", "scheduler.main"], ["yaml", "agent", "psycopg", "scheduler.store.postgres"]),
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


def calls(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, receiver text, method) of every ``x.method(...)`` call in a file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node.lineno, ast.unparse(node.func.value), node.func.attr


def test_events_are_recorded_only_by_the_state_machine() -> None:
    """"Events are emitted there and only there": no other core module records one."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {recv}.{meth}(...)"
        for path in sources("scheduler")
        if path.name != "lifecycle.py" and "store" not in path.parts
        for line, recv, meth in calls(path)
        if meth in ("event", "events") and recv.endswith("changes")
    ]
    assert found == []


def test_the_store_is_written_only_through_the_journal() -> None:
    """Every write goes through the core's transaction object: only core/txn.py commits to a store,
    and no module outside the store (scheduler/store: sqlite.py, postgres.py, rows.py) builds SQL."""
    commits = [
        f"{path.relative_to(ROOT)}:{line}: {recv}.{meth}(...)"
        for path in sources("scheduler")
        if path.relative_to(ROOT).as_posix() != "scheduler/core/txn.py" and "store" not in path.parts
        for line, recv, meth in calls(path)
        if meth in ("commit", "barrier") and recv.split(".")[-1] in ("store", "_store")
    ]
    assert commits == []
    sql = [
        f"{path.relative_to(ROOT)}"
        for path in sources("scheduler")
        if "store" not in path.parts and any(w in path.read_text() for w in ("INSERT INTO", "UPDATE tasks", "SELECT "))
    ]
    assert sql == []
