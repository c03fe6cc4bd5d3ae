"""The one module that owns SQLite.

Durability model: the engine mutates its in-memory state, then hands the
matching SQL to :meth:`Store.commit`, which returns a future resolved once the
change is durable. A single writer thread groups everything queued while the
previous transaction was committing into one ``BEGIN IMMEDIATE … COMMIT``
(group commit), so N concurrent changes cost one fsync, not N.

Because the queue is FIFO and transactions are sequential, a future resolving
means every change queued *before* it is durable too. The engine relies on
this: it shows a change to the outside world (an ack to a client, an assignment
to an agent) only after the commit that recorded it.

A failed commit leaves memory ahead of disk; the scheduler cannot continue
safely, so the writer logs and ends the process (systemd restarts it and state
is reloaded from the database: crash-only).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

# Numbered migrations: append only, never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,
        seq         INTEGER NOT NULL,
        pipeline    TEXT NOT NULL,
        spec        BLOB NOT NULL,       -- outrider.v1.PipelineSpec, serialized
        state       TEXT NOT NULL,
        submitter   TEXT NOT NULL,
        trace_id    TEXT NOT NULL,
        created_at  REAL NOT NULL,
        finished_at REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE tasks (
        run_id      TEXT NOT NULL REFERENCES runs(run_id),
        name        TEXT NOT NULL,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        failures    INTEGER NOT NULL DEFAULT 0,
        agent       TEXT NOT NULL DEFAULT '',
        error       TEXT NOT NULL DEFAULT '',
        exit_code   INTEGER NOT NULL DEFAULT 0,
        started_at  REAL NOT NULL DEFAULT 0,
        finished_at REAL NOT NULL DEFAULT 0,
        not_before  REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE attempts (
        run_id      TEXT NOT NULL,
        task        TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        agent       TEXT NOT NULL,
        state       TEXT NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL NOT NULL DEFAULT 0,
        exit_code   INTEGER NOT NULL DEFAULT 0,
        error       TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (run_id, task, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE outputs (
        run_id TEXT NOT NULL,
        task   TEXT NOT NULL,
        name   TEXT NOT NULL,
        digest TEXT NOT NULL,
        size   INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        PRIMARY KEY (run_id, task, name)
    ) WITHOUT ROWID;
    CREATE TABLE artifacts (
        digest     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE agents (
        name          TEXT PRIMARY KEY,
        identity      TEXT NOT NULL,
        capabilities  BLOB NOT NULL,     -- outrider.v1.Capabilities, serialized
        registered_at REAL NOT NULL,
        last_seen     REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      REAL NOT NULL,
        run_id  TEXT NOT NULL,
        task    TEXT NOT NULL,
        state   TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        agent   TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX events_by_run ON events(run_id, seq);
    """,
    # 2: residency of outputs (comma-separated zones; NULL: anywhere)
    """
    ALTER TABLE outputs ADD COLUMN residency TEXT;
    """,
)

Op = tuple[str, Any]  # (sql, params) or ("many:" + sql, seq of params)


