"""Tests for what is PostgreSQL's own in its store backend (scheduler/store/postgres.py).

What both backends share (group commit, FIFO, refusals, load, events) runs on both in
tests/unit/test_store.py; here: the migrations kept in step with SQLite's, the schema
version and the advisory lock, the crash-only path on a lost connection, the URI rules
(no inline password, a clear error without the password when the server cannot be
reached), and TLS with ``sslmode=verify-full``. Every test runs against a real server
(tests/helpers/pgserver.py), each on a fresh database.
"""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from outrider.errors import ConfigError
from scheduler.store import postgres as pg_store
from scheduler.store import sqlite as sqlite_store
from scheduler.store.base import WriteRefused
from scheduler.store.changes import Changes
from scheduler.store.postgres import MIGRATIONS, PostgresStore, check_uri, describe
from tests.helpers.backends import PostgresBackend
from tests.helpers.pgserver import PgServer
from tests.unit.test_store import artifact_batch, make_run, with_store

ROOT = Path(__file__).resolve().parents[2]


def migration_comments(path: Path) -> list[str]:
    """The first comment line above each element of a module's MIGRATIONS tuple."""
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "MIGRATIONS":
            assert isinstance(node.value, ast.Tuple)
            out = []
            for elt in node.value.elts:
                above = elt.lineno - 2
                while above >= 0 and lines[above].strip().startswith("#") and not lines[above].strip()[2:3].isdigit():
                    above -= 1  # a comment's continuation lines
                out.append(lines[above].strip())
            return out
    raise AssertionError(f"{path}: no MIGRATIONS tuple")


def test_the_migrations_of_both_backends_are_in_step() -> None:
    """Same count, and number N is commented as the same change in both lists."""
    assert len(MIGRATIONS) == len(sqlite_store.MIGRATIONS)
    pg = migration_comments(ROOT / "scheduler/store/postgres.py")
    lite = migration_comments(ROOT / "scheduler/store/sqlite.py")
    assert len(pg) == len(lite) == len(MIGRATIONS)
    for number, (a, b) in enumerate(zip(pg, lite, strict=True), start=1):
        assert a.startswith(f"# {number}: "), a
        assert b.startswith(f"# {number}: "), b
        assert a == b, f"migration {number} means different things: {a!r} vs {b!r}"


