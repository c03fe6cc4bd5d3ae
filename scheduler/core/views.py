"""What clients read of the core, as immutable snapshots.

A snapshot is taken on the event loop at the moment the answer is decided, so
converting it to protobuf later (:mod:`scheduler.api.wire`) can never show a
half-applied change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.core.figures import Transfer
from scheduler.core.messages import Capabilities, Checkpoint, ClockSample
from scheduler.core.model import Attempt, Output, Run, Task
from scheduler.matcher.scores import Candidate


@dataclass(frozen=True, slots=True)
class TaskStatus:
    name: str
    state: str
    attempts: int
    agent: str
    outputs: tuple[Output, ...]
    error: str
    exit_code: int
    started_at: float
    finished_at: float
    not_before: float
    history: tuple[Attempt, ...] = ()  # every attempt, oldest first (immutable records)
    checkpoint: Checkpoint | None = None  # the latest accepted
    resumed_from: Checkpoint | None = None  # what the current (or last) attempt resumed from


@dataclass(frozen=True, slots=True)
class RunStatus:
    run_id: str
    pipeline: str
    state: str
    created_at: float
    finished_at: float
    submitter: str
    code_digest: str
    tasks: tuple[TaskStatus, ...] = ()


def task_status(t: Task) -> TaskStatus:
    return TaskStatus(
        name=t.name,
        state=t.state.value,
        attempts=t.attempts,
        agent=t.agent,
        outputs=tuple(t.outputs.values()),
        error=t.error,
        exit_code=t.exit_code,
        started_at=t.started_at,
        finished_at=t.finished_at,
        not_before=t.not_before,
        history=tuple(t.history),
        checkpoint=t.checkpoint,
        resumed_from=t.resumed_from,
    )


def run_status(run: Run, with_tasks: bool = True) -> RunStatus:
    return RunStatus(
        run_id=run.run_id,
        pipeline=run.pipeline,
        state=run.state.value,
        created_at=run.created_at,
        finished_at=run.finished_at,
        submitter=run.submitter,
        code_digest=run.spec.code_digest,
        tasks=tuple(task_status(t) for t in run.tasks.values()) if with_tasks else (),
    )


@dataclass(slots=True)
class RunEvent:
    """One entry of a run's history, as watchers get it."""

    run_id: str
    task: str  # empty for a run-level event
    state: str  # an EventKind value
    attempt: int = 0
    agent: str = ""
    message: str = ""
    ts: float = 0.0
    snapshot: RunStatus | None = None  # on the first event of a watch, and the run's last
    warnings: tuple[str, ...] = ()  # SubmitAndWatch: on the first event
    seq: int = 0  # its place in the run's durable history; 0: the snapshot that opens a watch


@dataclass(frozen=True, slots=True)
class LogLine:
    attempt: int
    stream: str
    data: bytes
    ts: float  # scheduler clock


@dataclass(slots=True)
class TaskPlan:
    """Where a task could run and why not elsewhere (``plan``, ``explain``)."""

    task: str
    agents_considered: int = 0
    feasible_agents: list[str] = field(default_factory=list)
    rejections: dict[str, str] = field(default_factory=dict)  # agent -> "reason: detail; ..."
    rejection_counts: dict[str, int] = field(default_factory=dict)  # reason -> agents
    candidates: list[Candidate] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    residency: list[str] = field(default_factory=list)
    residency_conflicts: list[str] = field(default_factory=list)
    passing: dict[str, int] = field(default_factory=dict)  # clause -> agents passing it


@dataclass(slots=True)
class Explanation:
    """Why a task is where it is right now (``explain``)."""

    run_id: str
    task: str
    state: str
    agent: str
    plan: TaskPlan
    reason: str = ""
    message: str = ""
    until: float = 0.0  # wall time the current wait ends, where one applies


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One agent as ``outrider agents`` shows it."""

    name: str
    identity: str
    state: str  # "ready" or "disconnected"
    capabilities: Capabilities
    clock: tuple[ClockSample, ...]
    last_seen: float
    running: int
    free_slots: int
    registered_at: float
    clock_suspect: bool
    clock_skew_s: float
    draining: bool = False
    unhealthy: str = ""  # why it takes no work ("": healthy)
    instance_id: str = ""
    revoked: bool = False  # its name is revoked (scheduler.core.revocation): every call of it is refused
    revoked_at: float = 0.0  # wall time of the revocation
    revoked_by: str = ""  # the admin's SPIFFE ID
    transfers: tuple[Transfer, ...] = ()  # artifact transfers in flight, as its last heartbeat said
