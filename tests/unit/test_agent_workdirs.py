"""Work dirs: made ahead, recycled only when the stage left nothing behind (and nothing in
them is a symbolic link), else removed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.workdirs import OUTPUT_FILES, SUBDIRS, WorkdirPool, _pristine


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    pool = WorkdirPool(tmp_path / "work", 2)
    path = pool._make()
    assert sorted(os.listdir(path / ".outrider")) == sorted(SUBDIRS + OUTPUT_FILES)
    return path


def test_a_fresh_work_dir_is_pristine(fresh: Path) -> None:
    assert _pristine(fresh) and _pristine(fresh, output_empty=True)


def _write(rel: str) -> Callable[[Path], None]:
    return lambda p: (p / rel).write_text("x")


def _link(rel: str, to_dir: bool = True) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        target = p.parent / f"elsewhere-{rel.replace('/', '-')}"
        if to_dir:
            target.mkdir()
        else:
            target.write_text("")
        victim = p / rel
        if victim.is_dir():
            victim.rmdir()
        else:
            victim.unlink()
        victim.symlink_to(target)

    return make


@pytest.mark.parametrize(
    "change",
    [
        _write("left-behind"),
        _write(".outrider/outputs/o"),
        _write(".outrider/inputs/i"),
        _write(".outrider/checkpoint/c"),
        _write(".outrider/logpos"),
        _link(".outrider/outputs"),  # empty, but elsewhere: the next stage's outputs would go there
        _link(".outrider/inputs"),
        _link(".outrider/checkpoint"),
        _link(".outrider/stderr", to_dir=False),
    ],
)
def test_anything_left_behind_or_linked_keeps_it_from_being_recycled(fresh: Path, change: Callable[[Path], None]) -> None:
    change(fresh)
    assert not _pristine(fresh) and not _pristine(fresh, output_empty=True)


def test_output_is_looked_at_unless_the_caller_saw_it_empty(fresh: Path) -> None:
    (fresh / ".outrider" / "stdout").write_text("printed")
    assert not _pristine(fresh)


def test_a_linked_outrider_dir_is_not_recycled(fresh: Path, tmp_path: Path) -> None:
    real = fresh / ".outrider"
    moved = tmp_path / "moved"
    real.rename(moved)
    real.symlink_to(moved)
    assert not _pristine(fresh)
