"""The writes one change to the scheduler's state makes, as backend-neutral records.

The core never writes SQL: it describes each write here (what, and the values as
they are *now*: the objects keep changing after the call), and a store backend
turns every kind of write into its own statement (:mod:`scheduler.store.sqlite`).
A second backend implements the same :class:`Op` kinds and nothing in the core
changes.
"""

from __future__ import annotations

import enum
from typing import Any

from scheduler.core.messages import Capabilities, Checkpoint
from scheduler.core.model import AttemptState, Run, Task


class Op(enum.Enum):
    """Kinds of write. ``*_MANY`` carry a list of rows, the others one row."""

    INSERT_RUN = "insert_run"  #: (run_id, seq, pipeline, spec, state, submitter, trace_id, created_at, submit_key)
    INSERT_TASKS_MANY = "insert_tasks"  #: [(run_id, name, state)]
    UPDATE_RUN = "update_run"  #: (state, finished_at, run_id)
    UPDATE_TASK = "update_task"  #: (state, attempts, failures, agent, error, exit_code, started_at,
    #: finished_at, not_before, run_id, name)
    INSERT_ATTEMPT = "insert_attempt"  #: (run_id, task, attempt, agent, state, started_at,
    #: resume_epoch, resume_seq, resume_digest, resume_size, resume_kind, resume_created_at)
    FINISH_ATTEMPT = "finish_attempt"  #: (state, finished_at, exit_code, error, run_id, task, attempt)
    UPSERT_OUTPUTS_MANY = "upsert_outputs"  #: [(run_id, task, name, digest, size, kind, residency)]
    INSERT_ARTIFACTS_MANY = "insert_artifacts"  #: [(digest, size, kind, created_at)], existing kept
    UPSERT_AGENT = "upsert_agent"  #: (name, identity, capabilities, registered_at, last_seen, instance_id)
    INSERT_EVENTS_MANY = "insert_events"  #: [(seq, ts, run_id, task, state, attempt, agent, detail)]
    #: [(run_id, task, attempt, agent, queued_at, granted_at, fetch_start, fetch_end, exec_start, exec_end,
    #: upload_start, upload_end, received_at, durable_at)]: an attempt's trace times (core/tracing.py)
    UPSERT_SPANS_MANY = "upsert_spans"
    SPANS_DURABLE_MANY = "spans_durable"  #: [(durable_at, run_id, task, attempt)]: its commit span's end
    UPSERT_CHECKPOINT = "upsert_checkpoint"  #: (run_id, task, epoch, seq, digest, size, kind, created_at,
    #: residency): the latest accepted checkpoint of a task
    INSERT_AUDIT = "insert_audit"  #: (ts_us, identity, action, target, outcome, detail): the writer gives it
    #: its seq, prev_hash and hash in commit order (scheduler.core.audit.Chain)
    UPSERT_TOKEN = "upsert_token"  #: (token_id, secret_hash, created_at, created_by, expires_at, uses_left,
    #: labels, zones): a join token (scheduler.core.tokens)
    UPDATE_TOKEN_USES = "update_token_uses"  #: (uses_left, token_id)
    DELETE_TOKEN = "delete_token"  #: (token_id,)
    INSERT_REVOKED = "insert_revoked"  #: (name, revoked_at, revoked_by, reason): an agent name revoked for good
    UPSERT_STAGE_METRICS_MANY = "upsert_stage_metrics"  #: [(run_id, task, attempt, name, value, step, ts,
    #: count)]: the last value of each name a stage logged (scheduler.core.stagemetrics)
    UPSERT_METRICS_SKIPPED = "upsert_metrics_skipped"  #: (run_id, task, attempt, count, reason)


Record = tuple[Op, Any]


def zones_text(zones: frozenset[str] | None) -> str | None:
    """Residency as stored: comma-separated zones, or None for anywhere."""
    return None if zones is None else ",".join(sorted(zones))


def zones_of(text: str | None) -> frozenset[str] | None:
    """The inverse of :func:`zones_text`."""
    return None if text is None else frozenset(z for z in text.split(",") if z)


