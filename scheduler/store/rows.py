"""What every SQL backend reads back the same way: the start-up load and the audit rows.

The queries here are plain SQL that SQLite and PostgreSQL both understand, and the rows
are read by column name (``sqlite3.Row`` and psycopg's ``dict_row`` both allow it), so
the two backends share one mapping from tables to :class:`~scheduler.store.base.Loaded`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from scheduler.api import wire
from scheduler.core.auditchain import AuditRecord
from scheduler.core.messages import Checkpoint, LeaseRef
from scheduler.store.base import (
    AgentRow,
    AttemptRow,
    CheckpointRow,
    EventRow,
    Loaded,
    MetricRow,
    MetricSkipRow,
    OutputRow,
    RevokedRow,
    RunRow,
    SpanRow,
    TaskRow,
)
from scheduler.store.changes import Op, zones_of


class Row(Protocol):
    """A row addressable by column name (``sqlite3.Row``, or a dict from psycopg's ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


#: A query with no parameters, its rows addressable by column name.
Query = Callable[[str], Iterable[Any]]

AUDIT_FIELDS = ("seq", "ts_us", "identity", "action", "target", "outcome", "detail", "prev_hash", "hash")


def encoded(op: Op, params: Any) -> Any:
    """Domain values that are stored as their wire encoding, encoded (on the writer thread)."""
    if op is Op.INSERT_RUN:
        return params[:3] + (wire.encode_pipeline(params[3]),) + params[4:]
    if op is Op.UPSERT_AGENT:
        return params[:2] + (wire.encode_capabilities(params[2]),) + params[3:]
    return params


def load(q: Query) -> Loaded:
    """Everything the core rebuilds its memory from, read with ``q``."""
    return Loaded(
        runs=[
            RunRow(
                r["run_id"],
                r["seq"],
                wire.decode_pipeline(bytes(r["spec"])),
                r["state"],
                r["submitter"],
                r["trace_id"],
                r["created_at"],
                r["finished_at"],
                r["submit_key"],
            )
            for r in q("SELECT * FROM runs ORDER BY seq")
        ],
        tasks=[
            TaskRow(
                r["run_id"],
                r["name"],
                r["state"],
                r["attempts"],
                r["failures"],
                r["agent"],
                r["error"],
                r["exit_code"],
                r["started_at"],
                r["finished_at"],
                r["not_before"],
            )
            for r in q("SELECT * FROM tasks")
        ],
        outputs=[
            OutputRow(r["run_id"], r["task"], r["name"], r["digest"], r["size"], r["kind"], zones_of(r["residency"]))
            for r in q("SELECT * FROM outputs")
        ],
        agents=[
            AgentRow(
                r["name"],
                r["identity"],
                wire.decode_capabilities(bytes(r["capabilities"])),
                r["registered_at"],
                r["last_seen"],
                r["instance_id"],
            )
            for r in q("SELECT * FROM agents")
        ],
        attempts=[_attempt(r) for r in q("SELECT * FROM attempts ORDER BY run_id, task, attempt")],
        checkpoints=[
            CheckpointRow(
                Checkpoint(
                    LeaseRef(r["run_id"], r["task"], r["epoch"]),
                    r["digest"],
                    r["size"],
                    r["kind"],
                    r["seq"],
                    r["created_at"],
                ),
                zones_of(r["residency"]),
            )
            for r in q("SELECT * FROM checkpoints")
        ],
        revoked=[
            RevokedRow(r["name"], r["revoked_at"], r["revoked_by"], r["reason"])
            for r in q("SELECT * FROM revoked_agents ORDER BY revoked_at, name")
        ],
        event_seq=next(iter(q("SELECT coalesce(max(seq), 0) AS n FROM events")))["n"],
        run_event_seq={
            r["run_id"]: r["n"] for r in q("SELECT run_id, max(seq) AS n FROM events WHERE task = '' GROUP BY run_id")
        },
    )


def _attempt(r: Row) -> AttemptRow:
    resumed = None
    if r["resume_digest"]:
        resumed = Checkpoint(
            LeaseRef(r["run_id"], r["task"], r["resume_epoch"]),
            r["resume_digest"],
            r["resume_size"],
            r["resume_kind"],
            r["resume_seq"],
            r["resume_created_at"],
        )
    return AttemptRow(
        r["run_id"],
        r["task"],
        r["attempt"],
        r["agent"],
        r["state"],
        r["started_at"],
        r["finished_at"],
        r["exit_code"],
        r["error"],
        resumed,
    )


def event_row(r: Row) -> EventRow:
    return EventRow(r["seq"], r["ts"], r["run_id"], r["task"], r["state"], r["attempt"], r["agent"], r["detail"])


def span_row(r: Row) -> SpanRow:
    return SpanRow(r["task"], r["attempt"], r["agent"], *(r[c] for c in SPAN_TIMES))


#: The time columns of the spans table, in SpanRow's order.
SPAN_TIMES = (
    "queued_at",
    "granted_at",
    "fetch_start",
    "fetch_end",
    "exec_start",
    "exec_end",
    "upload_start",
    "upload_end",
    "received_at",
    "durable_at",
)


def spans_sql(mark: str) -> dict[Op, str]:
    """The writes of trace spans (:mod:`scheduler.core.tracing`), the same on both backends but
    for the placeholder (``mark``): an attempt's row (replacing one written before), its end."""
    cols = ("agent", *SPAN_TIMES)
    upsert = (
        f"INSERT INTO spans(run_id, task, attempt, {', '.join(cols)}) VALUES ({','.join([mark] * (3 + len(cols)))})"
        " ON CONFLICT (run_id, task, attempt) DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in cols)
    )
    durable = f"UPDATE spans SET durable_at={mark} WHERE run_id={mark} AND task={mark} AND attempt={mark}"
    return {Op.UPSERT_SPANS_MANY: upsert, Op.SPANS_DURABLE_MANY: durable}


def audit_record(r: Row) -> AuditRecord:
    return AuditRecord(*(r[f] for f in AUDIT_FIELDS))


# --------------------------------------------------------------------------- stage metrics
#: Their writes (:mod:`scheduler.core.stagemetrics`), as both backends run them: ``?`` placeholders,
#: which PostgreSQL's statements spell ``%s`` (``mark``).
STAGE_METRICS_SQL: dict[Op, str] = {
    Op.UPSERT_STAGE_METRICS_MANY: "INSERT INTO stage_metrics(run_id, task, attempt, name, value, step, ts, count)"
    " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (run_id, task, attempt, name) DO UPDATE SET value=excluded.value,"
    " step=excluded.step, ts=excluded.ts, count=excluded.count",
    Op.UPSERT_METRICS_SKIPPED: "INSERT INTO stage_metrics_skipped(run_id, task, attempt, count, reason)"
    " VALUES (?,?,?,?,?) ON CONFLICT (run_id, task, attempt) DO UPDATE SET count=excluded.count,"
    " reason=excluded.reason",
}
_METRICS = (
    "SELECT task, attempt, name, value, step, ts, count FROM stage_metrics WHERE run_id=?"
    " ORDER BY task, attempt, name LIMIT ?"
)
_SKIPS = "SELECT task, attempt, count, reason FROM stage_metrics_skipped WHERE run_id=? ORDER BY task, attempt LIMIT ?"


#: A run's stage metrics and the skipped lines of its attempts (``Store.stage_metrics``).
MetricsFound = tuple[list[MetricRow], list[MetricSkipRow]]


def stage_metrics_sql(mark: str) -> dict[Op, str]:
    """:data:`STAGE_METRICS_SQL` with the backend's placeholder."""
    return {op: sql.replace("?", mark) for op, sql in STAGE_METRICS_SQL.items()}


def stage_metrics(
    read: Callable[[str, tuple[Any, ...]], Iterable[Row]], run_id: str, limit: int, mark: str = "?"
) -> MetricsFound:
    """A run's stage metrics (at most ``limit``) and skipped lines, read with ``read(sql, params)``."""
    found = [
        MetricRow(r["task"], r["attempt"], r["name"], r["value"], r["step"], r["ts"], r["count"])
        for r in read(_METRICS.replace("?", mark), (run_id, limit))
    ]
    skips = read(_SKIPS.replace("?", mark), (run_id, limit))
    return found, [MetricSkipRow(r["task"], r["attempt"], r["count"], r["reason"]) for r in skips]