class Batch:
    """SQL for one logical change, appended atomically to the writer's queue."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def __bool__(self) -> bool:
        return bool(self.ops)

    def insert_run(self, run: Any) -> None:
        self.ops.append((
            "INSERT INTO runs(run_id, seq, pipeline, spec, state, submitter, trace_id, created_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (run.run_id, run.seq, run.pipeline, run.spec.SerializeToString(), run.state.value,
             run.submitter, run.trace_id, run.created_at),
        ))
        self.ops.append((
            "many:INSERT INTO tasks(run_id, name, state) VALUES (?,?,?)",
            [(run.run_id, t.name, t.state.value) for t in run.tasks.values()],
        ))

    def update_run(self, run: Any) -> None:
        self.ops.append((
            "UPDATE runs SET state=?, finished_at=? WHERE run_id=?",
            (run.state.value, run.finished_at, run.run_id),
        ))

    def update_task(self, t: Any) -> None:
        self.ops.append((
            "UPDATE tasks SET state=?, attempts=?, failures=?, agent=?, error=?, exit_code=?,"
            " started_at=?, finished_at=?, not_before=? WHERE run_id=? AND name=?",
            (t.state.value, t.attempts, t.failures, t.agent, t.error, t.exit_code,
             t.started_at, t.finished_at, t.not_before, t.run_id, t.name),
        ))

    def insert_attempt(self, t: Any, started_at: float) -> None:
        self.ops.append((
            "INSERT INTO attempts(run_id, task, attempt, agent, state, started_at) VALUES (?,?,?,?,?,?)",
            (t.run_id, t.name, t.attempts, t.agent, "running", started_at),
        ))

    def finish_attempt(self, t: Any, state: str, finished_at: float, exit_code: int, error: str) -> None:
        self.ops.append((
            "UPDATE attempts SET state=?, finished_at=?, exit_code=?, error=? WHERE run_id=? AND task=? AND attempt=?",
            (state, finished_at, exit_code, error, t.run_id, t.name, t.attempts),
        ))

    def insert_outputs(self, t: Any, created_at: float) -> None:
        outs = list(t.outputs.values())
        if not outs:
            return
        self.ops.append((
            "many:INSERT OR REPLACE INTO outputs(run_id, task, name, digest, size, kind, residency)"
            " VALUES (?,?,?,?,?,?,?)",
            [(t.run_id, t.name, o.name, o.digest, o.size, o.kind,
              None if o.residency is None else ",".join(sorted(o.residency))) for o in outs],
        ))
        self.ops.append((
            "many:INSERT OR IGNORE INTO artifacts(digest, size, kind, created_at) VALUES (?,?,?,?)",
            [(o.digest, o.size, o.kind, created_at) for o in outs],
        ))

    def insert_artifact(self, digest: str, size: int, kind: str, created_at: float) -> None:
        self.ops.append((
            "INSERT OR IGNORE INTO artifacts(digest, size, kind, created_at) VALUES (?,?,?,?)",
            (digest, size, kind, created_at),
        ))

    def upsert_agent(self, name: str, identity: str, caps: bytes, now: float) -> None:
        self.ops.append((
            "INSERT INTO agents(name, identity, capabilities, registered_at, last_seen) VALUES (?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET identity=excluded.identity,"
            " capabilities=excluded.capabilities, last_seen=excluded.last_seen",
            (name, identity, caps, now, now),
        ))

    def events(self, rows: list[tuple[float, str, str, str, int, str, str]]) -> None:
        """Many events at once: (ts, run_id, task, state, attempt, agent, detail) each."""
        if rows:
            self.ops.append((
                "many:INSERT INTO events(ts, run_id, task, state, attempt, agent, detail) VALUES (?,?,?,?,?,?,?)",
                rows,
            ))

    def event(self, ts: float, run_id: str, task: str, state: str, attempt: int, agent: str, detail: str) -> None:
        self.ops.append((
            "INSERT INTO events(ts, run_id, task, state, attempt, agent, detail) VALUES (?,?,?,?,?,?,?)",
            (ts, run_id, task, state, attempt, agent, detail),
        ))


@dataclass
class Loaded:
    """Everything the engine needs to rebuild its memory after a restart."""

    runs: list[sqlite3.Row]
    tasks: list[sqlite3.Row]
    outputs: list[sqlite3.Row]
    agents: list[sqlite3.Row]


class Store:
    """SQLite in WAL mode, ``synchronous=FULL``, one writer thread with group commit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[Op] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._turn_ops: list[Op] = []
        self._turn_waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        #: Commits done and changes grouped into them, for metrics and the benchmark.
        self.commits = 0
        self.grouped = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged change survives power loss, not just a process crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: database schema version {version} is newer than this scheduler "
                f"understands ({len(MIGRATIONS)}); upgrade the scheduler"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("applying database migration %d", number)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, script.split(";")):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={number}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # -- reading (start-up and rare queries; the engine keeps live state in memory) --

    def load(self) -> Loaded:
        q = self._conn.execute
        return Loaded(
            runs=q("SELECT * FROM runs ORDER BY seq").fetchall(),
            tasks=q("SELECT * FROM tasks").fetchall(),
            outputs=q("SELECT * FROM outputs").fetchall(),
            agents=q("SELECT * FROM agents").fetchall(),
        )

    def events(self, run_id: str) -> list[sqlite3.Row]:
        """A run's recorded transitions (a separate reader connection: WAL lets it
        read while the writer thread commits)."""
        if self._reader is None:
            self._reader = self._connect()
        return self._reader.execute("SELECT * FROM events WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()

    # -- writing --

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()

    def commit(self, batch: Batch | Iterable[Op]) -> asyncio.Future[None]:
        """Queue a change; the future resolves once it (and all before it) is durable.

        Called from the event loop thread only. Changes queued during one turn of
        the loop are handed to the writer together at the end of that turn, so a
        completion and the assignment it frees a slot for share one fsync.
        """
        assert self._loop is not None, "Store.start() first"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._turn_ops.extend(batch.ops if isinstance(batch, Batch) else batch)
        self._turn_waiters.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        ops, self._turn_ops = self._turn_ops, []
        waiters, self._turn_waiters = self._turn_waiters, []
        with self._lock:
            self._queue.extend(ops)
            self._waiters.extend(waiters)
            self._wake.notify()

    def _writer(self) -> None:
        conn = self._conn
        while True:
            with self._lock:
                while not self._queue and not self._waiters and not self._closing:
                    self._wake.wait()
                if not self._queue and not self._waiters:
                    return  # closing and drained
                ops, self._queue = self._queue, []
                waiters, self._waiters = self._waiters, []
            # Commit outside the lock: while this fsync runs, the event loop keeps
            # queueing changes, and they all go into the next transaction.
            try:
                if ops:
                    conn.execute("BEGIN IMMEDIATE")
                    for sql, params in ops:
                        if sql.startswith("many:"):
                            conn.executemany(sql[5:], params)
                        else:
                            conn.execute(sql, params)
                    conn.execute("COMMIT")
            except BaseException:
                log.critical("database commit failed; stopping so state is reloaded", exc_info=True)
                os._exit(70)
            self.commits += 1
            self.grouped += len(waiters)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_resolve_all, waiters)
            except RuntimeError:  # loop closed during shutdown
                return

    def close(self) -> None:
        if self._turn_ops or self._turn_waiters:
            self._flush()
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._conn.close()
        if self._reader is not None:
            self._reader.close()


def _resolve_all(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