def test_a_fresh_database_is_migrated_once_with_its_version(pg_backend: PostgresBackend) -> None:
    store = pg_backend.open()
    store.close()
    tables = {r[0] for r in pg_backend.read("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"runs", "tasks", "attempts", "outputs", "artifacts", "agents", "events", "checkpoints", "audit",
            "revoked_agents", "join_tokens", "schema_version"} <= tables
    assert pg_backend.read("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    indexes = {r[0] for r in pg_backend.read("SELECT indexname FROM pg_indexes WHERE schemaname='public'")}
    assert {"events_by_run", "events_run_level"} <= indexes
    schema = pg_backend.read(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema='public' ORDER BY table_name, column_name"
    )
    pg_backend.open().close()  # reopening changes nothing
    assert pg_backend.read(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema='public' ORDER BY table_name, column_name"
    ) == schema
    assert pg_backend.read("SELECT count(*) FROM schema_version") == [(1,)]


def test_the_connection_is_autocommit_and_commits_synchronously(pg_backend: PostgresBackend) -> None:
    store = pg_backend.open()
    try:
        assert isinstance(store, PostgresStore)
        assert store._conn.autocommit
        assert store._conn.execute("SHOW synchronous_commit").fetchone() == {"synchronous_commit": "on"}
    finally:
        store.close()


def test_two_schedulers_starting_at_once_migrate_the_database_once(pg_backend: PostgresBackend) -> None:
    results: list[object] = []
    go = threading.Barrier(4)

    def open_one() -> None:
        go.wait()
        try:
            pg_backend.open().close()
            results.append("ok")
        except Exception as exc:  # noqa: BLE001: the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["ok"] * 4
    assert pg_backend.read("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]


def test_an_older_database_is_upgraded_from_its_version(pg_backend: PostgresBackend) -> None:
    import psycopg

    with psycopg.connect(pg_backend.uri, password=pg_backend.server.password, autocommit=True) as conn:
        conn.execute(b"CREATE TABLE schema_version (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),"
                     b" version BIGINT NOT NULL)")
        for script in MIGRATIONS[:5]:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement.encode())
        conn.execute(b"INSERT INTO schema_version VALUES (true, 5)")
        conn.execute(b"INSERT INTO artifacts VALUES ('" + b"a" * 64 + b"', 3, 'file', 1.0)")
    pg_backend.open().close()
    assert pg_backend.read("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    assert pg_backend.read("SELECT digest FROM artifacts") == [("a" * 64,)]


def test_a_newer_schema_is_refused_with_a_clear_error(pg_backend: PostgresBackend) -> None:
    pg_backend.open().close()
    pg_backend.read("UPDATE schema_version SET version=99 RETURNING version")
    with pytest.raises(RuntimeError) as exc:
        pg_backend.open()
    msg = str(exc.value)
    assert pg_backend.dbname in msg and "99" in msg and str(len(MIGRATIONS)) in msg
    assert "newer" in msg and "upgrade" in msg
    assert pg_backend.server.password not in msg
    assert pg_backend.read("SELECT version FROM schema_version") == [(99,)]


def test_text_postgresql_cannot_hold_is_refused_by_value(pg_backend: PostgresBackend) -> None:
    """A NUL in a text column (SQLite keeps it, PostgreSQL cannot): that change alone is refused."""

    async def body(store: Any) -> None:
        bad = Changes()
        bad.insert_revoked("edge\x00-1", 1.0, "spiffe://t/admin/a", "")
        refused = store.commit(bad)
        fine = store.commit(artifact_batch(1))
        await asyncio.gather(refused, fine, return_exceptions=True)
        assert isinstance(refused.exception(), WriteRefused)
        assert fine.exception() is None
        await store.commit(artifact_batch(2))

    with_store(pg_backend, body)
    assert pg_backend.read("SELECT count(*) FROM artifacts") == [(2,)]
    assert pg_backend.read("SELECT count(*) FROM revoked_agents") == [(0,)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_lost_connection_ends_the_process(pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server ends the writer's session (as a failover or a restart would): crash-only, exit 70."""
    import scheduler.store.base as base

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)  # ends the writer thread, as os._exit would end the process

    monkeypatch.setattr(base.os, "_exit", fake_exit)

    async def body(store: Any) -> None:
        await store.commit(artifact_batch(1))
        pid = store._conn.info.backend_pid
        assert pg_backend.read("SELECT pg_terminate_backend(?)", (pid,)) == [(True,)]
        store.commit(artifact_batch(2))
        for _ in range(500):
            if exits:
                break
            await asyncio.sleep(0.01)
        assert exits == [70]
        assert store.refused == 0

    with_store(pg_backend, body)
    assert pg_backend.read("SELECT count(*) FROM artifacts") == [(1,)]


def test_a_uri_with_a_password_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as exc:
        check_uri("postgresql://outrider:s3cret@db.example:5432/outrider")
    msg = str(exc.value)
    assert "s3cret" not in msg
    assert "password file" in msg and "PGPASSWORD" in msg
    with pytest.raises(ConfigError, match="password"):
        check_uri("postgresql://db.example/outrider?password=s3cret")
    with pytest.raises(ConfigError, match="not a valid PostgreSQL URI"):
        check_uri("postgresql://db.example:notaport:9/x?=")
    check_uri("postgresql://outrider@db.example:5432/outrider?sslmode=verify-full")


def test_describe_names_where_without_the_password() -> None:
    text = describe("postgresql://outrider@db.example:6543/sched")
    assert text == "host db.example port 6543 database sched user outrider"


def test_an_unreachable_server_is_a_config_error_naming_it(pg_server: PgServer) -> None:
    from tests.helpers.pgserver import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError) as exc:
        PostgresStore(f"postgresql://outrider@127.0.0.1:{port}/sched?connect_timeout=5", password="pw-xyz")
    msg = str(exc.value)
    assert f"host 127.0.0.1 port {port} database sched" in msg
    assert "pw-xyz" not in msg


def test_a_wrong_password_is_a_config_error_without_it(pg_backend: PostgresBackend) -> None:
    with pytest.raises(ConfigError) as exc:
        PostgresStore(pg_backend.uri, password="not-the-password")
    msg = str(exc.value)
    assert "not-the-password" not in msg and pg_backend.dbname in msg
    assert "authentication failed" in msg


def test_tls_with_verify_full(pg_backend: PostgresBackend, tmp_path: Path) -> None:
    """sslmode=verify-full: the server's certificate must chain to sslrootcert and name the host."""
    server = pg_backend.server
    uri = f"postgresql://outrider@localhost:{server.port}/{pg_backend.dbname}"
    store = PostgresStore(f"{uri}?sslmode=verify-full&sslrootcert={server.ca}", password=server.password)
    try:
        assert store._conn.pgconn.ssl_in_use
        assert store._conn.info.parameter_status("server_version")
    finally:
        store.close()
    # Another CA's root: refused, before the password is ever sent.
    from tests.helpers.pgserver import make_tls

    other = tmp_path / "other"
    other.mkdir()
    make_tls(other)
    with pytest.raises(ConfigError, match="certificate verify failed"):
        PostgresStore(f"{uri}?sslmode=verify-full&sslrootcert={other / 'ca.crt'}", password=server.password)
    # The right CA, but a name the certificate does not carry.
    with pytest.raises(ConfigError, match="does not match host name"):
        PostgresStore(
            f"postgresql://outrider@db.example:{server.port}/{pg_backend.dbname}?hostaddr=127.0.0.1"
            f"&sslmode=verify-full&sslrootcert={server.ca}&connect_timeout=5",
            password=server.password,
        )


def test_a_run_survives_a_reopen_through_tls(pg_backend: PostgresBackend) -> None:
    server = pg_backend.server
    uri = f"postgresql://outrider@localhost:{server.port}/{pg_backend.dbname}?sslmode=verify-full&sslrootcert={server.ca}"
    run = make_run()

    async def body(store: Any) -> None:
        ch = Changes()
        ch.insert_run(run)
        await store.commit(ch)

    async def main() -> None:
        store = PostgresStore(uri, password=server.password)
        store.start(asyncio.get_running_loop())
        try:
            await body(store)
        finally:
            store.close()

    asyncio.run(main())
    store = PostgresStore(uri, password=server.password)
    try:
        assert [r.spec for r in store.load().runs] == [run.spec]
    finally:
        store.close()


def test_the_advisory_lock_key_is_ours() -> None:
    assert pg_store.MIGRATION_LOCK.to_bytes(8, "big") == b"outrider"


def test_a_reader_whose_connection_was_lost_connects_again(pg_backend: PostgresBackend) -> None:
    """Reads (a watch's replay, the audit listing) run on their own connection: when the server
    ends it, that read fails and the next one reconnects; the writer is not involved."""
    import psycopg

    async def body(store: Any) -> None:
        ch = Changes()
        ch.event(1, 1.0, "run-1", "", "running", 0, "", "")
        await store.commit(ch)
        assert [e.seq for e in store.events("run-1")] == [1]
        pid = store._reader.info.backend_pid
        assert pg_backend.read("SELECT pg_terminate_backend(?)", (pid,)) == [(True,)]
        with pytest.raises(psycopg.OperationalError):
            store.events("run-1")
        assert [e.seq for e in store.events("run-1")] == [1]
        assert store._reader.info.backend_pid != pid

    with_store(pg_backend, body)


def test_a_refused_row_of_a_many_write_fails_its_change_alone(pg_backend: PostgresBackend) -> None:
    """executemany (pipelined by psycopg) inside the batch's transaction: a duplicate event seq
    fails its own change under its savepoint; the changes around it commit in the same transaction."""

    async def body(store: Any) -> None:
        first = Changes()
        first.events([(1, 1.0, "r", "", "running", 0, "", ""), (2, 1.0, "r", "a", "ready", 0, "", "")])
        await store.commit(first)
        dup = Changes()
        dup.events([(3, 2.0, "r", "a", "running", 1, "w", ""), (2, 2.0, "r", "a", "again", 1, "w", "")])
        before = store.commit(artifact_batch(1))
        refused = store.commit(dup)
        after = Changes()
        after.event(3, 3.0, "r", "a", "succeeded", 1, "w", "")
        later = store.commit(after)
        await asyncio.gather(before, refused, later, return_exceptions=True)
        assert isinstance(refused.exception(), WriteRefused)
        assert before.exception() is None and later.exception() is None
        assert store.commits >= 2 and store.refused == 1

    with_store(pg_backend, body)
    assert pg_backend.read("SELECT seq, state FROM events ORDER BY seq") == [
        (1, "running"), (2, "ready"), (3, "succeeded")]
    assert pg_backend.read("SELECT count(*) FROM artifacts") == [(1,)]
