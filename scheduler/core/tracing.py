"""Traces: one per run, W3C trace context, spans per attempt with clock-corrected times.

A run's trace id is made when it is submitted (``Run.trace_id``, 32 hex digits). Every
span id is derived from it (:func:`span_id`), so nothing but the times is stored (one row
per attempt, the ``spans`` table):

* ``run``: the root span, from the run's submission to its end;
* ``attempt``: one per lease of a task, the parent of the stage's ``TRACEPARENT``
  (:func:`traceparent`), so whatever the stage records joins the run's trace;
* under each attempt: ``queue`` (ready -> leased, scheduler clock), ``transfer.fetch``
  (the agent fetching the code and inputs), ``execute`` (the stage process's start to its
  exit), ``transfer.upload`` (its outputs uploaded), ``commit`` (the completion received
  -> durable, scheduler clock).

The agent's times come in its :class:`~scheduler.core.messages.Completion`, on its wall
clock; :func:`corrected` moves them onto ours by the agent's measured offset
(:attr:`AgentState.sched_offset`) and keeps them inside what the scheduler saw itself
(the grant and the completion's arrival), so a trace never shows a stage running before
it was leased because of a clock estimate.

An attempt's times are written with its completion, in the completion's own transaction;
never a round trip of their own per span. The scheduler keeps when each running attempt
became ready in memory until then (an attempt lost, or running across a scheduler restart,
has no queueing span). The commit span's end is known only once the completion is durable:
the ends are written together, a second later (:data:`FLUSH_S`), one small transaction for
every completion of that second (each span row's pages are written once more per second, not
once more per completion). ``Tracer.enabled = False`` records nothing (the bench compares
throughput with and without).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Callable

from scheduler.core.messages import Completion
from scheduler.core.model import Attempt, AttemptState, Run, Task, TaskState
from scheduler.core.txn import Journal, Txn
from scheduler.store.base import SpanRow

log = logging.getLogger(__name__)

ROOT = "run"
ATTEMPT = "attempt"
QUEUE = "queue"
FETCH = "transfer.fetch"
EXECUTE = "execute"
UPLOAD = "transfer.upload"
COMMIT = "commit"
#: How long commit spans' ends are gathered before they are written, in one transaction.
FLUSH_S = 1.0
#: Ready times kept past this many are pruned of attempts that ended without a completion.
PRUNE_AT = 65536

Durable = tuple[float, str, str, int]  # (durable_at, run_id, task, attempt): changes.spans_durable


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """A span as `outrider trace` shows it (W3C ids; times on the scheduler's wall clock)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start: float
    end: float  # 0: not ended
    task: str = ""
    attempt: int = 0
    agent: str = ""
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)


def span_id(trace_id: str, *parts: object) -> str:
    """The span id (16 hex digits, never all zeros) of the span ``parts`` names in the trace."""
    h = hashlib.sha256("\0".join((trace_id, *map(str, parts))).encode()).hexdigest()[:16]
    return h if h != "0" * 16 else "0" * 15 + "1"


def root_id(trace_id: str) -> str:
    return span_id(trace_id, ROOT)


def attempt_id(trace_id: str, task: str, attempt: int) -> str:
    return span_id(trace_id, task, attempt)


def traceparent(trace_id: str, task: str, attempt: int) -> str:
    """The W3C ``traceparent`` a stage gets: the run's trace, its attempt span as parent."""
    return f"00-{trace_id}-{attempt_id(trace_id, task, attempt)}-01"


def corrected(agent_ts: float, offset: float, lo: float, hi: float) -> float:
    """An agent wall-clock time on the scheduler's clock (``offset``: ours minus the agent's),
    kept within ``[lo, hi]``, what the scheduler saw itself (``hi`` < ``lo``: ``lo``)."""
    return max(lo, min(agent_ts + offset, hi))


def agent_spans(c: Completion, offset: float, granted: float, received: float) -> list[tuple[str, float, float]]:
    """The transfer and execution spans a completion reports: (name, start, end), corrected."""

    def at(ts: float) -> float:
        return corrected(ts, offset, granted, received)

    out = []
    if c.started_at and c.fetched_at:
        out.append((FETCH, at(c.started_at), at(c.fetched_at)))
    if c.exec_started_at:
        end = c.exec_exited_at or c.upload_started_at or c.finished_at
        out.append((EXECUTE, at(c.exec_started_at), at(end) if end else received))
    if c.upload_started_at:
        out.append((UPLOAD, at(c.upload_started_at), at(c.finished_at) if c.finished_at else received))
    return out


