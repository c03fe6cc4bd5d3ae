"""scheduler.core.lifecycle.StateMachine alone: the state charts, the DAG, retries, cancel and retry.

No engine and no store: a fake wall clock, a seeded RNG, recorders for ``on_ready`` /
``on_unready``, and plain :class:`Txn` objects whose records are inspected.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

from scheduler.core.lifecycle import MAX_BACKOFF_S, IllegalTransition, StateMachine, backoff_delay
from scheduler.core.model import (
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    EventKind,
    Output,
    Run,
    RunState,
    Task,
    TaskState,
)
from scheduler.core.spec import InputRef, PipelineSpec, TaskSpec
from scheduler.core.txn import Journal, Txn
from scheduler.core.watch import Watchers
from scheduler.store.changes import Changes, Op
from tests.helpers.fake_clock import FakeClock

WALL0 = 1_700_000_000.0
T1 = WALL0 + 60.0  # the wall clock while a test makes its changes
AGENT = "agent-a"

Event = tuple[float, str, str, str, int, str, str]


def spec(
    name: str,
    *,
    after: tuple[str, ...] = (),
    inputs: tuple[tuple[str, InputRef], ...] = (),
    outputs: tuple[str, ...] = (),
    max_attempts: int = 0,
    backoff_s: float = 0.0,
) -> TaskSpec:
    return TaskSpec(
        name=name,
        argv=("true",),
        after=after,
        inputs=inputs,
        outputs=outputs,
        max_attempts=max_attempts,
        backoff_s=backoff_s,
    )


class FixedRandom(random.Random):
    """An RNG whose ``random()`` is always ``value``: the jitter at a chosen point."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class Harness:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.wall = FakeClock(WALL0)
        self.watchers = Watchers()
        self.ready: list[str] = []  # tasks handed to on_ready, in order
        self.unready: list[str] = []  # tasks handed to on_unready, in order
        self.hooks: list[tuple[str, str, TaskState]] = []  # (hook, task, its state when called)
        self.sm = StateMachine(
            self.watchers, wall=self.wall, rng=rng or random.Random(0), on_ready=self._ready, on_unready=self._unready
        )

    def _ready(self, run: Run, t: Task) -> None:
        self.ready.append(t.name)
        self.hooks.append(("ready", t.name, t.state))

    def _unready(self, run: Run, t: Task) -> None:
        self.unready.append(t.name)
        self.hooks.append(("unready", t.name, t.state))

    def submit(self, *tasks: TaskSpec, run_id: str = "r1") -> Run:
        """A run created (roots READY), with the recorders and the clock reset for the test."""
        pipeline = PipelineSpec(name="p", tasks=tasks)
        run = StateMachine.build(run_id, pipeline, "alice", self.wall(), "trace", self.sm.seq + 1, lambda n: n)
        self.sm.create(Txn(), run)
        self.ready.clear()
        self.wall.t = T1
        return run

    def start(self, run: Run, t: Task, agent: str = AGENT) -> None:
        """What a lease grant does to the task, then the transition to RUNNING."""
        t.attempts += 1
        t.agent = agent
        self.sm.transition(Txn(), run, t, TaskState.RUNNING)

    def force(self, run: Run, t: Task, state: TaskState) -> None:
        """Put ``t`` in ``state`` as a test setup (not a transition), keeping the counters right."""
        t.state = state
        run.unfinished = sum(1 for x in run.tasks.values() if not x.terminal)
        self.sm.open_tasks = sum(r.unfinished for r in self.sm.runs.values())
        self.ready.clear()
        self.unready.clear()


def events(txn: Txn) -> list[Event]:
    """The events recorded, without their sequence numbers (see the test of those)."""
    return [row[1:] for op, rows in txn.changes.records if op is Op.INSERT_EVENTS_MANY for row in rows]


def seqs(txn: Txn) -> list[int]:
    return [row[0] for op, rows in txn.changes.records if op is Op.INSERT_EVENTS_MANY for row in rows]


def ops(txn: Txn) -> list[Op]:
    return [op for op, _ in txn.changes.records]


