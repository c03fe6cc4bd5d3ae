"""Leadership and fencing on a real PostgreSQL (scheduler/leader.py, scheduler/store/pglock.py,
the fencing check in scheduler/store/postgres.py; docs/ha.md), and the address lists clients and
agents take (outrider/targets.py).

A write after another scheduler claimed the lead (the epoch moved) is refused whole, and the
writer ends the process (exit 75); one lock holder at a time; a paused leader's lock session is
ended by the server; the epoch grows by one per claim.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outrider.protocol import LEADER_METADATA_KEY
from outrider.targets import Targets, leader_hint, parse_targets
from scheduler.store.base import EXIT_DEPOSED, Deposed
from scheduler.store.pglock import LockSession
from tests.helpers.backends import PostgresBackend
from tests.unit.test_store import artifact_batch, with_store


def session(pg: PostgresBackend, timeout_s: float = 5.0) -> LockSession:
    return LockSession(pg.uri, pg.server.password, timeout_s)


def test_the_epoch_grows_by_one_per_claim_and_names_the_holder(pg_backend: PostgresBackend) -> None:
    pg_backend.open().close()  # migrated
    a, b = session(pg_backend), session(pg_backend)
    try:
        assert a.leader() is None
        assert a.try_acquire() is True
        assert b.try_acquire() is False  # one holder at a time
        assert a.claim("a:7443", 11, "host-a", 1.0) == 1
        a.close()  # the session ends: the lock is free (once the server ended that backend)
        deadline = time.monotonic() + 10
        while not b.try_acquire():
            assert time.monotonic() < deadline, "the lock outlived its session"
            time.sleep(0.02)
        assert b.claim("b:7443", 22, "host-b", 2.0) == 2
        row = b.leader()
        assert row is not None
        assert (row["epoch"], row["address"], row["pid"], row["host"]) == (2, "b:7443", 22, "host-b")
    finally:
        a.close()
        b.close()


def test_a_write_after_the_epoch_moved_is_refused_whole(pg_backend: PostgresBackend) -> None:
    store = pg_backend.open()
    other = session(pg_backend)
    try:
        store.fence = other.claim("a:1", 1, "a", 1.0)
        store._write(artifact_batch(1).records)  # our epoch: committed
        other.claim("b:1", 2, "b", 2.0)  # another took over
        with pytest.raises(Deposed, match="epoch is 2, this scheduler led at epoch 1"):
            store._write([*artifact_batch(2).records, *artifact_batch(3).records])
        with pytest.raises(Deposed):
            store._write_isolated([artifact_batch(4).records])
        assert store._conn.info.transaction_status.name == "IDLE"  # rolled back, usable
    finally:
        other.close()
        store.close()
    assert pg_backend.read("SELECT count(*) FROM artifacts") == [(1,)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_fenced_commit_ends_the_process_with_exit_75(
    pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scheduler.store.base as base

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(base.os, "_exit", fake_exit)
    other = session(pg_backend)

    async def body(store: Any) -> None:
        store.fence = other.claim("a:1", 1, "a", 1.0)
        await store.commit(artifact_batch(1))
        other.claim("b:1", 2, "b", 2.0)
        store.commit(artifact_batch(2))
        deadline = time.monotonic() + 10
        while not exits and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert exits == [EXIT_DEPOSED]

    try:
        with_store(pg_backend, body)
    finally:
        other.close()
    assert pg_backend.read("SELECT count(*) FROM artifacts") == [(1,)]


def test_a_silent_lock_session_is_ended_by_the_server(pg_backend: PostgresBackend) -> None:
    """A leader that stops pinging (paused) loses the lock after the timeout: another gets it."""
    pg_backend.open().close()
    a, b = session(pg_backend, timeout_s=1.0), session(pg_backend)
    try:
        assert a.try_acquire()
        deadline = time.monotonic() + 15
        while not b.try_acquire():
            assert time.monotonic() < deadline, "the silent session kept the lock"
            time.sleep(0.1)
        with pytest.raises(psycopg.OperationalError):
            a.ping()  # its session is gone
    finally:
        a.close()
        b.close()


def test_targets_parse_follow_the_hint_and_rotate() -> None:
    t = Targets("a:1, b:2,c:3")
    assert t.addresses == ["a:1", "b:2", "c:3"] and t.current == "a:1" and t.several
    assert t.fail() == "b:2"
    assert t.fail("c:3") == "c:3"  # the leader a standby named
    assert t.fail("d:4") == "d:4" and t.addresses[-1] == "d:4"  # one not in the list is added
    assert t.fail() == "a:1"  # and the rotation wraps
    assert not Targets("x:9").several and Targets("x:9").fail() == "x:9"
    # One that stopped answering is passed over, even when a standby still names it, until ok().
    t = Targets("a:1,b:2,c:3")
    assert t.fail(silent=True) == "b:2" and t.avoid == "a:1"
    assert t.fail("a:1") == "c:3"  # the hint names the silent one: the next instead
    assert t.fail() == "b:2"  # the rotation skips it too
    t.ok()
    assert t.fail("a:1") == "a:1"
    two = Targets("a:1,b:2")
    assert two.fail(silent=True) == "b:2"
    assert two.fail("a:1") == "b:2"  # two addresses: stay, and ask again after the backoff
    for bad, why in (("", "HOST:PORT"), ("a:1,,b:2", "empty address"), ("a:0", "port 0"), ("a", "HOST:PORT")):
        with pytest.raises(ValueError, match=why):
            parse_targets(bad)
    assert leader_hint([(LEADER_METADATA_KEY, "h:7443")]) == "h:7443"
    assert leader_hint([(LEADER_METADATA_KEY, "nonsense")]) == ""
    assert leader_hint(None) == ""


def test_the_ha_settings_are_checked_and_paths_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from outrider.errors import ConfigError
    from scheduler.main import load_config
    from scheduler.server import advertised

    monkeypatch.chdir(tmp_path)
    cfg = load_config(["--artifact-dir", "shared/a", "--log-dir", "shared/l", "--advertise", "s1.example:7443"])
    assert (cfg.artifact_dir, cfg.log_dir) == (str(tmp_path / "shared/a"), str(tmp_path / "shared/l"))
    assert cfg.advertise == "s1.example:7443"
    conf = tmp_path / "etc" / "s.toml"
    conf.parent.mkdir()
    conf.write_text('artifact_dir = "art"\nadvertise = "h:1"\n')
    assert load_config(["--config", str(conf)]).artifact_dir == str(tmp_path / "etc" / "art")
    assert load_config([]).artifact_dir == ""  # STATE_DIR/artifacts, as before
    for bad, why in (("nohost", "advertise: expected HOST:PORT"), ("h:0", "port 0")):
        with pytest.raises(ConfigError, match=why):
            load_config(["--advertise", bad])
    assert advertised("10.0.0.5", 7443) == "10.0.0.5:7443"
    assert advertised("0.0.0.0", 7443) == f"{socket.gethostname()}:7443"


def test_a_standby_refusal_names_the_leader() -> None:
    from scheduler.api.standby import refusal

    assert refusal("a:7443") == "not the leader; the leader is a:7443"
    assert "no leader is known yet" in refusal("")
