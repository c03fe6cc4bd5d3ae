"""The runs, their DAGs and the task and run state machines.

Every state change of a task or run goes through :meth:`StateMachine.transition`
or :meth:`StateMachine.end_run`, which check it against the tables beside the
charts in :mod:`scheduler.core.model`, record the store write on the transaction,
and emit the event: events are emitted here and only here. What follows from a
change in the DAG (downstream tasks become ready, or will never run; the run
ends) is decided here too.

A task entering READY is handed to the ready queues (``on_ready``) and one leaving
it is taken out (``on_unready``); the queues belong to dispatch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

from outrider.errors import NotFound
from scheduler.core.model import (
    RETRYABLE_TASK_STATES,
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_TASK_STATES,
    Attempt,
    AttemptState,
    EventKind,
    Needs,
    Output,
    Run,
    RunState,
    Task,
    TaskState,
)
from scheduler.core.spec import PipelineSpec
from scheduler.core.txn import Txn
from scheduler.core.views import RunEvent
from scheduler.core.watch import Watchers
from scheduler.store.base import Loaded

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0

#: Emit the event that names the state entered (the default of ``transition``).
ENTERED = object()


class IllegalTransition(RuntimeError):
    """Raised when code asks for a transition the state chart forbids: a bug, never bad input."""


def backoff_delay(base: float, failures: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base·2^(failures-1), capped, times U[0.5, 1).

    The jitter keeps many tasks that failed together (a flaky shared dependency)
    from retrying in lockstep; the floor of 0.5 keeps the backoff meaningful.
    """
    if base <= 0:
        return 0.0
    # Cap the exponent too: 2 ** (failures - 1) as a float overflows past 1024 failures.
    doublings = min(max(0, failures - 1), 64)
    delay = min(MAX_BACKOFF_S, base * 2.0**doublings)
    return delay * (0.5 + rng.random() / 2)


