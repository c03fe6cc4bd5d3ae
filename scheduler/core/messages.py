"""What agents tell the core and what the core sends them, as plain values.

:mod:`scheduler.api.wire` converts these to and from the protobuf messages of
the same names in ``outrider/v1/agent.proto`` and ``common.proto``; the core
never sees a protobuf message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from outrider.errors import OutriderError
from outrider.protocol import Outcome
from scheduler.core.figures import AgentFigures
from scheduler.core.spec import TaskSpec


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """One lease: an attempt of a task. The epoch is the attempt number."""

    run_id: str
    task: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ClockSample:
    """What an agent measured about its clock against one source."""

    offset_s: float = 0.0  # add to the agent's time to get the source's
    uncertainty_s: float = 0.0
    source: str = ""  # "ntp:HOST" or "scheduler"
    measured_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int = 0
    model: str = ""
    memory_bytes: int = 0
    memory_free_bytes: int = 0
    driver: str = ""
    uuid: str = ""
    compute_capability: str = ""


@dataclass(frozen=True, slots=True)
class Power:
    has_battery: bool = False
    on_battery: bool = False
    battery_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """A content-addressed artifact: an input given to a stage, or an output it made."""

    name: str
    digest: str
    size: int = 0
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an agent advertises about itself (proto ``Capabilities``)."""

    cpu_cores: int = 0
    arch: str = ""
    cpu_model: str = ""
    memory_bytes: int = 0
    disk_bytes: int = 0
    disk_free_bytes: int = 0
    gpus: tuple[Gpu, ...] = ()
    os: str = ""
    os_release: str = ""
    python_version: str = ""
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    slots: int = 0
    agent_version: str = ""
    gpu_probe: str = ""
    zones: tuple[str, ...] = ()
    bandwidth_bps: float = 0.0
    rtt_s: float = 0.0
    cached: tuple[ArtifactRef, ...] = ()  # digest and size of each blob in its cache
    power: Power = Power()
    queued_jobs: int = 0  # its jobs pending in a batch system (the Slurm executor)


@dataclass(frozen=True, slots=True)
class StageMetric:
    """The last value a stage logged for ``name`` in an attempt (``ts`` on the agent's clock;
    ``step`` None: logged without one; ``count``: how many values the name had)."""

    name: str
    value: float
    step: int | None
    ts: float
    count: int


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of an attempt, as its agent reports it (times on the agent's clock)."""

    lease: LeaseRef
    outcome: Outcome
    exit_code: int = 0
    error: str = ""
    outputs: tuple[ArtifactRef, ...] = ()
    started_at: float = 0.0
    finished_at: float = 0.0
    # Trace span times, on the agent's clock (0: not reached; scheduler.core.tracing).
    fetched_at: float = 0.0
    exec_started_at: float = 0.0
    exec_exited_at: float = 0.0
    upload_started_at: float = 0.0
    # What the stage recorded about itself (outrider.metrics): last value per name, lines skipped.
    metrics: tuple[StageMetric, ...] = ()
    metrics_skipped: int = 0
    metrics_skipped_reason: str = ""


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Bytes a stage wrote, as its agent forwards them (``ts`` on the agent's clock)."""

    lease: LeaseRef
    stream: str
    data: bytes
    ts: float


@dataclass(frozen=True, slots=True)
class Assignment:
    """A lease handed to an agent: run this attempt of this task."""

    lease: LeaseRef
    spec: TaskSpec
    inputs: tuple[ArtifactRef, ...]
    code_digest: str
    pipeline: str
    traceparent: str
    lease_ttl_s: float
    resume_from: Checkpoint | None = None  # the latest checkpoint accepted from an earlier attempt


@dataclass(frozen=True, slots=True)
class Ack:
    """The scheduler's answer to one completion: applied (``error`` None) or refused."""

    lease: LeaseRef
    error: OutriderError | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint of a task's progress saved by one attempt (``lease``): content-addressed
    bytes already in the artifact store; ``seq`` orders the checkpoints of one attempt."""

    lease: LeaseRef
    digest: str
    size: int
    kind: str
    seq: int
    created_at: float  # the agent's wall clock in a report; ours once accepted


@dataclass(frozen=True, slots=True)
class CheckpointAck:
    """The scheduler's answer to one checkpoint report: recorded (``error`` None) or refused."""

    lease: LeaseRef
    seq: int
    error: OutriderError | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """An agent's heartbeat: the leases it renews, its clock, what changed about it."""

    leases: tuple[LeaseRef, ...]
    clocks: tuple[ClockSample, ...]
    caps: Capabilities | None  # None: unchanged since Register
    unhealthy: str
    draining: bool
    client_time: float
    figures: AgentFigures | None = None  # what it measured of itself (None: sent none)


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """The answer to a heartbeat: the leases the agent lost, and the clock echo."""

    server_time: float
    lost: tuple[LeaseRef, ...]
    lease_ttl_s: float
    client_time: float
