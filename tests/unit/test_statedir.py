"""Tests for outrider.statedir: one live process per state dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outrider.errors import ConfigError
from outrider.statedir import StateDirLock


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path / "state").acquire("agent")
    try:
        assert (tmp_path / "state" / "lock").read_text().strip().isdigit()
        holder = subprocess.Popen(
            [sys.executable, "-c", "from outrider.statedir import StateDirLock as L; import sys\n"
             f"L({str(tmp_path / 'state')!r}).acquire(); print('got it'); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = holder.communicate("", timeout=30)
        assert holder.returncode != 0 and "got it" not in out
        assert "in use by another process" in err and "pid" in err
    finally:
        first.release()


def test_lock_is_free_again_once_its_holder_is_gone(tmp_path: Path) -> None:
    # A process that took the lock and died (however it died) leaves no stale lock.
    code = f"from outrider.statedir import StateDirLock as L; L({str(tmp_path)!r}).acquire(); import os; os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    with StateDirLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(__import__("os").getpid())


def test_same_process_twice_is_refused(tmp_path: Path) -> None:
    # flock locks belong to open files: a second acquire in one process is a second owner too.
    with StateDirLock(tmp_path), pytest.raises(ConfigError, match="in use"):
        StateDirLock(tmp_path).acquire()
