"""Domain objects of the scheduler and the state machines they obey.

Task lifecycle (enforced by :func:`scheduler.core.lifecycle.StateMachine.transition`,
against :data:`TASK_TRANSITIONS` below)::

                 upstreams succeeded                 lease granted (attempt n, epoch n)
    PENDING ───────────────────────────▶ READY ─────────────────────────────▶ RUNNING
       │                                 ▲  ▲ │                                 │  │  │
       │ an upstream failed              │  │ │ failed, retries left (backoff)  │  │  │ succeeded
       ▼                                 │  └─┼─────────────────────────────────┘  │  ▼
    UPSTREAM_FAILED                      │    │ lease expired (agent lost: no retry │ SUCCEEDED
                                         └────┼──── counted, new epoch) ───────────┘
                                              │     failed, no retries left ──────▶ FAILED
                                              └── no agent could run it for infeasible_timeout ──▶ FAILED
    any non-terminal state ── cancel ──▶ CANCELLED
    FAILED / UPSTREAM_FAILED / CANCELLED ── retry RUN ──▶ PENDING (attempt numbers keep growing)

Run lifecycle (:data:`RUN_TRANSITIONS`)::

    RUNNING ──▶ SUCCEEDED (every task succeeded)
       │  └───▶ FAILED    (every task terminal, one failed or upstream_failed)
       └──────▶ CANCELLED (cancel RUN)
    FAILED / CANCELLED ── retry RUN ──▶ RUNNING
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.core.messages import Checkpoint
from scheduler.core.spec import Expr, Needs, PipelineSpec, TaskSpec


class TaskState(str, enum.Enum):
    PENDING = "pending"  #: waiting for upstream tasks
    READY = "ready"  #: queued for an agent (maybe in retry backoff)
    RUNNING = "running"  #: leased to an agent
    SUCCEEDED = "succeeded"  #: finished, outputs recorded
    FAILED = "failed"  #: failed with no retries left, or no agent could ever run it
    UPSTREAM_FAILED = "upstream_failed"  #: an upstream task failed; never ran
    CANCELLED = "cancelled"  #: cancelled by a user


class RunState(str, enum.Enum):
    RUNNING = "running"  #: some task is not terminal
    SUCCEEDED = "succeeded"  #: every task succeeded
    FAILED = "failed"  #: every task terminal, at least one failed
    CANCELLED = "cancelled"  #: cancelled by a user


class EventKind(str, enum.Enum):
    """What an event in a run's history says happened (``RunEvent.state`` on the wire).

    Mostly the state a task or run entered (a run-level event carries the run's state:
    ``running`` at submit and retry); two kinds name *why* a task went back to READY.
    """

    PENDING = "pending"  #: a task waits for its upstreams again
    READY = "ready"  #: a task can run: queued for an agent
    RUNNING = "running"  #: a task was leased to an agent (a new attempt)
    SUCCEEDED = "succeeded"  #: a task or the run succeeded
    FAILED = "failed"  #: a task or the run failed
    UPSTREAM_FAILED = "upstream_failed"  #: a task will not run: an upstream failed
    CANCELLED = "cancelled"  #: a task or the run was cancelled
    RETRYING = "retrying"  #: an attempt failed; the task runs again after a backoff
    LOST = "lost"  #: an attempt's lease ended without a report; the task runs again
    RELEASED = "released"  #: an attempt's agent gave it back unfinished; the task runs again
    CHECKPOINT = "checkpoint"  #: a checkpoint of the running attempt was accepted; a new attempt resumes from it

    @classmethod
    def entering(cls, state: TaskState | RunState) -> EventKind:
        """The event that says a task or run entered ``state``."""
        return cls(state.value)


class AttemptState(str, enum.Enum):
    """How an attempt (one lease) ended, as recorded in the attempts table."""

    RUNNING = "running"  #: still holds its lease
    SUCCEEDED = "succeeded"  #: reported success, outputs recorded
    FAILED = "failed"  #: reported failure, or its report was malformed
    TIMEOUT = "timeout"  #: the agent killed it at its timeout
    CANCELLED = "cancelled"  #: stopped by a cancel
    LOST = "lost"  #: the lease ended without a report (agent lost, or it dropped the lease)
    RELEASED = "released"  #: the agent gave it back unrun or unfinished (its own failure, or draining)


TERMINAL_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED}
)
RETRYABLE_TASK_STATES = frozenset({TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED})
#: Run-level events that say the run ended.
TERMINAL_RUN_EVENTS = frozenset({RunState.SUCCEEDED.value, RunState.FAILED.value, RunState.CANCELLED.value})

_T = TaskState
#: Every task transition the chart above allows: from-state -> allowed to-states.
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _T.PENDING: frozenset({_T.READY, _T.UPSTREAM_FAILED, _T.CANCELLED}),
    _T.READY: frozenset({_T.RUNNING, _T.FAILED, _T.CANCELLED}),
    _T.RUNNING: frozenset({_T.READY, _T.SUCCEEDED, _T.FAILED, _T.CANCELLED}),
    _T.SUCCEEDED: frozenset(),
    _T.FAILED: frozenset({_T.PENDING}),
    _T.UPSTREAM_FAILED: frozenset({_T.PENDING}),
    _T.CANCELLED: frozenset({_T.PENDING}),
}
_R = RunState
#: Every run transition the chart above allows.
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.FAILED, _R.CANCELLED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset({_R.RUNNING}),
    _R.CANCELLED: frozenset({_R.RUNNING}),
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt (lease) of a task, as the attempts table records it: where it ran, how it
    ended, and the checkpoint it resumed from. Immutable: an ending replaces it."""

    attempt: int  # the epoch
    agent: str
    state: AttemptState
    started_at: float
    finished_at: float = 0.0
    exit_code: int = 0
    error: str = ""
    resumed_from: Checkpoint | None = None


