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


@dataclass(slots=True)
class Needs:
    """What a task requires of an agent, extracted once from its spec."""

    cpus: float = 1.0
    memory: int = 0
    disk: int = 0
    gpus: int = 0
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, eq=False)
class Task:
    run_id: str
    name: str
    spec: Any  # outrider.v1.common_pb2.TaskSpec
    needs: Needs
    order: int                       # position in the pipeline; ties in the ready queue
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
    )


def upstream_of(spec: Any) -> tuple[str, ...]:
    """The tasks a TaskSpec depends on, through inputs or ``after``, in a stable order."""
    ups: dict[str, None] = {}
    for ref in spec.inputs.values():
        ups[ref.partition(".")[0]] = None
    for name in spec.after:
        ups[name] = None
    return tuple(ups)