class Tracer:
    """Records each attempt's trace times with its completion, and builds a run's trace."""

    def __init__(
        self,
        journal: Journal,
        *,
        wall: Callable[[], float],
        clock: Callable[[], float],
        find: Callable[[str, str], Task | None] = lambda run_id, task: None,
    ) -> None:
        self._journal = journal
        self._wall = wall
        self._clock = clock
        self._find = find
        self.enabled = True
        #: Spans an exporter is given once they end (scheduler.otlp), or None.
        self.sink: Callable[[list[Span]], None] | None = None
        self._queued: dict[tuple[str, str], tuple[int, float]] = {}  # running attempts: (epoch, ready wall)
        self._pending: list[Durable] = []  # commit spans ended, not yet written
        self._flush: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ recording

    def granted(self, t: Task, wall: float, mono: float) -> None:
        """A lease of ``t`` was granted now: when it became ready (kept until its completion)."""
        if not self.enabled:
            return
        if len(self._queued) >= PRUNE_AT:
            self._prune()
        ready = wall - max(0.0, mono - t.ready_at) if t.ready_at else wall
        self._queued[(t.run_id, t.name)] = (t.attempts, ready)

    def _prune(self) -> None:
        """Forget the ready times of attempts that ended without a completion (lost, cancelled)."""
        for key, (epoch, _) in list(self._queued.items()):
            t = self._find(*key)
            if t is None or t.state is not TaskState.RUNNING or t.attempts != epoch:
                del self._queued[key]

    def completed(self, txn: Txn, run: Run, t: Task, c: Completion, offset: float, received: float) -> None:
        """``t``'s completion arrived at ``received`` (its agent's clock is ``offset`` behind
        ours): its trace times, on the completion's own transaction (the commit span's end once
        ``txn`` is durable)."""
        if not self.enabled:
            return
        last = t.history[-1] if t.history else None
        granted = last.started_at if last is not None and last.attempt == t.attempts else received
        epoch, queued = self._queued.pop((t.run_id, t.name), (0, 0.0))
        times = {name: (s, e) for name, s, e in agent_spans(c, offset, granted, received)}
        fetch, execute, upload = (times.get(n, (0.0, 0.0)) for n in (FETCH, EXECUTE, UPLOAD))
        row = (
            t.run_id,
            t.name,
            t.attempts,
            t.agent,
            queued if epoch == t.attempts else 0.0,
            granted,
            *fetch,
            *execute,
            *upload,
            received,
            0.0,
        )
        txn.changes.spans(row)

        def durable() -> None:
            end = self._wall()
            self._pending.append((end, t.run_id, row[1], row[2]))
            self._schedule()
            if self.sink is not None:
                self._export(run, t, SpanRow(*row[1:13], end))

        txn.after(durable)

    def _take(self) -> list[Durable]:
        pending, self._pending = self._pending, []
        return pending

    def _schedule(self) -> None:
        if self._flush is None:
            try:
                self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write now
                self.flush()

    def flush(self) -> None:
        """Write the commit spans' ends still waiting for a transaction."""
        self._flush = None
        rows = self._take()
        if rows:
            txn = Txn()
            txn.changes.spans_durable(rows)
            self._journal.commit(txn)

    def _export(self, run: Run, t: Task, row: SpanRow) -> None:
        assert self.sink is not None
        spans = _children(run.trace_id, row, 0.0)
        history = [a for a in t.history if a.attempt == row.attempt]
        if history:
            spans.append(_attempt_span(run, t.name, history[0], spans))
        if run.terminal:
            spans = _covering([_root(run), *spans])
        try:
            self.sink(spans)
        except Exception:  # an exporter never stops the scheduler
            log.warning("trace export failed", exc_info=True)

    # ------------------------------------------------------------------ reading

    async def trace(self, run: Run) -> list[Span]:
        """``run``'s trace: the root, one span per attempt, and each attempt's spans."""
        await self._journal.barrier()
        stored = await asyncio.to_thread(self._journal.store.spans, run.run_id)
        return build(run, stored, self._pending)


def _children(trace_id: str, r: SpanRow, durable: float) -> list[Span]:
    """An attempt's spans from its recorded times, in order (those it did not reach left out)."""
    parent = attempt_id(trace_id, r.task, r.attempt)
    out = []
    for name, start, end in (
        (QUEUE, r.queued_at, r.granted_at),
        (FETCH, r.fetch_start, r.fetch_end),
        (EXECUTE, r.exec_start, r.exec_end),
        (UPLOAD, r.upload_start, r.upload_end),
        (COMMIT, r.received_at, r.durable_at or durable),
    ):
        if start:
            sid = span_id(trace_id, r.task, r.attempt, name)
            out.append(Span(trace_id, sid, parent, name, start, end, r.task, r.attempt, r.agent))
    return out


def _root(run: Run) -> Span:
    attrs = {"run_id": run.run_id, "pipeline": run.pipeline, "state": run.state.value, "submitter": run.submitter}
    end = run.finished_at if run.terminal else 0.0
    return Span(run.trace_id, root_id(run.trace_id), "", ROOT, run.created_at, end, attributes=attrs)


def _attempt_span(run: Run, task: str, a: Attempt, children: list[Span]) -> Span:
    ended = a.state is not AttemptState.RUNNING
    start = min([a.started_at, *(s.start for s in children)])
    end = max([a.finished_at, *(s.end for s in children)]) if ended else 0.0
    attrs = {"state": a.state.value, "exit_code": str(a.exit_code)}
    if a.error:
        attrs["error"] = a.error[:200]
    tid = run.trace_id
    sid = attempt_id(tid, task, a.attempt)
    return Span(tid, sid, root_id(tid), ATTEMPT, start, end, task, a.attempt, a.agent, attrs)


def build(run: Run, stored: list[SpanRow], pending: list[Durable] | None = None) -> list[Span]:
    """A run's spans from the recorded times (``pending``: commit ends not yet written), root
    first, then the attempts by start, each followed by its spans."""
    durable = {(r[2], r[3]): r[0] for r in pending or () if r[1] == run.run_id}
    rows = {(r.task, r.attempt): r for r in stored}
    out = [_root(run)]
    attempts = [(name, a) for name, t in run.tasks.items() for a in t.history]
    attempts.sort(key=lambda x: (x[1].started_at, x[0], x[1].attempt))
    for name, a in attempts:
        r = rows.get((name, a.attempt))
        children = _children(run.trace_id, r, durable.get((name, a.attempt), 0.0)) if r is not None else []
        out.append(_attempt_span(run, name, a, children))
        out.extend(children)
    return _covering(out)


def _covering(spans: list[Span]) -> list[Span]:
    """The root (first) ended no earlier than its last span: the run's end is recorded with its
    last completion, which is durable (the commit span's end) a moment later."""
    root = spans[0]
    last = max(s.end for s in spans)
    if root.end and last > root.end:
        spans[0] = dataclasses.replace(root, end=last)
    return spans
