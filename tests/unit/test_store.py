"""Tests for the store backends: migrations, durable group commit, FIFO, load and events.

The backend-neutral tests run on both backends (the ``backend`` fixture, tests/conftest.py):
a real SQLite file under tmp_path (WAL needs a file) and a fresh database on a real
PostgreSQL server; each checks durability through a second, independent connection.
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from scheduler.core.messages import Capabilities
from scheduler.core.model import AttemptState, Output, Run, RunState, Task, TaskState
from scheduler.core.spec import InputRef, PipelineSpec, TaskSpec
from scheduler.store.changes import Changes
from scheduler.store.sqlite import MIGRATIONS
from scheduler.store.sqlite import SqliteStore as Store
from tests.helpers.backends import Backend

CAPS_V1 = Capabilities(cpu_cores=4, labels={"site": "lab"})
CAPS_V2 = Capabilities(cpu_cores=8, labels={"site": "lab"}, zones=("eu",))
TABLES = {"runs", "tasks", "attempts", "outputs", "artifacts", "agents", "events"}


def read(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read through a fresh connection: sees only what was committed."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def with_store(where: Path | Backend, body: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``body(store)`` with a started store (a SQLite file, or a backend's) in a fresh event
    loop; always close it."""
    async def main() -> None:
        store = Store(where) if isinstance(where, Path) else where.open()
        store.start(asyncio.get_running_loop())
        try:
            await body(store)
        finally:
            store.close()

    asyncio.run(main())


def artifact_batch(i: int) -> Changes:
    b = Changes()
    b.insert_artifacts([(f"{i:064x}", i, "file", float(i))])
    return b


def make_run(run_id: str = "run-1") -> Run:
    spec = PipelineSpec(name="p", tasks=(
        TaskSpec(name="a", argv=("true",), outputs=("out",)),
        TaskSpec(name="b", argv=("true",), inputs=(("x", InputRef("a", "out")),)),
    ))
    run = Run(run_id=run_id, pipeline="p", spec=spec, submitter="alice", created_at=100.0, trace_id="ab" * 16, seq=1)
    for order, ts in enumerate(spec.tasks):
        run.tasks[ts.name] = Task(run_id=run_id, name=ts.name, spec=ts, needs=ts.requires, order=order,
                                  spec_needs=ts.requires)
    return run


# --------------------------------------------------------------------------- migrations


