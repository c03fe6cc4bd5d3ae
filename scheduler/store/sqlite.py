"""The SQLite backend: the one module that owns SQLite.

WAL mode, ``synchronous=FULL`` (an acknowledged change survives power loss),
numbered migrations, and every write kind of :class:`~scheduler.store.changes.Op`
as one statement. Pipeline specs and capabilities are stored as their wire
encoding (``outrider.v1`` messages, via :mod:`scheduler.api.wire`): a versioned,
forward-compatible format that outlives any change to the domain classes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scheduler.core.auditchain import AuditRecord
from scheduler.store import rows
from scheduler.store.base import PREFIX_TABLES, EventRow, Loaded, SpanRow, Store, TokenRow, log, prefix_range
from scheduler.store.changes import Op, Record

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
    # 3: the instance (state dir) each agent name was last registered from
    """
    ALTER TABLE agents ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';
    """,
    # 4: checkpoints: the latest accepted per task, and the one each attempt resumed from
    """
    CREATE TABLE checkpoints (
        run_id     TEXT NOT NULL,
        task       TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        digest     TEXT NOT NULL,
        size       INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        created_at REAL NOT NULL,
        residency  TEXT,
        PRIMARY KEY (run_id, task)
    ) WITHOUT ROWID;
    ALTER TABLE attempts ADD COLUMN resume_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN resume_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN resume_digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE attempts ADD COLUMN resume_size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN resume_kind TEXT NOT NULL DEFAULT '';
    ALTER TABLE attempts ADD COLUMN resume_created_at REAL NOT NULL DEFAULT 0;
    """,
    # 5: each run's last run-level event, found without reading its task events (watch replay)
    """
    CREATE INDEX events_run_level ON events(run_id, seq) WHERE task = '';
    """,
    # 6: the audit log, hash-chained (scheduler.core.audit); seq is gap-free from 1, no index
    # besides it: one INSERT per record, and listings filter as they scan
    """
    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,
        ts_us     INTEGER NOT NULL,
        identity  TEXT NOT NULL,
        action    TEXT NOT NULL,
        target    TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        detail    TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );
    """,
    # 7: revoked agents: a durable deny-list by agent name (scheduler.core.revocation)
    """
    CREATE TABLE revoked_agents (
        name       TEXT PRIMARY KEY,
        revoked_at REAL NOT NULL,
        revoked_by TEXT NOT NULL,
        reason     TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID;
    """,
    # 8: join tokens for zero-touch enrolment; only a hash of each token's secret is kept
    """
    CREATE TABLE join_tokens (
        token_id    TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created_at  REAL NOT NULL,
        created_by  TEXT NOT NULL,
        expires_at  REAL NOT NULL,
        uses_left   INTEGER NOT NULL,
        labels      TEXT NOT NULL DEFAULT '',
        zones       TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID;
    """,
    # 9: the leader row of high availability (scheduler.leader, docs/ha.md)
    # PostgreSQL only: SQLite is one node and always its own leader; the table is kept so the migration counts match.
    """
    CREATE TABLE leader (
        one     INTEGER PRIMARY KEY CHECK (one = 1),
        epoch   INTEGER NOT NULL,
        address TEXT NOT NULL,
        pid     INTEGER NOT NULL,
        host    TEXT NOT NULL,
        since   REAL NOT NULL
    );
    """,
    # 10: a submission's idempotency key (the client's request id): a submit retried after a failover that
    # lost its answer finds the run it made (scheduler.core.engine); '' for runs submitted without one
    """
    ALTER TABLE runs ADD COLUMN submit_key TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX runs_submit_key ON runs(submitter, submit_key) WHERE submit_key != '';
    """,
    # 11: trace times per attempt (scheduler.core.tracing): queueing, transfer, execution and commit,
    # clock-corrected to the scheduler's wall clock; one row, written with the attempt's completion
    """
    CREATE TABLE spans (
        run_id       TEXT NOT NULL,
        task         TEXT NOT NULL,
        attempt      INTEGER NOT NULL,
        agent        TEXT NOT NULL,
        queued_at    REAL NOT NULL DEFAULT 0,
        granted_at   REAL NOT NULL DEFAULT 0,
        fetch_start  REAL NOT NULL DEFAULT 0,
        fetch_end    REAL NOT NULL DEFAULT 0,
        exec_start   REAL NOT NULL DEFAULT 0,
        exec_end     REAL NOT NULL DEFAULT 0,
        upload_start REAL NOT NULL DEFAULT 0,
        upload_end   REAL NOT NULL DEFAULT 0,
        received_at  REAL NOT NULL DEFAULT 0,
        durable_at   REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, task, attempt)
    ) WITHOUT ROWID;
    """,
    # 12: what stages record (outrider.metrics): per attempt, each name's last value; lines not stored
    """
    CREATE TABLE stage_metrics (
        run_id  TEXT NOT NULL,
        task    TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        name    TEXT NOT NULL,
        value   REAL NOT NULL,
        step    INTEGER,
        ts      REAL NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (run_id, task, attempt, name)
    ) WITHOUT ROWID;
    CREATE TABLE stage_metrics_skipped (
        run_id  TEXT NOT NULL,
        task    TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        count   INTEGER NOT NULL,
        reason  TEXT NOT NULL,
        PRIMARY KEY (run_id, task, attempt)
    ) WITHOUT ROWID;
    """,
)

#: How many audit records one read takes (a whole-chain verify streams in such chunks).
AUDIT_CHUNK = 1000
_AUDIT_INSERT = (
    "INSERT INTO audit(seq, ts_us, identity, action, target, outcome, detail, prev_hash, hash)"
    " VALUES (?,?,?,?,?,?,?,?,?)"
)

#: One statement per kind of write; ``*_MANY`` kinds run with executemany.
SQL: dict[Op, str] = {
    Op.INSERT_RUN: "INSERT INTO runs(run_id, seq, pipeline, spec, state, submitter, trace_id, created_at, submit_key)"
    " VALUES (?,?,?,?,?,?,?,?,?)",
    Op.INSERT_TASKS_MANY: "INSERT INTO tasks(run_id, name, state) VALUES (?,?,?)",
    Op.UPDATE_RUN: "UPDATE runs SET state=?, finished_at=? WHERE run_id=?",
    Op.UPDATE_TASK: "UPDATE tasks SET state=?, attempts=?, failures=?, agent=?, error=?, exit_code=?,"
    " started_at=?, finished_at=?, not_before=? WHERE run_id=? AND name=?",
    Op.INSERT_ATTEMPT: "INSERT INTO attempts(run_id, task, attempt, agent, state, started_at, resume_epoch, resume_seq,"
    " resume_digest, resume_size, resume_kind, resume_created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
    Op.FINISH_ATTEMPT: "UPDATE attempts SET state=?, finished_at=?, exit_code=?, error=?"
    " WHERE run_id=? AND task=? AND attempt=?",
    Op.UPSERT_OUTPUTS_MANY: "INSERT OR REPLACE INTO outputs(run_id, task, name, digest, size, kind, residency)"
    " VALUES (?,?,?,?,?,?,?)",
    Op.INSERT_ARTIFACTS_MANY: "INSERT OR IGNORE INTO artifacts(digest, size, kind, created_at) VALUES (?,?,?,?)",
    Op.UPSERT_AGENT: "INSERT INTO agents(name, identity, capabilities, registered_at, last_seen, instance_id)"
    " VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET identity=excluded.identity,"
    " capabilities=excluded.capabilities, last_seen=excluded.last_seen, instance_id=excluded.instance_id",
    Op.INSERT_EVENTS_MANY: "INSERT INTO events(seq, ts, run_id, task, state, attempt, agent, detail)"
    " VALUES (?,?,?,?,?,?,?,?)",
    Op.INSERT_AUDIT: _AUDIT_INSERT,  # its seq and hashes from the chain, as it is written (_apply)
    Op.UPSERT_CHECKPOINT: "INSERT OR REPLACE INTO checkpoints(run_id, task, epoch, seq, digest, size, kind, created_at,"
    " residency) VALUES (?,?,?,?,?,?,?,?,?)",
    Op.UPSERT_TOKEN: "INSERT OR REPLACE INTO join_tokens(token_id, secret_hash, created_at, created_by, expires_at,"
    " uses_left, labels, zones) VALUES (?,?,?,?,?,?,?,?)",
    Op.UPDATE_TOKEN_USES: "UPDATE join_tokens SET uses_left=? WHERE token_id=?",
    Op.DELETE_TOKEN: "DELETE FROM join_tokens WHERE token_id=?",
    Op.INSERT_REVOKED: "INSERT INTO revoked_agents(name, revoked_at, revoked_by, reason) VALUES (?,?,?,?)",
}
SQL.update(rows.spans_sql("?"))  # trace spans (core/tracing.py)
_MANY = frozenset({Op.INSERT_TASKS_MANY, Op.UPSERT_OUTPUTS_MANY, Op.INSERT_ARTIFACTS_MANY, Op.INSERT_EVENTS_MANY})
_MANY = _MANY | {Op.UPSERT_SPANS_MANY, Op.SPANS_DURABLE_MANY}
SQL.update(rows.stage_metrics_sql("?"))  # stage metrics (core/stagemetrics.py)
_MANY = _MANY | {Op.UPSERT_STAGE_METRICS_MANY}
assert set(SQL) == set(Op), "every kind of write needs its statement"


class SqliteStore(Store):
    """SQLite in WAL mode, ``synchronous=FULL``, one writer thread with group commit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        last = self._conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None:
            self.chain.rewind((last[0], last[1]))
            self.chain.commit()

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

    # -- reading

    def load(self) -> Loaded:
        return rows.load(self._conn.execute)

    def events(self, run_id: str, after: int = 0, limit: int = 0) -> list[EventRow]:
        """A run's recorded events after ``after`` (a separate reader connection: WAL lets it
        read while the writer thread commits; a lock, as readers may run on several threads)."""
        sql = "SELECT * FROM events WHERE run_id=? AND seq>? ORDER BY seq" + (" LIMIT ?" if limit else "")
        params: tuple[Any, ...] = (run_id, after, limit) if limit else (run_id, after)
        return [rows.event_row(r) for r in self._read(sql, params)]

    def all_events(self, after: int, limit: int) -> list[EventRow]:
        sql = "SELECT * FROM events WHERE seq>? ORDER BY seq LIMIT ?"
        return [rows.event_row(r) for r in self._read(sql, (after, limit))]

    def with_prefix(self, kind: str, prefix: str, after: str, limit: int) -> list[str]:
        table, key = PREFIX_TABLES[kind]
        low, high = prefix_range(prefix)
        sql = f"SELECT {key} FROM {table} WHERE {key} >= ? AND {key} < ? AND {key} > ? ORDER BY {key} LIMIT ?"
        return [r[key] for r in self._read(sql, (low, high, after, limit))]

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._connect()
            return self._reader.execute(sql, params).fetchall()

    def spans(self, run_id: str) -> list[SpanRow]:
        sql = "SELECT * FROM spans WHERE run_id=? ORDER BY task, attempt"
        return [rows.span_row(r) for r in self._read(sql, (run_id,))]

    def stage_metrics(self, run_id: str, limit: int) -> rows.MetricsFound:
        return rows.stage_metrics(self._read, run_id, limit)

    def join_tokens(self) -> list[TokenRow]:
        sql = "SELECT token_id, secret_hash, created_at, created_by, expires_at, uses_left, labels, zones"
        sql += " FROM join_tokens"
        return [TokenRow(*r) for r in self._read(sql + " ORDER BY created_at", ())]

    def audit_rows(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        while True:
            page = self._read("SELECT * FROM audit WHERE seq>? ORDER BY seq LIMIT ?", (after_seq, AUDIT_CHUNK))
            for r in page:
                yield rows.audit_record(r)
            if len(page) < AUDIT_CHUNK:
                return
            after_seq = page[-1]["seq"]

    def audit_page(self, after_seq: int, since_ts_us: int, identity: str, limit: int) -> list[AuditRecord]:
        sql = "SELECT * FROM audit WHERE seq>? AND ts_us>=?" + (" AND identity=?" if identity else "")
        params: tuple[Any, ...] = (after_seq, since_ts_us, identity) if identity else (after_seq, since_ts_us)
        return [rows.audit_record(r) for r in self._read(sql + " ORDER BY seq LIMIT ?", (*params, limit))]

    # -- writing

    def _apply(self, records: list[Record]) -> None:
        conn = self._conn
        for op, params in records:
            if op is Op.INSERT_AUDIT:
                rec = self.chain.append(*params)
                conn.execute(_AUDIT_INSERT, (rec.seq, *params, rec.prev_hash, rec.hash))
            elif op in _MANY:
                conn.executemany(SQL[op], params)
            else:
                conn.execute(SQL[op], rows.encoded(op, params))

    def _write(self, records: list[Record]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._apply(records)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_isolated(self, groups: list[list[Record]]) -> list[BaseException | None]:
        conn = self._conn
        outcomes: list[BaseException | None] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for records in groups:
                conn.execute("SAVEPOINT change")
                mark = self.chain.mark()
                try:
                    self._apply(records)
                except BaseException as exc:
                    if not self._refused_by_value(exc):
                        raise
                    conn.execute("ROLLBACK TO change")
                    self.chain.rewind(mark)  # its audit record rolled back: the seq is given again
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
                conn.execute("RELEASE change")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def _refused_by_value(self, exc: BaseException) -> bool:
        # Constraint violations and parameters SQLite cannot bind are about the values written;
        # OperationalError (I/O, a full disk, a lock) and DatabaseError (corruption) are not.
        refused = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.ProgrammingError)
        return isinstance(exc, refused) or super()._refused_by_value(exc)

    def _close_backend(self) -> None:
        self._conn.close()
        if self._reader is not None:
            self._reader.close()