def task_updates(txn: Txn) -> list[tuple[str, str]]:
    """(task, state) of every UPDATE_TASK record, in order."""
    return [(row[-1], row[0]) for op, row in txn.changes.records if op is Op.UPDATE_TASK]


# --------------------------------------------------------------------------- the task chart, exhaustively

TASK_PAIRS = [
    pytest.param(frm, to, id=f"{frm.value}->{to.value}") for frm, to in itertools.product(TaskState, TaskState)
]


@pytest.mark.parametrize(("frm", "to"), TASK_PAIRS)
def test_every_task_transition_is_applied_or_refused_per_the_table(frm: TaskState, to: TaskState) -> None:
    h = Harness()
    run = h.submit(spec("t"), spec("bystander"))  # the bystander keeps the run from ending
    t = run.tasks["t"]
    t.attempts, t.agent = 2, AGENT
    h.force(run, t, frm)
    unfinished = run.unfinished
    txn = Txn()

    if to not in TASK_TRANSITIONS[frm]:
        with pytest.raises(IllegalTransition, match=f"{frm.value} -> {to.value}"):
            h.sm.transition(txn, run, t, to)
        assert t.state is frm
        assert txn.changes.records == []
        assert (h.ready, h.unready) == ([], [])
        assert run.unfinished == unfinished
        return

    h.sm.transition(txn, run, t, to)
    assert t.state is to
    assert ops(txn) == [Op.UPDATE_TASK, Op.INSERT_EVENTS_MANY]
    _, row = txn.changes.records[0]
    assert (row[0], row[1], row[3], row[-2], row[-1]) == (to.value, 2, AGENT, "r1", "t")
    ready = to is TaskState.READY  # "ready" names no attempt yet
    assert events(txn) == [(T1, "r1", "t", EventKind.entering(to).value, 0 if ready else 2, "" if ready else AGENT, "")]
    assert h.ready == (["t"] if to is TaskState.READY else [])
    assert h.unready == (["t"] if frm is TaskState.READY else [])
    assert run.unfinished == sum(1 for x in run.tasks.values() if not x.terminal)
    assert h.sm.open_tasks == run.unfinished
    assert run.state is RunState.RUNNING


RUN_PAIRS = [pytest.param(frm, to, id=f"{frm.value}->{to.value}") for frm, to in itertools.product(RunState, RunState)]


@pytest.mark.parametrize(("frm", "to"), RUN_PAIRS)
def test_every_run_transition_is_applied_or_refused_per_the_table(frm: RunState, to: RunState) -> None:
    h = Harness()
    run = h.submit(spec("t"))
    run.state = frm
    run.finished_at = 0.0 if frm is RunState.RUNNING else WALL0 + 1
    before = run.finished_at
    txn = Txn()

    if to not in RUN_TRANSITIONS[frm]:
        with pytest.raises(IllegalTransition, match=f"{frm.value} -> {to.value}"):
            h.sm.end_run(txn, run, to, "why")
        assert run.state is frm
        assert run.finished_at == before
        assert txn.changes.records == []
        return

    h.sm.end_run(txn, run, to, "why")
    finished = 0.0 if to is RunState.RUNNING else T1
    assert run.state is to
    assert run.finished_at == finished
    assert ops(txn) == [Op.UPDATE_RUN, Op.INSERT_EVENTS_MANY]
    assert txn.changes.records[0] == (Op.UPDATE_RUN, (to.value, finished, "r1"))
    assert events(txn) == [(T1, "r1", "", EventKind.entering(to).value, 0, "", "why")]


def test_end_run_without_emit_records_the_state_but_no_event() -> None:
    h = Harness()
    run = h.submit(spec("t"))
    txn = Txn()
    h.sm.end_run(txn, run, RunState.CANCELLED, "cancelled", emit=False)
    assert ops(txn) == [Op.UPDATE_RUN]


# --------------------------------------------------------------------------- creating a run


