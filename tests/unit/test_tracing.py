"""Traces (scheduler/core/tracing.py): W3C ids, clock correction, the spans an attempt records."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from outrider.protocol import Outcome
from scheduler.core import tracing
from scheduler.core.messages import Completion, LeaseRef
from scheduler.core.model import Attempt, AttemptState, TaskState
from scheduler.core.tracing import Tracer, agent_spans, corrected
from scheduler.store.base import SpanRow
from scheduler.store.changes import Changes, Op
from tests.helpers.backends import Backend
from tests.unit.test_store import make_run as _run
from tests.unit.test_store import with_store

TRACE = "ab" * 16


def test_traceparent_is_w3c_and_names_the_attempt_span() -> None:
    tp = tracing.traceparent(TRACE, "train", 2)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp)
    assert tp.split("-")[1] == TRACE and tp.split("-")[2] == tracing.attempt_id(TRACE, "train", 2)
    ids = {tracing.root_id(TRACE), tracing.attempt_id(TRACE, "train", 1), tracing.attempt_id(TRACE, "train", 2)}
    assert len(ids) == 3  # distinct per attempt, stable per (trace, task, attempt)
    assert tracing.attempt_id(TRACE, "train", 1) != tracing.attempt_id("cd" * 16, "train", 1)


def test_clock_correction_moves_agent_time_onto_ours_within_what_we_saw() -> None:
    # The agent's clock runs 5 s behind ours: offset +5.
    assert corrected(100.0, 5.0, 90.0, 120.0) == 105.0
    # An estimate that would put the stage before its grant or after its report is clamped.
    assert corrected(80.0, 5.0, 90.0, 120.0) == 90.0
    assert corrected(130.0, 5.0, 90.0, 120.0) == 120.0


def test_agent_spans_from_a_completion_are_corrected_and_ordered() -> None:
    c = Completion(
        LeaseRef("r", "t", 1),
        Outcome.SUCCEEDED,
        started_at=1000.0,
        fetched_at=1001.0,
        exec_started_at=1001.5,
        exec_exited_at=1004.0,
        upload_started_at=1004.2,
        finished_at=1005.0,
    )
    # Agent 2 s ahead of us (offset -2); granted at 997.5, report received at 1003.5.
    spans = agent_spans(c, -2.0, 997.5, 1003.5)
    assert spans == [
        (tracing.FETCH, 998.0, 999.0),
        (tracing.EXECUTE, 999.5, 1002.0),
        (tracing.UPLOAD, 1002.2, 1003.0),
    ]
    # A stage that never started (or a completion from an older agent): no agent spans.
    assert agent_spans(Completion(LeaseRef("r", "t", 1), Outcome.FAILED), 0.0, 1.0, 2.0) == []


class _Store:
    def __init__(self) -> None:
        self.rows: dict[tuple, list] = {}  # (run, task, attempt) -> the row's values

    def spans(self, run_id: str) -> list[SpanRow]:
        return [SpanRow(*r[1:]) for k, r in self.rows.items() if k[0] == run_id]


class _Journal:
    """Commits at once (as a store's writer would, later), keeping the span rows."""

    def __init__(self) -> None:
        self.store = _Store()
        self.commits = 0

    def commit(self, txn) -> asyncio.Future[None]:
        self.commits += 1
        for op, rows in txn.changes.records:
            for r in rows:
                if op is Op.UPSERT_SPANS_MANY:
                    self.store.rows[r[:3]] = list(r)
                elif op is Op.SPANS_DURABLE_MANY:
                    self.store.rows[r[1:]][-1] = r[0]
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        for effect in txn._after:
            effect()
        return fut

    def barrier(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_an_attempt_records_queue_transfer_execute_commit_and_builds_one_tree() -> None:
    from scheduler.core.txn import Txn

    async def go() -> None:
        run = _run("r1")
        t = run.tasks["a"]
        now = [1000.0]
        journal = _Journal()
        tracer = Tracer(journal, wall=lambda: now[0], clock=lambda: 50.0)  # type: ignore[arg-type]
        # Ready at mono 47, leased at mono 50 / wall 1000: queued 3 s.
        t.ready_at, t.attempts, t.agent = 47.0, 1, "edge"
        t.history.append(Attempt(1, "edge", AttemptState.RUNNING, 1000.0))
        tracer.granted(t, 1000.0, 50.0)
        c = Completion(
            LeaseRef("r1", "a", 1),
            Outcome.SUCCEEDED,
            started_at=900.5,
            fetched_at=901.0,
            exec_started_at=901.0,
            exec_exited_at=905.0,
        )
        txn = Txn()
        now[0] = 1006.0
        tracer.completed(txn, run, t, c, 100.0, received=1006.0)  # the agent's clock is 100 s behind
        now[0] = 1006.25  # durable a quarter second later
        journal.commit(txn)
        assert journal.commits == 1  # the attempt's times ride its completion: no write of their own
        t.history[-1] = Attempt(1, "edge", AttemptState.SUCCEEDED, 1000.0, finished_at=1005.0)
        spans = await tracer.trace(run)
        by_name = {s.name: s for s in spans}
        assert [s.name for s in spans] == ["run", "attempt", "queue", "transfer.fetch", "execute", "commit"]
        assert (by_name["queue"].start, by_name["queue"].end) == (997.0, 1000.0)
        assert (by_name["transfer.fetch"].start, by_name["transfer.fetch"].end) == (1000.5, 1001.0)
        assert (by_name["execute"].start, by_name["execute"].end) == (1001.0, 1005.0)
        # The commit's end (durable) comes from memory until it is written...
        assert (by_name["commit"].start, by_name["commit"].end) == (1006.0, 1006.25)
        assert journal.store.rows[("r1", "a", 1)][-1] == 0.0
        attempt = by_name["attempt"]
        assert (attempt.start, attempt.end) == (997.0, 1006.25)
        assert attempt.parent_span_id == by_name["run"].span_id == tracing.root_id(run.trace_id)
        assert all(by_name[n].parent_span_id == attempt.span_id for n in ("queue", "execute", "commit"))
        assert all(s.trace_id == run.trace_id for s in spans)
        # ... with the other ends of that second, in one transaction of their own.
        tracer.flush()
        assert journal.store.rows[("r1", "a", 1)][-1] == 1006.25
        assert await tracer.trace(run) == spans

    asyncio.run(go())


def test_the_commit_ends_of_a_second_are_written_together() -> None:
    from scheduler.core.txn import Txn

    async def go() -> None:
        run = _run("r4")
        journal = _Journal()
        tracer = Tracer(journal, wall=lambda: 7.0, clock=lambda: 1.0)  # type: ignore[arg-type]
        for name in ("a", "b"):
            t = run.tasks[name]
            t.attempts, t.agent = 1, "edge"
            t.history.append(Attempt(1, "edge", AttemptState.RUNNING, 5.0))
            tracer.granted(t, 5.0, 1.0)
            txn = Txn()
            tracer.completed(txn, run, t, Completion(LeaseRef("r4", name, 1), Outcome.SUCCEEDED), 0.0, 6.0)
            journal.commit(txn)
        assert journal.commits == 2  # the completions' own: their times rode them
        assert journal.store.rows[("r4", "a", 1)][-1] == 0.0 == journal.store.rows[("r4", "b", 1)][-1]
        assert tracer._flush is not None  # (the timer that writes them, FLUSH_S later)
        tracer.flush()
        assert journal.commits == 3  # one transaction for both ends
        assert journal.store.rows[("r4", "a", 1)][-1] == 7.0 == journal.store.rows[("r4", "b", 1)][-1]

    asyncio.run(go())


def test_ready_times_of_attempts_that_never_completed_are_pruned(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run = _run("r5")
    a, b = run.tasks["a"], run.tasks["b"]
    tracer = Tracer(_Journal(), wall=lambda: 1.0, clock=lambda: 1.0, find=lambda r, n: run.tasks.get(n))  # type: ignore[arg-type]
    monkeypatch.setattr(tracing, "PRUNE_AT", 2)
    a.attempts, a.state = 1, TaskState.RUNNING
    tracer.granted(a, 1.0, 1.0)
    b.attempts, b.state = 1, TaskState.RUNNING
    tracer.granted(b, 1.0, 1.0)
    b.state = TaskState.FAILED  # its lease was lost, say: no completion will come
    a.attempts = 2  # and a runs again
    tracer.granted(a, 1.0, 1.0)  # past PRUNE_AT: b's entry goes, a's new one stays
    assert tracer._queued == {("r5", "a"): (2, 1.0)}


def test_tracing_off_records_nothing() -> None:
    from scheduler.core.txn import Txn

    run = _run("r2")
    t = run.tasks["a"]
    tracer = Tracer(_Journal(), wall=lambda: 1.0, clock=lambda: 1.0)  # type: ignore[arg-type]
    tracer.enabled = False
    txn = Txn()
    tracer.granted(t, 1.0, 1.0)
    tracer.completed(txn, run, t, Completion(LeaseRef("r2", "a", 1), Outcome.SUCCEEDED), 0.0, 1.0)
    assert txn.changes.records == [] and txn._after == []


def test_span_times_are_stored_replaced_and_read_back_on_each_backend(backend: Backend) -> None:
    async def body(store: Any) -> None:
        first = Changes()
        first.spans(("r", "a", 1, "edge", 1.0, 2.0, 2.1, 2.2, 2.3, 3.0, 3.1, 3.2, 3.5, 0.0))
        first.spans(("other", "a", 1, "edge", 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0))
        await store.commit(first)
        end = Changes()
        end.spans_durable([(3.75, "r", "a", 1)])  # its commit span's end, once durable
        await store.commit(end)
        assert await asyncio.to_thread(store.spans, "r") == [
            SpanRow("a", 1, "edge", 1.0, 2.0, 2.1, 2.2, 2.3, 3.0, 3.1, 3.2, 3.5, 3.75)
        ]
        again = Changes()
        again.spans(("r", "a", 1, "edge2", 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.5, 0.0))
        await store.commit(again)
        (row,) = await asyncio.to_thread(store.spans, "r")
        assert row.agent == "edge2" and row.fetch_start == 0.0
        assert await asyncio.to_thread(store.spans, "nope") == []

    with_store(backend, body)


def test_an_exporter_gets_each_attempts_ended_spans_once_durable() -> None:
    from scheduler.core.txn import Txn

    async def go() -> None:
        run = _run("r3")
        t = run.tasks["a"]
        journal = _Journal()
        tracer = Tracer(journal, wall=lambda: 20.0, clock=lambda: 5.0)  # type: ignore[arg-type]
        got: list[list[tracing.Span]] = []
        tracer.sink = got.append
        t.ready_at, t.attempts, t.agent = 4.0, 1, "edge"
        t.history.append(Attempt(1, "edge", AttemptState.SUCCEEDED, 10.0, finished_at=19.0))
        txn = Txn()
        tracer.completed(txn, run, t, Completion(LeaseRef("r3", "a", 1), Outcome.SUCCEEDED), 0.0, 19.5)
        assert got == []  # not before it is durable
        journal.commit(txn)
        (spans,) = got
        assert [s.name for s in spans] == ["commit", "attempt"]
        assert (spans[0].start, spans[0].end) == (19.5, 20.0) and spans[1].end == 20.0
        assert {s.trace_id for s in spans} == {run.trace_id}

    asyncio.run(go())