@dataclass(slots=True)
class Output:
    """An output a task produced: an immutable content-addressed artifact."""

    name: str
    digest: str
    size: int
    kind: str
    residency: frozenset[str] | None = None  # zones it may be processed in; None: anywhere


@dataclass(frozen=True, slots=True)
class Placement:
    """What scoring needs to know of a task beyond its Needs: its data and preferences."""

    inputs: tuple[tuple[str, int], ...] = ()  # (digest, size)
    affinities: tuple[tuple[Expr, float], ...] = ()  # (clause, weight: + prefer, - avoid)

    @property
    def input_bytes(self) -> int:
        return sum(size for _, size in self.inputs)


NO_PLACEMENT = Placement()


@dataclass(slots=True, eq=False)
class Task:
    run_id: str
    name: str
    spec: TaskSpec
    needs: Needs  # current needs (residency narrowed by inputs once ready)
    order: int  # position in the pipeline; ties in the ready queue
    spec_needs: Needs  # needs as the spec states them
    upstream: tuple[str, ...] = ()  # tasks that must succeed first (inputs and after)
    downstream: list[str] = field(default_factory=list)
    state: TaskState = TaskState.PENDING
    attempts: int = 0  # attempts started; the current epoch
    failures: int = 0  # attempts that failed (counted against retries)
    agent: str = ""
    error: str = ""
    exit_code: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    not_before: float = 0.0  # wall time; retry backoff
    outputs: dict[str, Output] = field(default_factory=dict)
    history: list[Attempt] = field(default_factory=list)  # every attempt, oldest first
    checkpoint: Checkpoint | None = None  # the latest accepted; the next attempt resumes from it
    # Lease bookkeeping, on the scheduler's monotonic clock; meaningful while RUNNING.
    lease_expires: float = 0.0
    leased_at: float = 0.0
    # Placement bookkeeping, meaningful while READY.
    placement: Placement = NO_PLACEMENT
    queued: bool = False  # in its run's ready queue (entries are removed lazily)
    ready_at: float = 0.0  # monotonic time it was queued: delay-scheduling and infeasibility clocks
    wait_for: str = ""  # the better agent it is waiting for, if any
    wait_until: float = 0.0  # wall time that wait ends

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.name)

    @property
    def resumed_from(self) -> Checkpoint | None:
        """The checkpoint the current (or last) attempt resumed from."""
        return self.history[-1].resumed_from if self.history else None

    @property
    def max_attempts(self) -> int:
        return max(1, self.spec.max_attempts)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_TASK_STATES


@dataclass(slots=True, eq=False)
class Run:
    run_id: str
    pipeline: str
    spec: PipelineSpec
    submitter: str
    created_at: float
    trace_id: str
    seq: int  # submission order
    state: RunState = RunState.RUNNING
    finished_at: float = 0.0
    state_seq: int = 0  # seq of its last run-level event (the one that says its state)
    tasks: dict[str, Task] = field(default_factory=dict)
    unfinished: int = 0  # tasks not terminal; kept so completion is O(1)
    priority: int = 0
    concurrency: int = 0  # 0: no limit
    tenant: str = ""
    running: int = 0  # tasks holding a lease now
    # Ready tasks, one FIFO per distinct Needs: a poll checks each Needs once.
    queues: dict[Needs, deque[Task]] = field(default_factory=dict)
    queued: int = 0
    submit_key: str = ""  # the submitter's idempotency key (its request id), '' if none

    @property
    def terminal(self) -> bool:
        return self.state is not RunState.RUNNING


def intersect_residency(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Zones allowed by both (None means anywhere)."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def narrowed(needs: Needs, residencies: Iterable[frozenset[str] | None]) -> Needs:
    """``needs`` with its residency narrowed by its inputs' (data carries its residency).

    The one place residency narrowing is written: used with the static residencies of
    upstream tasks (plan, submit warnings) and with the recorded residency of the outputs
    a ready task consumes (placement, downloads).
    """
    residency = needs.residency
    for other in residencies:
        residency = intersect_residency(residency, other)
    return needs if residency == needs.residency else dataclasses.replace(needs, residency=residency)