def test_create_readies_the_roots_only_with_events_naming_no_attempt() -> None:
    h = Harness()
    run = StateMachine.build(
        "r1", PipelineSpec("p", (spec("a"), spec("b", after=("a",)), spec("c"))), "alice", WALL0, "tr", 1, lambda n: n
    )
    txn = Txn()
    h.sm.create(txn, run)
    assert {n: t.state for n, t in run.tasks.items()} == {
        "a": TaskState.READY,
        "b": TaskState.PENDING,
        "c": TaskState.READY,
    }
    assert h.ready == ["a", "c"]
    assert ops(txn) == [Op.INSERT_RUN, Op.INSERT_TASKS_MANY, Op.INSERT_EVENTS_MANY, Op.INSERT_EVENTS_MANY]
    assert events(txn) == [
        (WALL0, "r1", "", "running", 0, "", "submitted by alice"),
        (WALL0, "r1", "a", "ready", 0, "", ""),
        (WALL0, "r1", "c", "ready", 0, "", ""),
    ]
    assert (run.unfinished, h.sm.open_tasks, h.sm.seq) == (3, 3, 1)
    assert run.tasks["a"].downstream == ["b"]


def test_every_event_gets_the_next_sequence_number_in_one_history() -> None:
    """RunEvent.seq: the events table's key, given here, so a watch can replay and dedupe."""
    h = Harness()
    txn = Txn()
    run = StateMachine.build("r1", PipelineSpec("p", (spec("a"), spec("b"))), "alice", WALL0, "tr", 1, lambda n: n)
    h.sm.create(txn, run)
    assert seqs(txn) == [1, 2, 3]
    assert h.sm.event_seq == 3
    txn2 = Txn()
    h.start(run, run.tasks["a"])  # running: one more event, in its own transaction
    h.sm.note(txn2, run, run.tasks["a"], EventKind.CHECKPOINT, "seq 1")
    assert seqs(txn2) == [h.sm.event_seq]
    assert events(txn2) == [(WALL0, "r1", "a", "checkpoint", run.tasks["a"].attempts, AGENT, "seq 1")]
    assert run.tasks["a"].state is TaskState.RUNNING  # a note changes no state


# --------------------------------------------------------------------------- the queues' hooks


def test_entering_ready_calls_on_ready_and_leaving_it_calls_on_unready() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b", after=("a",)))
    seen = h.hooks
    seen.clear()
    a, b = run.tasks["a"], run.tasks["b"]

    h.start(run, a)  # READY -> RUNNING: out of the queues, while still READY
    assert seen == [("unready", "a", TaskState.READY)]
    h.sm.succeed(Txn(), run, a, {}, T1)  # b's only upstream succeeded: b enters READY
    assert seen[1:] == [("ready", "b", TaskState.READY)]
    h.sm.transition(Txn(), run, b, TaskState.CANCELLED)
    assert seen[2:] == [("unready", "b", TaskState.READY)]


# --------------------------------------------------------------------------- the run ends with its last task


def test_the_last_task_succeeding_ends_the_run_succeeded() -> None:
    h = Harness()
    run = h.submit(spec("a", outputs=("out",)), spec("b", after=("a",)))
    a, b = run.tasks["a"], run.tasks["b"]
    h.start(run, a)
    txn = Txn()
    out = Output("out", "sha256:" + "1" * 64, 10, "file")
    h.sm.succeed(txn, run, a, {"out": out}, T1)
    assert a.outputs == {"out": out}
    assert ops(txn) == [
        Op.UPSERT_OUTPUTS_MANY,
        Op.INSERT_ARTIFACTS_MANY,
        Op.UPDATE_TASK,  # a succeeded
        Op.INSERT_EVENTS_MANY,
        Op.UPDATE_TASK,  # b ready
        Op.INSERT_EVENTS_MANY,
    ]
    assert run.state is RunState.RUNNING
    assert b.state is TaskState.READY

    h.start(run, b)
    h.wall.t = T1 + 5
    txn = Txn()
    h.sm.succeed(txn, run, b, {}, T1 + 5)
    assert run.state is RunState.SUCCEEDED
    assert run.finished_at == T1 + 5
    assert (Op.UPDATE_RUN, ("succeeded", T1 + 5, "r1")) in txn.changes.records
    assert events(txn)[-1] == (T1 + 5, "r1", "", "succeeded", 0, "", "run succeeded")
    assert (run.unfinished, h.sm.open_tasks) == (0, 0)