class Changes:
    """The writes of one logical change, appended atomically to a store's queue.

    ``spec`` and ``capabilities`` values are immutable domain objects; a backend
    encodes them when it writes (on its writer thread, off the event loop).
    """

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __bool__(self) -> bool:
        return bool(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def insert_run(self, run: Run) -> None:
        self.records.append(
            (
                Op.INSERT_RUN,
                (
                    run.run_id,
                    run.seq,
                    run.pipeline,
                    run.spec,
                    run.state.value,
                    run.submitter,
                    run.trace_id,
                    run.created_at,
                    run.submit_key,
                ),
            )
        )
        self.records.append((Op.INSERT_TASKS_MANY, [(run.run_id, t.name, t.state.value) for t in run.tasks.values()]))

    def update_run(self, run: Run) -> None:
        self.records.append((Op.UPDATE_RUN, (run.state.value, run.finished_at, run.run_id)))

    def update_task(self, t: Task) -> None:
        self.records.append(
            (
                Op.UPDATE_TASK,
                (
                    t.state.value,
                    t.attempts,
                    t.failures,
                    t.agent,
                    t.error,
                    t.exit_code,
                    t.started_at,
                    t.finished_at,
                    t.not_before,
                    t.run_id,
                    t.name,
                ),
            )
        )

    def insert_attempt(self, t: Task, started_at: float) -> None:
        cp = t.resumed_from
        resume = (0, 0, "", 0, "", 0.0)
        if cp is not None:
            resume = (cp.lease.epoch, cp.seq, cp.digest, cp.size, cp.kind, cp.created_at)
        row = (t.run_id, t.name, t.attempts, t.agent, AttemptState.RUNNING.value, started_at, *resume)
        self.records.append((Op.INSERT_ATTEMPT, row))

    def upsert_checkpoint(self, t: Task, cp: Checkpoint, residency: frozenset[str] | None) -> None:
        """A task's latest accepted checkpoint (replacing the one before)."""
        row = (
            t.run_id,
            t.name,
            cp.lease.epoch,
            cp.seq,
            cp.digest,
            cp.size,
            cp.kind,
            cp.created_at,
            zones_text(residency),
        )
        self.records.append((Op.UPSERT_CHECKPOINT, row))

    def finish_attempt(self, t: Task, state: AttemptState, finished_at: float, exit_code: int, error: str) -> None:
        self.records.append(
            (Op.FINISH_ATTEMPT, (state.value, finished_at, exit_code, error, t.run_id, t.name, t.attempts))
        )

    def insert_outputs(self, t: Task, created_at: float) -> None:
        outs = list(t.outputs.values())
        if not outs:
            return
        self.records.append(
            (
                Op.UPSERT_OUTPUTS_MANY,
                [(t.run_id, t.name, o.name, o.digest, o.size, o.kind, zones_text(o.residency)) for o in outs],
            )
        )
        self.insert_artifacts([(o.digest, o.size, o.kind, created_at) for o in outs])

    def insert_artifacts(self, rows: list[tuple[str, int, str, float]]) -> None:
        """Artifacts now in the store: (digest, size, kind, created_at); known ones are kept as they are."""
        self.records.append((Op.INSERT_ARTIFACTS_MANY, rows))

    def upsert_agent(self, name: str, identity: str, caps: Capabilities, now: float, instance_id: str = "") -> None:
        """Record an agent; on a re-registration its first ``registered_at`` is kept."""
        self.records.append((Op.UPSERT_AGENT, (name, identity, caps, now, now, instance_id)))

    def events(self, rows: list[tuple[int, float, str, str, str, int, str, str]]) -> None:
        """Events: (seq, ts, run_id, task, state, attempt, agent, detail) each; ``seq`` is the
        event's place in the durable history, given by the state machine."""
        if rows:
            self.records.append((Op.INSERT_EVENTS_MANY, rows))

    def event(
        self, seq: int, ts: float, run_id: str, task: str, state: str, attempt: int, agent: str, detail: str
    ) -> None:
        self.records.append((Op.INSERT_EVENTS_MANY, [(seq, ts, run_id, task, state, attempt, agent, detail)]))

    def spans(self, row: tuple[Any, ...]) -> None:
        """An attempt's trace times (:mod:`scheduler.core.tracing`), scheduler wall clock, 0 where
        not reached: (run_id, task, attempt, agent, queued_at, granted_at, fetch_start, fetch_end,
        exec_start, exec_end, upload_start, upload_end, received_at, durable_at); replaces its row."""
        self.records.append((Op.UPSERT_SPANS_MANY, [row]))

    def spans_durable(self, rows: list[tuple[float, str, str, int]]) -> None:
        """When attempts' completions became durable: (durable_at, run_id, task, attempt) each."""
        if rows:
            self.records.append((Op.SPANS_DURABLE_MANY, rows))

    def upsert_token(self, row: tuple[str, str, float, str, float, int, str, str]) -> None:
        """A join token: (token_id, secret_hash, created_at, created_by, expires_at, uses_left, labels, zones)."""
        self.records.append((Op.UPSERT_TOKEN, row))

    def token_uses(self, token_id: str, uses_left: int) -> None:
        self.records.append((Op.UPDATE_TOKEN_USES, (uses_left, token_id)))

    def delete_token(self, token_id: str) -> None:
        self.records.append((Op.DELETE_TOKEN, (token_id,)))

    def insert_revoked(self, name: str, revoked_at: float, revoked_by: str, reason: str) -> None:
        """An agent name on the deny-list (:mod:`scheduler.core.revocation`); never removed."""
        self.records.append((Op.INSERT_REVOKED, (name, revoked_at, revoked_by, reason)))

    def stage_metrics(self, rows: list[tuple[str, str, int, str, float, int | None, float, int]]) -> None:
        """What an attempt's stage logged (:mod:`scheduler.core.stagemetrics`): (run_id, task, attempt,
        name, value, step, ts, count) each; a name written again for the attempt is replaced."""
        if rows:
            self.records.append((Op.UPSERT_STAGE_METRICS_MANY, rows))

    def metrics_skipped(self, run_id: str, task: str, attempt: int, count: int, reason: str) -> None:
        """Lines of an attempt's metrics file not stored, and why the first was not."""
        self.records.append((Op.UPSERT_METRICS_SKIPPED, (run_id, task, attempt, count, reason)))

    def audit(self, ts_us: int, identity: str, action: str, target: str, outcome: str, detail: str) -> None:
        """An audit record (see :mod:`scheduler.core.audit`); chained as it is written."""
        self.records.append((Op.INSERT_AUDIT, (ts_us, identity, action, target, outcome, detail)))
