"""scheduler.logs: a log chunk that cannot be stored is dropped with a bounded, rate-limited
warning, never an exception into the agent's work stream; a log that cannot be read is a
short INTERNAL error without the server's paths (issue 8, item 5)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from outrider.errors import OutriderError
from scheduler.logs import LogStore


def test_append_and_read_back(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    store.append("r1", "t", 1, "stdout", b"hello\n", 1.5)
    store.append("r1", "t", 1, "stderr", b"oops\n", 2.5)
    assert list(store.read("r1", "t", 1)) == [(1.5, "stdout", b"hello\n"), (2.5, "stderr", b"oops\n")]
    assert store.attempts("r1", "t") == [1]
    assert list(store.read("r1", "t", 2)) == []


def test_a_chunk_that_cannot_be_stored_is_dropped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LogStore(tmp_path / "logs")
    (tmp_path / "logs" / "r1").write_text("not a directory")  # every append under r1 fails
    with caplog.at_level(logging.WARNING, logger="scheduler.logs"):
        for i in range(100):
            store.append("r1", "t", 1, "stdout", b"x", float(i))  # must not raise
        store.append("r2", "t" * 300, 1, "stdout", b"x", 1.0)  # ENAMETOOLONG: must not raise either
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert len(warnings[0].getMessage()) < 1024
    assert store.dropped == 101
    store.append("r3", "t", 1, "stdout", b"fine", 3.0)  # others go on
    assert list(store.read("r3", "t", 1)) == [(3.0, "stdout", b"fine")]


def test_a_log_that_cannot_be_read_is_a_short_internal_error(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    (tmp_path / "logs" / "r1").write_text("not a directory")
    for task in ("t", "t" * 300):
        with pytest.raises(OutriderError) as info:
            list(store.read("r1", task, 1))
        assert info.value.code == "INTERNAL"
        text = str(info.value)
        assert str(tmp_path) not in text and "Error" not in text and len(text) < 300, text