def test_the_last_task_ending_ends_the_run_failed_if_any_task_did_not_succeed() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b"))
    a, b = run.tasks["a"], run.tasks["b"]
    h.start(run, a)
    h.sm.succeed(Txn(), run, a, {}, T1)
    assert run.state is RunState.RUNNING  # b is not done
    h.start(run, b)
    txn = Txn()
    h.sm.fail(txn, run, b, "boom")
    assert run.state is RunState.FAILED
    assert events(txn)[-1] == (T1, "r1", "", "failed", 0, "", "run failed")


# --------------------------------------------------------------------------- failure through the DAG


def test_fail_marks_pending_descendants_upstream_failed_and_spares_independent_branches() -> None:
    h = Harness()
    run = h.submit(
        spec("a"),
        spec("b", after=("a",)),
        spec("c", after=("b",)),
        spec("d", after=("a",)),
        spec("e", after=("b", "d")),  # a diamond: reached twice, marked once
        spec("x"),
        spec("y", after=("x",)),
    )
    txn = Txn()
    h.sm.fail(txn, run, run.tasks["a"], "no agent")

    states = {n: t.state for n, t in run.tasks.items()}
    assert states == {
        "a": TaskState.FAILED,
        "b": TaskState.UPSTREAM_FAILED,
        "c": TaskState.UPSTREAM_FAILED,
        "d": TaskState.UPSTREAM_FAILED,
        "e": TaskState.UPSTREAM_FAILED,
        "x": TaskState.READY,
        "y": TaskState.PENDING,
    }
    assert sorted(n for n, _ in task_updates(txn)) == ["a", "b", "c", "d", "e"]
    assert run.tasks["e"].error == "upstream task 'a' failed"
    assert run.tasks["a"].error == "no agent"
    assert run.state is RunState.RUNNING  # x and y still to run
    assert run.unfinished == 2
    assert h.unready == ["a"]
    assert ("r1", "c", "upstream_failed") in {(ev[1], ev[2], ev[3]) for ev in events(txn)}


def test_fail_attempt_retries_with_backoff_while_attempts_are_left_then_fails() -> None:
    base = 10.0
    h = Harness()
    run = h.submit(spec("a", max_attempts=3, backoff_s=base))
    a = run.tasks["a"]
    for n in (1, 2):
        h.start(run, a)
        h.ready.clear()
        txn = Txn()
        h.sm.fail_attempt(txn, run, a, f"exit {n}")
        full = base * 2 ** (n - 1)
        assert a.state is TaskState.READY
        assert a.failures == n
        assert 0.5 * full <= a.not_before - T1 < full
        assert h.ready == ["a"]
        (ev,) = events(txn)
        assert ev[3:6] == ("retrying", n, AGENT)
        assert ev[6].startswith(f"exit {n}; attempt {n + 1} of 3 in ")
    h.start(run, a)
    txn = Txn()
    h.sm.fail_attempt(txn, run, a, "exit 3")
    assert a.state is TaskState.FAILED
    assert (a.failures, a.error) == (3, "exit 3")
    assert run.state is RunState.FAILED
    assert [ev[3] for ev in events(txn)] == ["failed", "failed"]  # the task's, then the run's


def test_fail_attempt_with_no_retries_fails_at_once() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b", after=("a",)))  # max_attempts 0 means one attempt
    a = run.tasks["a"]
    h.start(run, a)
    h.sm.fail_attempt(Txn(), run, a, "boom")
    assert a.state is TaskState.FAILED
    assert run.tasks["b"].state is TaskState.UPSTREAM_FAILED


def test_lose_attempt_readies_again_without_spending_a_retry() -> None:
    h = Harness()
    run = h.submit(spec("a", max_attempts=1, backoff_s=30.0))
    a = run.tasks["a"]
    for epoch in (1, 2, 3):
        h.start(run, a)
        h.ready.clear()
        txn = Txn()
        h.sm.lose_attempt(txn, run, a, "agent gone")
        assert a.state is TaskState.READY
        assert (a.failures, a.not_before) == (0, 0.0)
        assert a.error == f"attempt {epoch} lost: agent gone"
        assert events(txn) == [(T1, "r1", "a", "lost", epoch, AGENT, "agent gone")]
        assert h.ready == ["a"]
    assert a.attempts == 3  # a new epoch each time


