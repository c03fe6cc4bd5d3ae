"""The PostgreSQL backend: the one module that owns PostgreSQL (psycopg 3).

The same :class:`~scheduler.store.base.Store` as :mod:`scheduler.store.sqlite`: one writer
thread with group commit (one transaction per batch, ``synchronous_commit=on`` so an
acknowledged change is on the server's disk), one savepoint per change when a batch is
refused for its values, numbered migrations kept in step with SQLite's (the same count and
the same meaning per number), and every :class:`~scheduler.store.changes.Op` as one
statement. Readers use their own connection and see only committed transactions.

Migrations run in one transaction under ``pg_advisory_xact_lock``: two schedulers that
start at once against a fresh database migrate it once. The version is kept in
``schema_version`` (SQLite keeps it in ``PRAGMA user_version``).

Types: ``BIGINT`` wherever SQLite has ``INTEGER`` (SQLite's integers are 64-bit),
``DOUBLE PRECISION`` for its ``REAL``, ``BYTEA`` for its ``BLOB``. SQLite stores a NaN as
NULL, so its ``NOT NULL`` refuses one; PostgreSQL stores NaN as a value, so every such
column is of the domain ``real_t``, whose check ``not_nan`` refuses it the same way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg.rows import dict_row

from outrider.errors import ConfigError
from scheduler.core.auditchain import AuditRecord
from scheduler.store import rows
from scheduler.store.base import PREFIX_TABLES, Deposed, EventRow, Loaded, SpanRow, Store, TokenRow, log, prefix_range
from scheduler.store.changes import Op, Record
from scheduler.store.pglock import LEADER_TIMEOUT_S, LockSession

#: A key of our own for pg_advisory_xact_lock while migrating ("outrider" in ASCII, 64-bit).
MIGRATION_LOCK = 0x6F75747269646572
#: How long a connection attempt may take before the start-up fails (unless the URI says).
CONNECT_TIMEOUT_S = 10

# Numbered migrations: append only, never edit a released one. Kept in step with
# scheduler.store.sqlite.MIGRATIONS: the same count, and number N means the same change.
MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    # (and real_t: a double that is never NaN, as SQLite's NOT NULL REAL columns are)
    """
    CREATE DOMAIN real_t AS DOUBLE PRECISION CONSTRAINT not_nan CHECK (VALUE <> 'NaN'::float8);
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,
        seq         BIGINT NOT NULL,
        pipeline    TEXT NOT NULL,
        spec        BYTEA NOT NULL,
        state       TEXT NOT NULL,
        submitter   TEXT NOT NULL,
        trace_id    TEXT NOT NULL,
        created_at  real_t NOT NULL,
        finished_at real_t NOT NULL DEFAULT 0
    );
    CREATE TABLE tasks (
        run_id      TEXT NOT NULL,
        name        TEXT NOT NULL,
        state       TEXT NOT NULL,
        attempts    BIGINT NOT NULL DEFAULT 0,
        failures    BIGINT NOT NULL DEFAULT 0,
        agent       TEXT NOT NULL DEFAULT '',
        error       TEXT NOT NULL DEFAULT '',
        exit_code   BIGINT NOT NULL DEFAULT 0,
        started_at  real_t NOT NULL DEFAULT 0,
        finished_at real_t NOT NULL DEFAULT 0,
        not_before  real_t NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE attempts (
        run_id      TEXT NOT NULL,
        task        TEXT NOT NULL,
        attempt     BIGINT NOT NULL,
        agent       TEXT NOT NULL,
        state       TEXT NOT NULL,
        started_at  real_t NOT NULL,
        finished_at real_t NOT NULL DEFAULT 0,
        exit_code   BIGINT NOT NULL DEFAULT 0,
        error       TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (run_id, task, attempt)
    );
    CREATE TABLE outputs (
        run_id TEXT NOT NULL,
        task   TEXT NOT NULL,
        name   TEXT NOT NULL,
        digest TEXT NOT NULL,
        size   BIGINT NOT NULL,
        kind   TEXT NOT NULL,
        PRIMARY KEY (run_id, task, name)
    );
    CREATE TABLE artifacts (
        digest     TEXT PRIMARY KEY,
        size       BIGINT NOT NULL,
        kind       TEXT NOT NULL,
        created_at real_t NOT NULL
    );
    CREATE TABLE agents (
        name          TEXT PRIMARY KEY,
        identity      TEXT NOT NULL,
        capabilities  BYTEA NOT NULL,
        registered_at real_t NOT NULL,
        last_seen     real_t NOT NULL
    );
    CREATE TABLE events (
        seq     BIGINT PRIMARY KEY,
        ts      real_t NOT NULL,
        run_id  TEXT NOT NULL,
        task    TEXT NOT NULL,
        state   TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        agent   TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX events_by_run ON events(run_id, seq)
    """,
    # 2: residency of outputs (comma-separated zones; NULL: anywhere)
    """
    ALTER TABLE outputs ADD COLUMN residency TEXT
    """,
    # 3: the instance (state dir) each agent name was last registered from
    """
    ALTER TABLE agents ADD COLUMN instance_id TEXT NOT NULL DEFAULT ''
    """,
    # 4: checkpoints: the latest accepted per task, and the one each attempt resumed from
    """
    CREATE TABLE checkpoints (
        run_id     TEXT NOT NULL,
        task       TEXT NOT NULL,
        epoch      BIGINT NOT NULL,
        seq        BIGINT NOT NULL,
        digest     TEXT NOT NULL,
        size       BIGINT NOT NULL,
        kind       TEXT NOT NULL,
        created_at real_t NOT NULL,
        residency  TEXT,
        PRIMARY KEY (run_id, task)
    );
    ALTER TABLE attempts ADD COLUMN resume_epoch BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN resume_seq BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN resume_digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE attempts ADD COLUMN resume_size BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN resume_kind TEXT NOT NULL DEFAULT '';
    ALTER TABLE attempts ADD COLUMN resume_created_at real_t NOT NULL DEFAULT 0
    """,
    # 5: each run's last run-level event, found without reading its task events (watch replay)
    """
    CREATE INDEX events_run_level ON events(run_id, seq) WHERE task = ''
    """,
    # 6: the audit log, hash-chained (scheduler.core.audit); seq is gap-free from 1, no index
    # besides it: one INSERT per record, and listings filter as they scan
    """
    CREATE TABLE audit (
        seq       BIGINT PRIMARY KEY,
        ts_us     BIGINT NOT NULL,
        identity  TEXT NOT NULL,
        action    TEXT NOT NULL,
        target    TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        detail    TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    )
    """,
    # 7: revoked agents: a durable deny-list by agent name (scheduler.core.revocation)
    """
    CREATE TABLE revoked_agents (
        name       TEXT PRIMARY KEY,
        revoked_at real_t NOT NULL,
        revoked_by TEXT NOT NULL,
        reason     TEXT NOT NULL DEFAULT ''
    )
    """,
    # 8: join tokens for zero-touch enrolment; only a hash of each token's secret is kept
    """
    CREATE TABLE join_tokens (
        token_id    TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created_at  real_t NOT NULL,
        created_by  TEXT NOT NULL,
        expires_at  real_t NOT NULL,
        uses_left   BIGINT NOT NULL,
        labels      TEXT NOT NULL DEFAULT '',
        zones       TEXT NOT NULL DEFAULT ''
    )
    """,
    # 9: the leader row of high availability (scheduler.leader, docs/ha.md)
    # Its epoch grows by one with each new leader; the fencing check every write transaction of a leader runs
    # first (the row locked FOR SHARE, so a takeover waits for the transactions in flight).
    # Dollar-quoted: run as one statement.
    """
    CREATE TABLE leader (
        one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        epoch   BIGINT NOT NULL,
        address TEXT NOT NULL,
        pid     BIGINT NOT NULL,
        host    TEXT NOT NULL,
        since   real_t NOT NULL
    );
    CREATE FUNCTION outrider_fence(expected BIGINT) RETURNS VOID LANGUAGE plpgsql AS $$
    DECLARE
        held BIGINT;
    BEGIN
        SELECT epoch INTO held FROM leader WHERE one FOR SHARE;
        IF held IS DISTINCT FROM expected THEN
            RAISE EXCEPTION 'fenced: the leader epoch is %, this scheduler led at epoch %', held, expected
                USING ERRCODE = 'OR001';
        END IF;
    END
    $$
    """,
    # 10: a submission's idempotency key (the client's request id): a submit retried after a failover that
    # lost its answer finds the run it made (scheduler.core.engine); '' for runs submitted without one
    """
    ALTER TABLE runs ADD COLUMN submit_key TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX runs_submit_key ON runs(submitter, submit_key) WHERE submit_key <> '';
    """,
    # 11: trace times per attempt (scheduler.core.tracing): queueing, transfer, execution and commit,
    # clock-corrected to the scheduler's wall clock; one row, written with the attempt's completion
    """
    CREATE TABLE spans (
        run_id       TEXT NOT NULL,
        task         TEXT NOT NULL,
        attempt      INTEGER NOT NULL,
        agent        TEXT NOT NULL,
        queued_at    real_t NOT NULL DEFAULT 0,
        granted_at   real_t NOT NULL DEFAULT 0,
        fetch_start  real_t NOT NULL DEFAULT 0,
        fetch_end    real_t NOT NULL DEFAULT 0,
        exec_start   real_t NOT NULL DEFAULT 0,
        exec_end     real_t NOT NULL DEFAULT 0,
        upload_start real_t NOT NULL DEFAULT 0,
        upload_end   real_t NOT NULL DEFAULT 0,
        received_at  real_t NOT NULL DEFAULT 0,
        durable_at   real_t NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, task, attempt)
    );
    """,
    # 12: what stages record (outrider.metrics): per attempt, each name's last value; lines not stored
    """
    CREATE TABLE stage_metrics (run_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL, name TEXT NOT NULL,
        value real_t NOT NULL, step BIGINT, ts real_t NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (run_id, task, attempt, name));
    CREATE TABLE stage_metrics_skipped (run_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL,
        count BIGINT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (run_id, task, attempt));
    """,
)

#: How many audit records one read takes (a whole-chain verify streams in such chunks).
AUDIT_CHUNK = 1000
_AUDIT_INSERT = (
    "INSERT INTO audit(seq, ts_us, identity, action, target, outcome, detail, prev_hash, hash)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)

#: One statement per kind of write; ``*_MANY`` kinds run with executemany.
SQL: dict[Op, str] = {
    Op.INSERT_RUN: "INSERT INTO runs(run_id, seq, pipeline, spec, state, submitter, trace_id, created_at, submit_key)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
    Op.INSERT_TASKS_MANY: "INSERT INTO tasks(run_id, name, state) VALUES (%s,%s,%s)",
    Op.UPDATE_RUN: "UPDATE runs SET state=%s, finished_at=%s WHERE run_id=%s",
    Op.UPDATE_TASK: "UPDATE tasks SET state=%s, attempts=%s, failures=%s, agent=%s, error=%s, exit_code=%s,"
    " started_at=%s, finished_at=%s, not_before=%s WHERE run_id=%s AND name=%s",
    Op.INSERT_ATTEMPT: "INSERT INTO attempts(run_id, task, attempt, agent, state, started_at, resume_epoch, resume_seq,"
    " resume_digest, resume_size, resume_kind, resume_created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
    Op.FINISH_ATTEMPT: "UPDATE attempts SET state=%s, finished_at=%s, exit_code=%s, error=%s"
    " WHERE run_id=%s AND task=%s AND attempt=%s",
    Op.UPSERT_OUTPUTS_MANY: "INSERT INTO outputs(run_id, task, name, digest, size, kind, residency)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (run_id, task, name) DO UPDATE SET digest=excluded.digest,"
    " size=excluded.size, kind=excluded.kind, residency=excluded.residency",
    Op.INSERT_ARTIFACTS_MANY: "INSERT INTO artifacts(digest, size, kind, created_at) VALUES (%s,%s,%s,%s)"
    " ON CONFLICT (digest) DO NOTHING",
    Op.UPSERT_AGENT: "INSERT INTO agents(name, identity, capabilities, registered_at, last_seen, instance_id)"
    " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (name) DO UPDATE SET identity=excluded.identity,"
    " capabilities=excluded.capabilities, last_seen=excluded.last_seen, instance_id=excluded.instance_id",
    Op.INSERT_EVENTS_MANY: "INSERT INTO events(seq, ts, run_id, task, state, attempt, agent, detail)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
    Op.INSERT_AUDIT: _AUDIT_INSERT,  # its seq and hashes from the chain, as it is written (_apply)
    Op.UPSERT_CHECKPOINT: "INSERT INTO checkpoints(run_id, task, epoch, seq, digest, size, kind, created_at,"
    " residency) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (run_id, task) DO UPDATE SET epoch=excluded.epoch,"
    " seq=excluded.seq, digest=excluded.digest, size=excluded.size, kind=excluded.kind,"
    " created_at=excluded.created_at, residency=excluded.residency",
    Op.UPSERT_TOKEN: "INSERT INTO join_tokens(token_id, secret_hash, created_at, created_by, expires_at,"
    " uses_left, labels, zones) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (token_id) DO UPDATE SET"
    " secret_hash=excluded.secret_hash, created_at=excluded.created_at, created_by=excluded.created_by,"
    " expires_at=excluded.expires_at, uses_left=excluded.uses_left, labels=excluded.labels, zones=excluded.zones",
    Op.UPDATE_TOKEN_USES: "UPDATE join_tokens SET uses_left=%s WHERE token_id=%s",
    Op.DELETE_TOKEN: "DELETE FROM join_tokens WHERE token_id=%s",
    Op.INSERT_REVOKED: "INSERT INTO revoked_agents(name, revoked_at, revoked_by, reason) VALUES (%s,%s,%s,%s)",
}
SQL.update(rows.spans_sql("%s"))  # trace spans (core/tracing.py)
_MANY = frozenset({Op.INSERT_TASKS_MANY, Op.UPSERT_OUTPUTS_MANY, Op.INSERT_ARTIFACTS_MANY, Op.INSERT_EVENTS_MANY})
_MANY = _MANY | {Op.UPSERT_SPANS_MANY, Op.SPANS_DURABLE_MANY}
SQL.update(rows.stage_metrics_sql("%s"))  # stage metrics (core/stagemetrics.py)
_MANY = _MANY | {Op.UPSERT_STAGE_METRICS_MANY}
assert set(SQL) == set(Op), "every kind of write needs its statement"


def is_postgres_uri(database: str) -> bool:
    """Whether a ``database`` setting names PostgreSQL (a libpq URI)."""
    return database.startswith(("postgresql://", "postgres://"))


def describe(conninfo: str) -> str:
    """Where a connection string points, for messages: host, port, database and user from
    the string or the ``PG*`` environment, never the password."""
    try:
        params = pg_conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "an unparsable PostgreSQL URI"
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    user = str(params.get("user") or os.environ.get("PGUSER") or "")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user or "?")
    return f"host {host} port {port} database {dbname}" + (f" user {user}" if user else "")


def check_uri(conninfo: str) -> None:
    """ConfigError for a URI libpq cannot parse or one with an inline password."""
    try:
        params = pg_conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"database: not a valid PostgreSQL URI ({str(exc).splitlines()[0]})") from None
    if params.get("password"):
        raise ConfigError(
            "database: the PostgreSQL URI carries a password; remove it and put it in a password file "
            "(database_password_file, PGPASSFILE or ~/.pgpass) or PGPASSWORD instead"
        )


class PostgresStore(Store):
    """PostgreSQL through psycopg 3, one writer thread with group commit."""

    def __init__(self, conninfo: str, password: str | None = None) -> None:
        super().__init__()
        check_uri(conninfo)
        self.where = describe(conninfo)
        self._conninfo = conninfo
        self._password = password
        self._conn = self._connect()
        try:
            self._migrate()
            self.sync_chain()
        except BaseException:
            self._conn.close()
            raise
        self._reader: psycopg.Connection[dict[str, Any]] | None = None
        self._reader_lock = threading.Lock()
        #: The leader epoch this scheduler holds (scheduler.leader sets it once it leads): every
        #: write transaction checks it first (``outrider_fence``). None: no check (a store opened
        #: outside a scheduler, as tests and tools do).
        self.fence: int | None = None

    def sync_chain(self) -> None:
        """Take the audit chain's head from the last record on file (at start, and again when a
        standby takes over: the records the previous leader wrote come before ours)."""
        last = self._conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None:
            self.chain.rewind((last["seq"], last["hash"]))
            self.chain.commit()

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        extra: dict[str, Any] = {}
        if self._password is not None:
            extra["password"] = self._password
        if "connect_timeout" not in pg_conninfo.conninfo_to_dict(self._conninfo) and not os.environ.get(
            "PGCONNECT_TIMEOUT"
        ):
            extra["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row, **extra)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())[:500]
            raise ConfigError(f"cannot reach the PostgreSQL database ({self.where}): {reason}") from None
        # An acknowledged change must survive the server's power loss, whatever the server's default.
        conn.execute("SET synchronous_commit = on")
        # A transaction left open by a paused process (SIGSTOP mid-batch) must not hold the leader
        # row (FOR SHARE) past a takeover: the server ends such a session (docs/ha.md).
        conn.execute(f"SET idle_in_transaction_session_timeout = {int(LEADER_TIMEOUT_S * 1000)}".encode())
        return conn

    def lock_session(self) -> LockSession:
        """A dedicated connection for leader election (scheduler.leader), to the same database."""
        version = self._conn.info.server_version
        if version < 140000:  # idle_session_timeout ends a paused leader's session (docs/ha.md)
            raise ConfigError(f"{self.where}: PostgreSQL 14 or newer is needed (this server is {version // 10000})")
        try:
            return LockSession(self._conninfo, self._password)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())[:500]
            raise ConfigError(f"cannot reach the PostgreSQL database ({self.where}): {reason}") from None

    def _migrate(self) -> None:
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),"
                " version BIGINT NOT NULL)"
            )
            conn.execute("INSERT INTO schema_version(one, version) VALUES (true, 0) ON CONFLICT DO NOTHING")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = int(row["version"]) if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.where}: database schema version {version} is newer than this scheduler "
                    f"understands ({len(MIGRATIONS)}); upgrade the scheduler"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                log.info("applying database migration %d", number)
                statements = [script] if "$$" in script else script.split(";")  # a function body has ';'
                for statement in filter(str.strip, statements):
                    conn.execute(statement.encode())
                conn.execute("UPDATE schema_version SET version=%s", (number,))

    # -- reading

    def load(self) -> Loaded:
        with self._conn.transaction():  # one snapshot for the whole load
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # Mapping a big state's rows between the reads may take a while: not "idle" here.
            self._conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            return rows.load(lambda sql: self._conn.execute(sql.encode()).fetchall())

    def events(self, run_id: str, after: int = 0, limit: int = 0) -> list[EventRow]:
        """A run's recorded events after ``after`` (a separate reader connection, which sees
        committed transactions only; a lock, as readers may run on several threads)."""
        sql = "SELECT * FROM events WHERE run_id=%s AND seq>%s ORDER BY seq" + (" LIMIT %s" if limit else "")
        params: tuple[Any, ...] = (run_id, after, limit) if limit else (run_id, after)
        return [rows.event_row(r) for r in self._read(sql, params)]

    def all_events(self, after: int, limit: int) -> list[EventRow]:
        sql = "SELECT * FROM events WHERE seq>%s ORDER BY seq LIMIT %s"
        return [rows.event_row(r) for r in self._read(sql, (after, limit))]

    def with_prefix(self, kind: str, prefix: str, after: str, limit: int) -> list[str]:
        table, key = PREFIX_TABLES[kind]
        low, high = prefix_range(prefix)
        sql = f"SELECT {key} FROM {table} WHERE {key} >= %s AND {key} < %s AND {key} > %s ORDER BY {key} LIMIT %s"
        return [r[key] for r in self._read(sql, (low, high, after, limit))]

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._reader_lock:
            if self._reader is None or self._reader.closed:
                self._reader = self._connect()
            try:
                return self._reader.execute(sql.encode(), params).fetchall()
            except psycopg.OperationalError:
                # The connection is gone (a server restart, a failover): this read fails, the
                # next one connects again. Writes have no such second chance (crash-only).
                self._reader.close()
                raise

    def spans(self, run_id: str) -> list[SpanRow]:
        sql = "SELECT * FROM spans WHERE run_id=%s ORDER BY task, attempt"
        return [rows.span_row(r) for r in self._read(sql, (run_id,))]

    def stage_metrics(self, run_id: str, limit: int) -> rows.MetricsFound:
        return rows.stage_metrics(self._read, run_id, limit, "%s")

    def join_tokens(self) -> list[TokenRow]:
        sql = "SELECT token_id, secret_hash, created_at, created_by, expires_at, uses_left, labels, zones"
        sql += " FROM join_tokens ORDER BY created_at"
        return [TokenRow(**r) for r in self._read(sql, ())]

    def audit_rows(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        while True:
            page = self._read("SELECT * FROM audit WHERE seq>%s ORDER BY seq LIMIT %s", (after_seq, AUDIT_CHUNK))
            for r in page:
                yield rows.audit_record(r)
            if len(page) < AUDIT_CHUNK:
                return
            after_seq = page[-1]["seq"]

    def audit_page(self, after_seq: int, since_ts_us: int, identity: str, limit: int) -> list[AuditRecord]:
        sql = "SELECT * FROM audit WHERE seq>%s AND ts_us>=%s" + (" AND identity=%s" if identity else "")
        params: tuple[Any, ...] = (after_seq, since_ts_us, identity) if identity else (after_seq, since_ts_us)
        return [rows.audit_record(r) for r in self._read(sql + " ORDER BY seq LIMIT %s", (*params, limit))]

    # -- writing (every write of a batch in one transaction: a fencing check can join it later)

    def _apply(self, records: list[Record]) -> None:
        cur = self._conn.cursor()
        for op, params in records:
            if op is Op.INSERT_AUDIT:
                rec = self.chain.append(*params)
                cur.execute(_AUDIT_INSERT, (rec.seq, *params, rec.prev_hash, rec.hash))
            elif op in _MANY:
                cur.executemany(SQL[op].encode(), params)
            else:
                cur.execute(SQL[op].encode(), rows.encoded(op, params))

    def _write(self, records: list[Record]) -> None:
        # Pipeline mode: the batch's statements go to the server without waiting for each
        # answer (one round trip per batch, not one per statement); the first error aborts the
        # rest, is raised at the pipeline's end, and the transaction is rolled back whole.
        conn = self._conn
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                self._check_fence()
                self._apply(records)
                conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            _raise_if_fenced(exc)
            raise

    def _check_fence(self) -> None:
        """First in every write transaction: the leader row still names our epoch (locked FOR
        SHARE until the commit, so a takeover's epoch bump waits for it). A mismatch aborts
        the transaction with SQLSTATE ``OR001``: nothing of it is committed."""
        if self.fence is not None:
            self._conn.execute("SELECT outrider_fence(%s)", (self.fence,))

    def _write_isolated(self, groups: list[list[Record]]) -> list[BaseException | None]:
        conn = self._conn
        outcomes: list[BaseException | None] = []
        conn.execute("BEGIN")
        try:
            self._check_fence()
            for records in groups:
                conn.execute("SAVEPOINT change")
                mark = self.chain.mark()
                try:
                    self._apply(records)
                except BaseException as exc:
                    if not self._refused_by_value(exc):
                        raise
                    conn.execute("ROLLBACK TO SAVEPOINT change")
                    self.chain.rewind(mark)  # its audit record rolled back: the seq is given again
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
                conn.execute("RELEASE SAVEPOINT change")
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            _raise_if_fenced(exc)
            raise
        return outcomes

    def _refused_by_value(self, exc: BaseException) -> bool:
        # Constraint violations (a NaN against not_nan, a duplicate key) and values out of a
        # type's range or not representable (NUL in text) are about the values written; a value
        # psycopg cannot adapt is a plain ProgrammingError raised before anything is sent. A
        # lost connection, an I/O error or a server shutting down (OperationalError and the
        # rest) is a failure of the database itself: the crash-only path.
        if isinstance(exc, (psycopg.errors.IntegrityError, psycopg.errors.DataError)):
            return True
        if type(exc) is psycopg.ProgrammingError:
            return True
        return super()._refused_by_value(exc)

    def _close_backend(self) -> None:
        self._conn.close()
        if self._reader is not None:
            self._reader.close()


#: The SQLSTATE ``outrider_fence`` raises (class "OR": ours, outside PostgreSQL's own classes).
FENCED_SQLSTATE = "OR001"


def _raise_if_fenced(exc: BaseException) -> None:
    """A failed fencing check (possibly surfacing as the pipeline's abort) as :class:`Deposed`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.Error) and seen.sqlstate == FENCED_SQLSTATE:
            raise Deposed(" ".join(str(seen).split())[:300]) from None
        seen = seen.__cause__ or seen.__context__
    return None


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """Roll back an open transaction; a connection that is gone has nothing to roll back."""
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")
