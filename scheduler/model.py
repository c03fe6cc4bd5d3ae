"""Domain objects of the scheduler and the state machines they obey.

Task lifecycle (enforced by ``scheduler.engine.Engine``)::

                 upstreams succeeded                 lease granted (attempt n, epoch n)
    PENDING ───────────────────────────▶ READY ─────────────────────────────▶ RUNNING
       │                                 ▲  ▲                                   │  │  │
       │ an upstream failed              │  │ failed, retries left (backoff)    │  │  │ succeeded
       ▼                                 │  └───────────────────────────────────┘  │  ▼
    UPSTREAM_FAILED                      │ lease expired (agent lost: no retry     │ SUCCEEDED
                                         └──────── counted, new epoch) ────────────┘
                                                failed, no retries left ──────▶ FAILED
    any non-terminal state ── cancel ──▶ CANCELLED
    FAILED / UPSTREAM_FAILED / CANCELLED ── retry RUN ──▶ PENDING (attempt numbers keep growing)

Run lifecycle::

    RUNNING ──▶ SUCCEEDED (every task succeeded)
       │  └───▶ FAILED    (every task terminal, one failed or upstream_failed)
       └──────▶ CANCELLED (cancel RUN)
    FAILED / CANCELLED ── retry RUN ──▶ RUNNING
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskState(str, enum.Enum):
    PENDING = "pending"                  #: waiting for upstream tasks
    READY = "ready"                      #: queued for an agent (maybe in retry backoff)
    RUNNING = "running"                  #: leased to an agent
    SUCCEEDED = "succeeded"              #: finished, outputs recorded
    FAILED = "failed"                    #: failed with no retries left
    UPSTREAM_FAILED = "upstream_failed"  #: an upstream task failed; never ran
    CANCELLED = "cancelled"              #: cancelled by a user


class RunState(str, enum.Enum):
    RUNNING = "running"      #: some task is not terminal
    SUCCEEDED = "succeeded"  #: every task succeeded
    FAILED = "failed"        #: every task terminal, at least one failed
    CANCELLED = "cancelled"  #: cancelled by a user


TERMINAL_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED}
)
RETRYABLE_TASK_STATES = frozenset({TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED})


@dataclass(slots=True)
class Output:
    """An output a task produced: an immutable content-addressed artifact."""

    name: str
    digest: str
    size: int
    kind: str
    residency: frozenset[str] | None = None  # zones it may be processed in; None: anywhere


@dataclass(frozen=True, slots=True)
class Expr:
    """A label expression (see proto LabelExpr): key, operator, values."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op in ("exists", "not exists"):
            return f"{self.key} {self.op}"
        if self.op in ("in", "not in"):
            return f"{self.key} {self.op} ({', '.join(self.values)})"
        return f"{self.key} {self.op} {self.values[0] if self.values else ''}"


@dataclass(frozen=True, slots=True)
class Placement:
    """What scoring needs to know of a task beyond its Needs: its data and preferences."""

    inputs: tuple[tuple[str, int], ...] = ()          # (digest, size)
    affinities: tuple[tuple[Expr, float], ...] = ()   # (clause, weight: + prefer, - avoid)

    @property
    def input_bytes(self) -> int:
        return sum(size for _, size in self.inputs)


NO_PLACEMENT = Placement()


@dataclass(frozen=True, slots=True)
class Needs:
    """What a task requires of an agent. Immutable and hashable: tasks with equal
    needs share one ready queue, so a poll checks each distinct need once."""

    cpus: float = 1.0
    memory: int = 0
    disk: int = 0
    gpus: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    gpu_memory: int = 0
    gpu_model: str = ""
    exprs: tuple[Expr, ...] = ()
    residency: frozenset[str] | None = None  # effective zones; None: anywhere; empty: conflict
    max_clock_skew: float = 0.0


@dataclass(slots=True, eq=False)
class Task:
    run_id: str
    name: str
    spec: Any  # outrider.v1.common_pb2.TaskSpec
    needs: Needs                     # current needs (residency narrowed by inputs once ready)
    order: int                       # position in the pipeline; ties in the ready queue
    spec_needs: Needs | None = None  # needs as the spec states them (None: derive from spec)
    upstream: tuple[str, ...] = ()   # tasks that must succeed first (inputs and after)
    downstream: list[str] = field(default_factory=list)
    state: TaskState = TaskState.PENDING
    attempts: int = 0                # attempts started; the current epoch
    failures: int = 0                # attempts that failed (counted against retries)
    agent: str = ""
    error: str = ""
    exit_code: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    not_before: float = 0.0          # wall time; retry backoff
    outputs: dict[str, Output] = field(default_factory=dict)
    # Lease bookkeeping, on the scheduler's monotonic clock; meaningful while RUNNING.
    lease_expires: float = 0.0
    leased_at: float = 0.0
    # Placement bookkeeping, meaningful while READY.
    placement: Placement = NO_PLACEMENT
    queued: bool = False             # in its run's ready queue (entries are removed lazily)
    ready_at: float = 0.0            # monotonic time it was queued: delay-scheduling and infeasibility clocks
    wait_for: str = ""               # the better agent it is waiting for, if any
    wait_until: float = 0.0          # wall time that wait ends

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.name)

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
    spec: Any  # outrider.v1.common_pb2.PipelineSpec
    submitter: str
    created_at: float
    trace_id: str
    seq: int                          # submission order
    state: RunState = RunState.RUNNING
    finished_at: float = 0.0
    tasks: dict[str, Task] = field(default_factory=dict)
    unfinished: int = 0               # tasks not terminal; kept so completion is O(1)
    priority: int = 0
    concurrency: int = 0              # 0: no limit
    tenant: str = ""
    running: int = 0                  # tasks holding a lease now
    # Ready tasks, one FIFO per distinct Needs: a poll checks each Needs once.
    queues: dict[Needs, Any] = field(default_factory=dict)
    queued: int = 0

    @property
    def terminal(self) -> bool:
        return self.state is not RunState.RUNNING


def needs_of(spec: Any) -> Needs:
    """Extract the hard requirements of a TaskSpec.

    The client fills in defaults (one core); a raw RPC that leaves cpus unset asks
    for no core reservation, only a slot.
    """
    req = spec.requires
    return Needs(
        cpus=req.cpus,
        memory=req.memory_bytes,
        disk=req.disk_bytes,
        gpus=req.gpus,
        labels=tuple(sorted(req.labels.items())),
        gpu_memory=req.gpu_memory_bytes,
        gpu_model=req.gpu_model,
        exprs=tuple(Expr(e.key, e.op, tuple(e.values)) for e in req.expressions),
        residency=frozenset(req.residency) if req.residency else None,
        max_clock_skew=req.max_clock_skew_s,
    )


def intersect_residency(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Zones allowed by both (None means anywhere)."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def upstream_of(spec: Any) -> tuple[str, ...]:
    """The tasks a TaskSpec depends on, through inputs or ``after``, in a stable order."""
    ups: dict[str, None] = {}
    for ref in spec.inputs.values():
        ups[ref.partition(".")[0]] = None
    for name in spec.after:
        ups[name] = None
    return tuple(ups)