def test_lose_attempt_of_a_task_not_running_is_refused() -> None:
    h = Harness()
    run = h.submit(spec("a"))
    with pytest.raises(IllegalTransition):
        h.sm.lose_attempt(Txn(), run, run.tasks["a"], "late")


# --------------------------------------------------------------------------- cancel and retry of a run


def test_cancel_stops_running_tasks_cancels_the_rest_and_ends_the_run_cancelled() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b"), spec("c", after=("a",)), spec("d"))
    a, b, c, d = (run.tasks[n] for n in "abcd")
    h.start(run, a)
    h.start(run, d)
    h.sm.succeed(Txn(), run, d, {}, T1)
    h.unready.clear()
    stopped: list[tuple[str, TaskState]] = []
    txn = Txn()

    h.sm.cancel(txn, run, lambda _txn, t: stopped.append((t.name, t.state)))

    assert stopped == [("a", TaskState.RUNNING)]  # stopped while still running
    assert [t.state for t in (a, b, c, d)] == [TaskState.CANCELLED] * 3 + [TaskState.SUCCEEDED]
    assert all(t.error == "cancelled" for t in (a, b, c))
    assert h.unready == ["b"]
    assert run.state is RunState.CANCELLED
    assert run.finished_at == T1
    run_events = [ev for ev in events(txn) if ev[2] == ""]
    assert run_events == [(T1, "r1", "", "cancelled", 0, "", "cancelled")]  # one, and not "failed"
    assert events(txn)[-1] == run_events[0]  # the run's event comes last
    assert (run.unfinished, h.sm.open_tasks) == (0, 0)


def test_retry_reruns_what_failed_keeps_what_succeeded_and_attempt_numbers_grow() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b", after=("a",), max_attempts=2), spec("c", after=("b",)))
    a, b, c = (run.tasks[n] for n in "abc")
    h.start(run, a)
    h.sm.succeed(Txn(), run, a, {}, T1)
    for _ in range(2):
        h.start(run, b)
        h.sm.fail_attempt(Txn(), run, b, "exit 1")
    assert (b.state, c.state, run.state) == (TaskState.FAILED, TaskState.UPSTREAM_FAILED, RunState.FAILED)
    h.ready.clear()
    h.wall.t = T1 + 100
    txn = Txn()

    h.sm.retry(txn, run)

    assert (a.state, b.state, c.state) == (TaskState.SUCCEEDED, TaskState.READY, TaskState.PENDING)
    assert (b.failures, b.error, b.exit_code, b.finished_at, b.not_before) == (0, "", 0, 0.0, 0.0)
    assert b.attempts == 2  # the next lease is epoch 3
    assert (run.state, run.finished_at) == (RunState.RUNNING, 0.0)
    assert task_updates(txn) == [("b", "pending"), ("c", "pending"), ("b", "ready")]
    # No event per task going back to PENDING: the run's "running" event says it.
    assert [(ev[2], ev[3], ev[4], ev[5], ev[6]) for ev in events(txn)] == [
        ("", "running", 0, "", "retry"),
        ("b", "ready", 0, "", ""),
    ]
    assert h.ready == ["b"]
    assert (run.unfinished, h.sm.open_tasks) == (2, 2)


def test_retry_of_a_cancelled_run_readies_its_roots_again() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b", after=("a",)))
    h.sm.cancel(Txn(), run, lambda _txn, _t: None)
    h.ready.clear()
    h.sm.retry(Txn(), run)
    assert run.state is RunState.RUNNING
    assert (run.tasks["a"].state, run.tasks["b"].state) == (TaskState.READY, TaskState.PENDING)
    assert h.ready == ["a"]


# --------------------------------------------------------------------------- what events carry