class StateMachine:
    """The runs and every transition of their tasks. Single-threaded (the event loop)."""

    def __init__(
        self,
        watchers: Watchers,
        *,
        wall: Callable[[], float],
        rng: random.Random,
        on_ready: Callable[[Run, Task], None],
        on_unready: Callable[[Run, Task], None],
    ) -> None:
        self.runs: dict[str, Run] = {}
        self.open_tasks = 0  # tasks not yet terminal, for admission control
        self.seq = 0  # the last submission's sequence number
        self.event_seq = 0  # the last event's sequence number (RunEvent.seq; the events table's key)
        self._watchers = watchers
        self._wall = wall
        self._rng = rng
        self._on_ready = on_ready
        self._on_unready = on_unready

    # ------------------------------------------------------------------ lookups

    def run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def task(self, run_id: str, name: str) -> Task:
        t = self.run(run_id).tasks.get(name)
        if t is None:
            raise NotFound(f"run {run_id} has no task {name!r}")
        return t

    def find(self, run_id: str, name: str) -> Task | None:
        run = self.runs.get(run_id)
        return run.tasks.get(name) if run is not None else None

    # ------------------------------------------------------------------ runs

    @staticmethod
    def build(
        run_id: str,
        spec: PipelineSpec,
        submitter: str,
        created_at: float,
        trace_id: str,
        seq: int,
        needs: Callable[[Needs], Needs],
    ) -> Run:
        """A new run in memory: every task PENDING, the DAG's edges both ways.

        ``needs`` interns each task's Needs (tasks alike share one object).
        """
        run = Run(
            run_id=run_id,
            pipeline=spec.name,
            spec=spec,
            submitter=submitter,
            created_at=created_at,
            trace_id=trace_id,
            seq=seq,
            priority=spec.priority,
            concurrency=spec.concurrency,
            tenant=spec.tenant or submitter,
        )
        for order, ts in enumerate(spec.tasks):
            base = needs(ts.requires)
            run.tasks[ts.name] = Task(
                run_id=run_id, name=ts.name, spec=ts, needs=base, spec_needs=base, order=order, upstream=ts.upstream
            )
        for t in run.tasks.values():
            for up in t.upstream:
                run.tasks[up].downstream.append(t.name)
        run.unfinished = len(run.tasks)
        return run

    def create(self, txn: Txn, run: Run, queue: bool = True) -> list[Task]:
        """Record a new run; its tasks without upstreams start READY. Returns those roots.

        Roots are inserted as READY with their events in one statement: a 10,000-task
        sweep is one INSERT of tasks and one of events, not 20,000 updates. With
        ``queue=False`` the caller hands them to the ready queues itself (paced, for a
        big run, once this change is queued for the store).
        """
        roots = [t for t in run.tasks.values() if not t.upstream]
        for t in roots:
            t.state = TaskState.READY  # the initial state of a root, not a transition
        self.runs[run.run_id] = run
        self.open_tasks += len(run.tasks)
        self.seq = max(self.seq, run.seq)
        txn.changes.insert_run(run)
        self._emit(txn, run, "", EventKind.RUNNING, message=f"submitted by {run.submitter}")
        now = self._wall()
        first = self.event_seq + 1
        self.event_seq += len(roots)
        ready = EventKind.READY.value
        txn.changes.events([(first + i, now, run.run_id, t.name, ready, 0, "", "") for i, t in enumerate(roots)])
        if self._watchers.wants(run.run_id, task_event=True):
            events = [RunEvent(run.run_id, t.name, ready, ts=now, seq=first + i) for i, t in enumerate(roots)]

            def publish() -> None:
                for ev in events:
                    self._watchers.publish(run, ev)

            txn.after(publish)
        if queue:
            for t in roots:
                self._on_ready(run, t)
        return roots

    def end_run(self, txn: Txn, run: Run, to: RunState, message: str, emit: bool = True) -> None:
        """Move a run to ``to`` (checked against RUN_TRANSITIONS) and record it."""
        if to not in RUN_TRANSITIONS[run.state]:
            raise IllegalTransition(f"run {run.run_id}: {run.state.value} -> {to.value} is not allowed")
        run.state = to
        run.finished_at = 0.0 if to is RunState.RUNNING else self._wall()
        txn.changes.update_run(run)
        if emit:
            self._emit(txn, run, "", EventKind.entering(to), message=message)

    def cancel(self, txn: Txn, run: Run, stop: Callable[[Txn, Task], None]) -> None:
        """Cancel every unfinished task (``stop`` ends the lease of each running one), then the run.

        The run is cancelled before its tasks, so that the last task ending cannot end
        it as failed; its event comes last.
        """
        self.end_run(txn, run, RunState.CANCELLED, "cancelled", emit=False)
        for t in run.tasks.values():
            if t.terminal:
                continue
            if t.state is TaskState.RUNNING:
                stop(txn, t)
            t.error = "cancelled"
            self.transition(txn, run, t, TaskState.CANCELLED)
        self._emit(txn, run, "", EventKind.CANCELLED, message="cancelled")

    def retry(self, txn: Txn, run: Run) -> None:
        """Run again what failed, was cancelled or never ran; keep what succeeded."""
        for t in run.tasks.values():
            if t.state in RETRYABLE_TASK_STATES:
                t.failures, t.error, t.exit_code, t.finished_at, t.not_before = 0, "", 0, 0.0, 0.0
                self.transition(txn, run, t, TaskState.PENDING, event=None)  # the run's event says it
        self.end_run(txn, run, RunState.RUNNING, "retry")
        for t in run.tasks.values():
            self._ready_if_unblocked(txn, run, t)

    # ------------------------------------------------------------------ tasks

    def transition(
        self, txn: Txn, run: Run, t: Task, to: TaskState, *, event: object = ENTERED, message: str = ""
    ) -> None:
        """Move a task to ``to``: checked, recorded and announced in one step.

        ``event`` is the :class:`EventKind` to emit (by default the one naming ``to``;
        None for none). Entering a terminal state may end the run; entering READY
        queues the task, leaving READY takes it out of the queues.
        """
        frm = t.state
        if to not in TASK_TRANSITIONS[frm]:
            raise IllegalTransition(f"task {run.run_id}/{t.name}: {frm.value} -> {to.value} is not allowed")
        if frm is TaskState.READY:
            self._on_unready(run, t)
        t.state = to
        terminal = to in TERMINAL_TASK_STATES
        if terminal:
            t.finished_at = t.finished_at or self._wall()
            run.unfinished -= 1
            self.open_tasks -= 1
        elif frm in TERMINAL_TASK_STATES:
            run.unfinished += 1
            self.open_tasks += 1
        txn.changes.update_task(t)
        kind = EventKind.entering(to) if event is ENTERED else event
        if isinstance(kind, EventKind):
            ready = kind is EventKind.READY  # "ready" names no attempt: the next one is not decided yet
            self._emit(txn, run, t.name, kind, 0 if ready else t.attempts, "" if ready else t.agent, message)
        if terminal:
            if self._watchers.following(run.run_id, t.name):
                txn.after(lambda: self._watchers.task_ended(run.run_id, t.name))
            if run.unfinished == 0 and run.state is RunState.RUNNING:
                failed = any(x.state is not TaskState.SUCCEEDED for x in run.tasks.values())
                to_run = RunState.FAILED if failed else RunState.SUCCEEDED
                self.end_run(txn, run, to_run, f"run {to_run.value}")
        elif to is TaskState.READY:
            self._on_ready(run, t)

    def succeed(self, txn: Txn, run: Run, t: Task, outputs: dict[str, Output], now: float) -> None:
        """The task's attempt succeeded with these outputs: record them; downstream may run."""
        t.outputs = outputs
        t.error = ""
        t.finished_at = now
        txn.changes.insert_outputs(t, now)
        self.transition(txn, run, t, TaskState.SUCCEEDED)
        for d in t.downstream:
            self._ready_if_unblocked(txn, run, run.tasks[d])

    def fail_attempt(self, txn: Txn, run: Run, t: Task, error: str) -> None:
        """An attempt failed: retry after a backoff while attempts are left, else fail the task."""
        t.failures += 1
        t.error = error
        if t.failures < t.max_attempts and run.state is RunState.RUNNING:
            delay = backoff_delay(t.spec.backoff_s, t.failures, self._rng)
            t.not_before = self._wall() + delay
            self.transition(
                txn,
                run,
                t,
                TaskState.READY,
                event=EventKind.RETRYING,
                message=f"{error}; attempt {t.attempts + 1} of {t.max_attempts} in {delay:.1f}s",
            )
        else:
            self.fail(txn, run, t, error)

    def lose_attempt(self, txn: Txn, run: Run, t: Task, why: str, released: bool = False) -> None:
        """An attempt ended without a result, through no fault of the task (its lease expired, or
        its agent gave it back): run again as a new attempt, no retry spent."""
        t.not_before = 0.0
        t.error = f"attempt {t.attempts} {'released' if released else 'lost'}: {why}"
        kind = EventKind.RELEASED if released else EventKind.LOST
        self.transition(txn, run, t, TaskState.READY, event=kind, message=why)

    def fail(self, txn: Txn, run: Run, t: Task, error: str) -> None:
        """Fail the task for good; its pending descendants will never run."""
        t.error = error
        t.finished_at = self._wall()
        self.transition(txn, run, t, TaskState.FAILED, message=error)
        stack = list(t.downstream)
        while stack:
            d = run.tasks[stack.pop()]
            if d.state is TaskState.PENDING:
                d.error = f"upstream task {t.name!r} failed"
                self.transition(txn, run, d, TaskState.UPSTREAM_FAILED, message=d.error)
                stack.extend(d.downstream)

    def _ready_if_unblocked(self, txn: Txn, run: Run, t: Task) -> None:
        if t.state is TaskState.PENDING and all(run.tasks[u].state is TaskState.SUCCEEDED for u in t.upstream):
            t.not_before = 0.0
            self.transition(txn, run, t, TaskState.READY)

    def _emit(
        self, txn: Txn, run: Run, task: str, kind: EventKind, attempt: int = 0, agent: str = "", message: str = ""
    ) -> None:
        """Record one event; hand it to watchers once durable (built only if someone watches)."""
        ts = self._wall()
        self.event_seq += 1
        seq = self.event_seq
        if not task:
            run.state_seq = seq
        txn.changes.event(seq, ts, run.run_id, task, kind.value, attempt, agent, message)
        if self._watchers.wants(run.run_id, task_event=bool(task)):
            ev = RunEvent(run.run_id, task, kind.value, attempt, agent, message, ts, seq=seq)
            txn.after(lambda: self._watchers.publish(run, ev))

    def note_apart(self, txn: Txn, state: str, agent: str, message: str) -> None:
        """A run-independent event (an alert: scheduler/core/alerts.py): ``run_id`` and ``task``
        empty, in the one global order; readers of every run's events get it once durable."""
        ts = self._wall()
        self.event_seq += 1
        seq = self.event_seq
        txn.changes.event(seq, ts, "", "", state, 0, agent, message)
        feed = self._watchers.feed
        if feed:
            ev = RunEvent("", "", state, 0, agent, message, ts, seq=seq)
            txn.after(lambda: feed.publish(ev))

    def note(self, txn: Txn, run: Run, t: Task, kind: EventKind, message: str) -> None:
        """An event about a task that changes none of its state (a checkpoint was accepted)."""
        self._emit(txn, run, t.name, kind, t.attempts, t.agent, message)

    # ------------------------------------------------------------------ restart

    def restore(self, loaded: Loaded, needs: Callable[[Needs], Needs]) -> Iterable[Output]:
        """Rebuild the runs from the store (with every attempt and the latest checkpoint of each
        task); returns every recorded output and checkpoint (for the residency index)."""
        for row in loaded.runs:
            run = self.build(row.run_id, row.spec, row.submitter, row.created_at, row.trace_id, row.seq, needs)
            run.state = RunState(row.state)
            run.finished_at = row.finished_at
            run.submit_key = row.submit_key
            run.state_seq = loaded.run_event_seq.get(row.run_id, 0)
            self.runs[run.run_id] = run
            self.seq = max(self.seq, run.seq)
        for tr in loaded.tasks:
            t = self.runs[tr.run_id].tasks[tr.name]
            t.state = TaskState(tr.state)
            t.attempts, t.failures, t.agent = tr.attempts, tr.failures, tr.agent
            t.error, t.exit_code = tr.error, tr.exit_code
            t.started_at, t.finished_at, t.not_before = tr.started_at, tr.finished_at, tr.not_before
        outputs = []
        for o in loaded.outputs:
            out = Output(o.name, o.digest, o.size, o.kind, o.residency)
            self.runs[o.run_id].tasks[o.task].outputs[o.name] = out
            outputs.append(out)
        for a in loaded.attempts:  # in (run, task, attempt) order
            t = self.runs[a.run_id].tasks[a.task]
            t.history.append(
                Attempt(
                    a.attempt,
                    a.agent,
                    AttemptState(a.state),
                    a.started_at,
                    a.finished_at,
                    a.exit_code,
                    a.error,
                    a.resumed,
                )
            )
        for c in loaded.checkpoints:
            self.runs[c.checkpoint.lease.run_id].tasks[c.checkpoint.lease.task].checkpoint = c.checkpoint
            cp = c.checkpoint
            outputs.append(Output("checkpoint", cp.digest, cp.size, cp.kind, c.residency))  # its bytes' residency
        self.event_seq = max(self.event_seq, loaded.event_seq)
        for run in self.runs.values():
            run.unfinished = sum(1 for t in run.tasks.values() if not t.terminal)
            self.open_tasks += run.unfinished
        return outputs