def test_migrations_create_schema_and_set_user_version(tmp_path: Path) -> None:
    db = tmp_path / "state" / "sched.db"  # the parent directory is created too
    store = Store(db)
    store.close()
    tables = {r[0] for r in read(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES <= tables
    assert read(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert read(db, "PRAGMA journal_mode") == [("wal",)]
    indexes = {r[0] for r in read(db, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert "events_by_run" in indexes


def test_connection_is_durable_and_autocommit(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._conn.isolation_level is None
    finally:
        store.close()


def test_reopen_is_a_noop_and_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def write(store: Store) -> None:
        await store.commit(artifact_batch(1))

    with_store(db, write)
    schema_before = read(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    Store(db).close()
    Store(db).close()
    assert read(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert read(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    assert read(db, "SELECT size FROM artifacts") == [(1,)]


def test_newer_schema_is_refused_with_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(RuntimeError) as exc:
        Store(db)
    msg = str(exc.value)
    assert str(db) in msg
    assert "99" in msg and str(len(MIGRATIONS)) in msg
    assert "newer" in msg and "upgrade" in msg
    # Refusing changed nothing.
    assert read(db, "PRAGMA user_version") == [(99,)]


def test_partial_database_is_migrated_from_its_version(tmp_path: Path) -> None:
    # A fresh (version 0) file that already exists, empty, is migrated normally.
    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    Store(db).close()
    assert read(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]


# --------------------------------------------------------------------------- commit


def test_commit_resolves_only_after_durable(backend: Backend) -> None:
    db = backend

    async def body(store: Any) -> None:
        fut = store.commit(artifact_batch(7))
        assert not fut.done()  # resolution needs the writer thread and a loop turn
        await fut
        assert db.read("SELECT digest, size, kind FROM artifacts") == [(f"{7:064x}", 7, "file")]

    with_store(db, body)


def test_commit_accepts_many_rows_and_empty_changes(backend: Backend) -> None:
    db = backend

    async def body(store: Any) -> None:
        await store.commit(Changes())
        await store.barrier()
        one = Changes()
        one.insert_artifacts([("d" * 64, 3, "dir", 1.0)])
        await store.commit(one)
        many = Changes()
        many.insert_artifacts([("e" * 64, 1, "file", 1.0), ("f" * 64, 2, "file", 1.0)])
        await store.commit(many)
        assert db.read("SELECT count(*) FROM artifacts") == [(3,)]

    with_store(db, body)


def test_commit_before_start_is_an_error(backend: Backend) -> None:
    store = backend.open()
    try:
        with pytest.raises(AssertionError, match="start"):
            store.commit(Changes())
    finally:
        store.close()


def test_group_commit_merges_batches_and_resolves_all(backend: Backend) -> None:
    db = backend
    n = 200

    async def body(store: Any) -> None:
        futs = [store.commit(artifact_batch(i)) for i in range(n)]  # one loop turn
        await asyncio.wait_for(asyncio.gather(*futs), 30)
        assert all(f.done() and f.exception() is None for f in futs)
        assert store.grouped == n
        assert 1 <= store.commits < n, store.commits
        assert db.read("SELECT count(*) FROM artifacts") == [(n,)]

    with_store(db, body)


def test_fifo_later_future_implies_earlier_batches_visible(backend: Backend) -> None:
    db = backend
    n = 60
    seen: list[tuple[int, int]] = []

    async def body(store: Any) -> None:
        futs = []
        for i in range(n):
            fut = store.commit(artifact_batch(i + 1))
            # Each callback reads through its own connection what is durable at that moment.
            fut.add_done_callback(lambda _f, i=i: seen.append((i, db.read("SELECT count(*) FROM artifacts")[0][0])))
            futs.append(fut)
            if i % 7 == 0:
                await asyncio.sleep(0)  # spread over several transactions
        await asyncio.wait_for(asyncio.gather(*futs), 30)

    with_store(db, body)
    assert [i for i, _ in seen] == list(range(n))  # resolved in queue order
    for i, count in seen:
        assert count >= i + 1, (i, count)


def test_close_drains_queued_commits(backend: Backend) -> None:
    db = backend

    async def main() -> None:
        store = db.open()
        store.start(asyncio.get_running_loop())
        for i in range(10):
            store.commit(artifact_batch(i))
        store.close()

    asyncio.run(main())
    assert db.read("SELECT count(*) FROM artifacts") == [(10,)]


# --------------------------------------------------------------------------- poisoned values


def _nan_task_update(run: Run) -> Changes:
    """A task row whose NOT NULL column gets a NaN (SQLite stores NaN as NULL)."""
    t = run.tasks["a"]
    t.started_at = float("nan")
    bad = Changes()
    bad.update_task(t)
    return bad


#: What each backend's refusal of a NaN names: SQLite stores a NaN as NULL (its NOT NULL refuses it),
#: PostgreSQL keeps NaN as a value (the real_t domain's check refuses it).
NAN_REFUSAL = {"sqlite": "NOT NULL", "postgresql": "not_nan"}


def test_a_change_refused_for_its_values_fails_alone_and_the_writer_lives_on(backend: Backend) -> None:
    from scheduler.store.base import WriteRefused

    db = backend
    run = make_run()

    async def body(store: Any) -> None:
        first = Changes()
        first.insert_run(run)
        await store.commit(first)
        # Three changes in one loop turn: one group, one transaction; the middle one is poisoned.
        before = store.commit(artifact_batch(1))
        poisoned = store.commit(_nan_task_update(run))
        dup = Changes()
        dup.insert_run(run)  # a duplicate primary key: refused for its values too
        duplicate = store.commit(dup)
        after = store.commit(artifact_batch(2))
        await asyncio.wait_for(asyncio.gather(before, poisoned, duplicate, after, return_exceptions=True), 30)
        assert before.exception() is None and after.exception() is None
        assert isinstance(poisoned.exception(), WriteRefused)
        assert NAN_REFUSAL[db.name] in str(poisoned.exception())
        assert isinstance(duplicate.exception(), WriteRefused)
        assert store.refused == 2
        # The writer is alive: later commits land.
        await store.commit(artifact_batch(3))
        assert db.read("SELECT count(*) FROM artifacts") == [(3,)]
        assert db.read("SELECT started_at FROM tasks WHERE name='a'") == [(0.0,)]  # untouched

    with_store(db, body)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failure_of_the_database_itself_still_ends_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scheduler.store.base as base

    db = tmp_path / "s.db"
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)  # ends the writer thread, as os._exit would end the process

    monkeypatch.setattr(base.os, "_exit", fake_exit)

    async def body(store: Store) -> None:
        def broken(records: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store, "_write", broken)
        store.commit(artifact_batch(1))
        for _ in range(500):
            if exits:
                break
            await asyncio.sleep(0.01)
        assert exits == [70]

    with_store(db, body)


# --------------------------------------------------------------------------- load / events


def test_load_returns_what_was_written(backend: Backend) -> None:
    db = backend
    run = make_run()

    async def body(store: Any) -> None:
        b = Changes()
        b.insert_run(run)
        b.upsert_agent("gpu-1", "spiffe://acme.ml/agent/gpu-1", CAPS_V1, 5.0)
        await store.commit(b)
        a = run.tasks["a"]
        a.state, a.attempts, a.agent, a.started_at = TaskState.RUNNING, 1, "gpu-1", 10.0
        b = Changes()
        b.update_task(a)
        b.insert_attempt(a, 10.0)
        await store.commit(b)
        a.state, a.finished_at, a.exit_code = TaskState.SUCCEEDED, 11.0, 0
        a.outputs = {"out": Output("out", "c" * 64, 42, "file")}
        run.state, run.finished_at = RunState.SUCCEEDED, 12.0
        b = Changes()
        b.update_task(a)
        b.finish_attempt(a, AttemptState.SUCCEEDED, 11.0, 0, "")
        b.insert_outputs(a, 11.0)
        b.update_run(run)
        b.upsert_agent("gpu-1", "spiffe://acme.ml/agent/gpu-1", CAPS_V2, 20.0)
        await store.commit(b)

    with_store(db, body)

    store = db.open()
    try:
        loaded = store.load()
    finally:
        store.close()
    assert [r.run_id for r in loaded.runs] == ["run-1"]
    r = loaded.runs[0]
    assert (r.state, r.finished_at, r.submitter, r.seq) == ("succeeded", 12.0, "alice", 1)
    assert r.spec == run.spec  # stored in its wire encoding, read back equal
    tasks = {t.name: t for t in loaded.tasks}
    assert set(tasks) == {"a", "b"}
    assert (tasks["a"].state, tasks["a"].attempts, tasks["a"].agent) == ("succeeded", 1, "gpu-1")
    assert tasks["b"].state == "pending"
    assert [(o.task, o.name, o.digest, o.size, o.kind) for o in loaded.outputs] == [
        ("a", "out", "c" * 64, 42, "file")]
    agents = {a.name: a for a in loaded.agents}
    assert agents["gpu-1"].capabilities == CAPS_V2
    assert agents["gpu-1"].registered_at == 5.0  # kept on re-register
    assert agents["gpu-1"].last_seen == 20.0
    assert db.read("SELECT state, finished_at FROM attempts") == [("succeeded", 11.0)]
    assert db.read("SELECT count(*) FROM artifacts") == [(1,)]


def test_events_readable_while_writer_runs(backend: Backend) -> None:
    db = backend

    async def body(store: Any) -> None:
        futs = []
        for i in range(50):
            b = Changes()
            b.event(2 * i + 1, float(i), "run-1", f"t{i}", "ready", 0, "", "")
            b.event(2 * i + 2, float(i), "run-2", "x", "ready", 0, "", "")
            futs.append(store.commit(b))
        # Read while commits are still queued / in flight: never blocks, never errors.
        partial = store.events("run-1")
        assert len(partial) <= 50
        await asyncio.gather(*futs)
        rows = store.events("run-1")
        assert [r.task for r in rows] == [f"t{i}" for i in range(50)]
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        assert len(store.events("run-2")) == 50
        assert store.events("nope") == []
        # Resume after a seq, a page at a time.
        assert [r.seq for r in store.events("run-1", after=41)] == [43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63, 65,
                                                                    67, 69, 71, 73, 75, 77, 79, 81, 83, 85, 87, 89,
                                                                    91, 93, 95, 97, 99]
        assert [r.seq for r in store.events("run-1", after=41, limit=3)] == [43, 45, 47]

    with_store(db, body)
    store = db.open()
    try:
        assert store.load().event_seq == 100
    finally:
        store.close()