def test_ready_events_name_no_attempt_while_running_retrying_and_lost_name_it() -> None:
    h = Harness()
    run = h.submit(spec("a", max_attempts=5))
    a = run.tasks["a"]
    txn = Txn()
    a.attempts, a.agent = 1, AGENT
    h.sm.transition(txn, run, a, TaskState.RUNNING)
    h.sm.fail_attempt(txn, run, a, "x")  # RETRYING
    a.attempts, a.agent = 2, "agent-b"
    h.sm.transition(txn, run, a, TaskState.RUNNING)
    h.sm.lose_attempt(txn, run, a, "gone")  # LOST
    a.attempts = 3
    h.sm.transition(txn, run, a, TaskState.RUNNING)
    h.sm.transition(txn, run, a, TaskState.READY)  # plain READY (default event)
    assert [(ev[3], ev[4], ev[5]) for ev in events(txn)] == [
        ("running", 1, AGENT),
        ("retrying", 1, AGENT),
        ("running", 2, "agent-b"),
        ("lost", 2, "agent-b"),
        ("running", 3, "agent-b"),
        ("ready", 0, ""),
    ]


def test_event_none_records_the_state_without_an_event() -> None:
    h = Harness()
    run = h.submit(spec("a"), spec("b"))
    txn = Txn()
    h.sm.transition(txn, run, run.tasks["a"], TaskState.CANCELLED, event=None)
    assert ops(txn) == [Op.UPDATE_TASK]


# --------------------------------------------------------------------------- watchers see durable events only


class CommitFuturesStore:
    """Stands in for a Store: each commit returns a future the test resolves by hand."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[asyncio.Future[None]] = []

    def commit(self, changes: Changes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self.pending.append(fut)
        return fut


def test_watchers_and_log_followers_are_told_only_once_the_change_is_durable() -> None:
    loop = asyncio.new_event_loop()
    try:
        h = Harness()
        run = h.submit(spec("a"))
        a = run.tasks["a"]
        watcher = h.watchers.watch("r1", run_only=False)
        follower = h.watchers.follow("r1", "a")
        store = CommitFuturesStore(loop)
        txn = Txn()
        h.start(run, a)
        h.sm.fail(txn, run, a, "boom")
        Journal(store).commit(txn)  # type: ignore[arg-type]
        loop.run_until_complete(asyncio.sleep(0))
        assert watcher.queue.empty() and follower.queue.empty()

        store.pending[0].set_result(None)
        loop.run_until_complete(asyncio.sleep(0))
        got: list[Any] = []
        while not watcher.queue.empty():
            got.append(watcher.queue.get_nowait())
        assert [(ev.task, ev.state) for ev in got] == [("a", "failed"), ("", "failed")]
        assert got[-1].snapshot is not None and got[-1].snapshot.state == "failed"
        assert follower.queue.get_nowait() is None  # the task ended
    finally:
        loop.close()


# --------------------------------------------------------------------------- backoff_delay


@pytest.mark.parametrize("base", [0.0, -1.0])
def test_backoff_delay_is_zero_without_a_base(base: float) -> None:
    assert backoff_delay(base, 3, random.Random(0)) == 0.0


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 5])
def test_backoff_delay_is_base_times_2_to_the_failures_less_one_jittered_into_half_to_one(failures: int) -> None:
    base = 2.0
    full = base * 2 ** (failures - 1)
    assert backoff_delay(base, failures, FixedRandom(0.0)) == 0.5 * full  # the floor, exactly
    assert full * 0.999 < backoff_delay(base, failures, FixedRandom(0.999999)) < full  # never reaching 1×
    rng = random.Random(failures)
    for _ in range(200):
        assert 0.5 * full <= backoff_delay(base, failures, rng) < full


def test_backoff_delay_is_capped() -> None:
    rng = random.Random(1)
    for failures in (9, 10, 20, 60):
        assert 0.5 * MAX_BACKOFF_S <= backoff_delay(100.0, failures, rng) < MAX_BACKOFF_S


def test_backoff_delay_treats_zero_failures_as_the_first() -> None:
    assert backoff_delay(4.0, 0, FixedRandom(0.0)) == backoff_delay(4.0, 1, FixedRandom(0.0)) == 2.0


def test_backoff_delay_stays_capped_for_very_many_failures() -> None:
    assert 0.5 * MAX_BACKOFF_S <= backoff_delay(1.0, 1025, random.Random(0)) < MAX_BACKOFF_S
