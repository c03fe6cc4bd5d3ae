from outrider.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanRequest(_message.Message):
    __slots__ = ("pipeline",)
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.PipelineSpec
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.PipelineSpec, _Mapping]] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskPlan]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskPlan, _Mapping]]] = ...) -> None: ...

class TaskPlan(_message.Message):
    __slots__ = ("task", "agents_considered", "feasible_agents", "rejections", "rejection_counts", "candidates", "suggestions", "residency", "residency_conflicts", "passing")
    class RejectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RejectionCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class PassingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    AGENTS_CONSIDERED_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    PASSING_FIELD_NUMBER: _ClassVar[int]
    task: str
    agents_considered: int
    feasible_agents: _containers.RepeatedScalarFieldContainer[str]
    rejections: _containers.ScalarMap[str, str]
    rejection_counts: _containers.ScalarMap[str, int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    residency: _containers.RepeatedScalarFieldContainer[str]
    residency_conflicts: _containers.RepeatedScalarFieldContainer[str]
    passing: _containers.ScalarMap[str, int]
    def __init__(self, task: _Optional[str] = ..., agents_considered: _Optional[int] = ..., feasible_agents: _Optional[_Iterable[str]] = ..., rejections: _Optional[_Mapping[str, str]] = ..., rejection_counts: _Optional[_Mapping[str, int]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., suggestions: _Optional[_Iterable[str]] = ..., residency: _Optional[_Iterable[str]] = ..., residency_conflicts: _Optional[_Iterable[str]] = ..., passing: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("agent", "score", "breakdown")
    class BreakdownEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    agent: str
    score: float
    breakdown: _containers.ScalarMap[str, float]
    def __init__(self, agent: _Optional[str] = ..., score: _Optional[float] = ..., breakdown: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("pipeline", "strict", "request_id")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.PipelineSpec
    strict: bool
    request_id: str
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.PipelineSpec, _Mapping]] = ..., strict: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("run_id", "warnings")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitAndWatchRequest(_message.Message):
    __slots__ = ("pipeline", "run_only", "strict", "request_id")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    RUN_ONLY_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.PipelineSpec
    run_only: bool
    strict: bool
    request_id: str
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.PipelineSpec, _Mapping]] = ..., run_only: _Optional[bool] = ..., strict: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("name", "state", "attempts", "agent", "outputs", "error", "exit_code", "started_at", "finished_at", "not_before", "history", "checkpoint", "resumed_from")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    attempts: int
    agent: str
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    error: str
    exit_code: int
    started_at: float
    finished_at: float
    not_before: float
    history: _containers.RepeatedCompositeFieldContainer[AttemptStatus]
    checkpoint: _common_pb2.Checkpoint
    resumed_from: _common_pb2.Checkpoint
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., agent: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., error: _Optional[str] = ..., exit_code: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., not_before: _Optional[float] = ..., history: _Optional[_Iterable[_Union[AttemptStatus, _Mapping]]] = ..., checkpoint: _Optional[_Union[_common_pb2.Checkpoint, _Mapping]] = ..., resumed_from: _Optional[_Union[_common_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class AttemptStatus(_message.Message):
    __slots__ = ("attempt", "agent", "state", "started_at", "finished_at", "exit_code", "error")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    agent: str
    state: str
    started_at: float
    finished_at: float
    exit_code: int
    error: str
    def __init__(self, attempt: _Optional[int] = ..., agent: _Optional[str] = ..., state: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_id", "pipeline", "state", "created_at", "finished_at", "tasks", "submitter", "code_digest")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pipeline: str
    state: str
    created_at: float
    finished_at: float
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    submitter: str
    code_digest: str
    def __init__(self, run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., state: _Optional[str] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ..., submitter: _Optional[str] = ..., code_digest: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "state")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    state: str
    def __init__(self, limit: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "others")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    OTHERS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunStatus]
    others: int
    def __init__(self, runs: _Optional[_Iterable[_Union[RunStatus, _Mapping]]] = ..., others: _Optional[int] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "run_only", "after_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ONLY_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    run_only: bool
    after_seq: int
    def __init__(self, run_id: _Optional[str] = ..., run_only: _Optional[bool] = ..., after_seq: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "task", "state", "attempt", "agent", "message", "ts", "snapshot", "warnings", "seq", "score")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    state: str
    attempt: int
    agent: str
    message: str
    ts: float
    snapshot: RunStatus
    warnings: _containers.RepeatedScalarFieldContainer[str]
    seq: int
    score: float
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., agent: _Optional[str] = ..., message: _Optional[str] = ..., ts: _Optional[float] = ..., snapshot: _Optional[_Union[RunStatus, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., seq: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class RetryRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("name", "identity", "state", "capabilities", "clock", "last_seen", "running", "free_slots", "registered_at", "clock_suspect", "clock_skew_s", "draining", "unhealthy", "instance_id", "revoked", "revoked_at", "revoked_by", "transfers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SUSPECT_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SKEW_S_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity: str
    state: str
    capabilities: _common_pb2.Capabilities
    clock: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClockSample]
    last_seen: float
    running: int
    free_slots: int
    registered_at: float
    clock_suspect: bool
    clock_skew_s: float
    draining: bool
    unhealthy: str
    instance_id: str
    revoked: bool
    revoked_at: float
    revoked_by: str
    transfers: _containers.RepeatedCompositeFieldContainer[_common_pb2.TransferProgress]
    def __init__(self, name: _Optional[str] = ..., identity: _Optional[str] = ..., state: _Optional[str] = ..., capabilities: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., clock: _Optional[_Iterable[_Union[_common_pb2.ClockSample, _Mapping]]] = ..., last_seen: _Optional[float] = ..., running: _Optional[int] = ..., free_slots: _Optional[int] = ..., registered_at: _Optional[float] = ..., clock_suspect: _Optional[bool] = ..., clock_skew_s: _Optional[float] = ..., draining: _Optional[bool] = ..., unhealthy: _Optional[str] = ..., instance_id: _Optional[str] = ..., revoked: _Optional[bool] = ..., revoked_at: _Optional[float] = ..., revoked_by: _Optional[str] = ..., transfers: _Optional[_Iterable[_Union[_common_pb2.TransferProgress, _Mapping]]] = ...) -> None: ...

class DrainAgentRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

class RevokeAgentRequest(_message.Message):
    __slots__ = ("agent", "reason")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent: str
    reason: str
    def __init__(self, agent: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeAgentResponse(_message.Message):
    __slots__ = ("agent", "already_revoked", "revoked_at", "revoked_by", "reason", "leases_requeued", "known")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEASES_REQUEUED_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    agent: str
    already_revoked: bool
    revoked_at: float
    revoked_by: str
    reason: str
    leases_requeued: int
    known: bool
    def __init__(self, agent: _Optional[str] = ..., already_revoked: _Optional[bool] = ..., revoked_at: _Optional[float] = ..., revoked_by: _Optional[str] = ..., reason: _Optional[str] = ..., leases_requeued: _Optional[int] = ..., known: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("run_id", "task")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("run_id", "task", "state", "reason", "message", "until", "agent", "plan")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    state: str
    reason: str
    message: str
    until: float
    agent: str
    plan: TaskPlan
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., until: _Optional[float] = ..., agent: _Optional[str] = ..., plan: _Optional[_Union[TaskPlan, _Mapping]] = ...) -> None: ...

class GetLogsRequest(_message.Message):
    __slots__ = ("run_id", "task", "attempt", "follow")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    attempt: int
    follow: bool
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("attempt", "stream", "data", "ts")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    stream: str
    data: bytes
    ts: float
    def __init__(self, attempt: _Optional[int] = ..., stream: _Optional[str] = ..., data: _Optional[bytes] = ..., ts: _Optional[float] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class TraceSpan(_message.Message):
    __slots__ = ("span_id", "parent_span_id", "name", "start", "end", "task", "attempt", "agent", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    span_id: str
    parent_span_id: str
    name: str
    start: float
    end: float
    task: str
    attempt: int
    agent: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., name: _Optional[str] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ..., agent: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("run_id", "trace_id", "spans")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[TraceSpan]
    def __init__(self, run_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[TraceSpan, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_seq", "run_id", "follow")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    run_id: str
    follow: bool
    def __init__(self, after_seq: _Optional[int] = ..., run_id: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class LineageRequest(_message.Message):
    __slots__ = ("digest", "down", "max_depth", "max_steps")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    down: bool
    max_depth: int
    max_steps: int
    def __init__(self, digest: _Optional[str] = ..., down: _Optional[bool] = ..., max_depth: _Optional[int] = ..., max_steps: _Optional[int] = ...) -> None: ...

class LineageStep(_message.Message):
    __slots__ = ("run_id", "pipeline", "task", "attempt", "agent", "command", "code_digest", "inputs", "outputs", "depth", "finished_at", "state")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pipeline: str
    task: str
    attempt: int
    agent: str
    command: _containers.RepeatedScalarFieldContainer[str]
    code_digest: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    depth: int
    finished_at: float
    state: str
    def __init__(self, run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ..., agent: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., code_digest: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., depth: _Optional[int] = ..., finished_at: _Optional[float] = ..., state: _Optional[str] = ...) -> None: ...

class LineageResponse(_message.Message):
    __slots__ = ("digest", "direction", "steps", "raw_inputs", "truncated")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    RAW_INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    direction: str
    steps: _containers.RepeatedCompositeFieldContainer[LineageStep]
    raw_inputs: _containers.RepeatedScalarFieldContainer[str]
    truncated: str
    def __init__(self, digest: _Optional[str] = ..., direction: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[LineageStep, _Mapping]]] = ..., raw_inputs: _Optional[_Iterable[str]] = ..., truncated: _Optional[str] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("prefix", "kind")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    kind: str
    def __init__(self, prefix: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("full",)
    FULL_FIELD_NUMBER: _ClassVar[int]
    full: str
    def __init__(self, full: _Optional[str] = ...) -> None: ...

class GetStageMetricsRequest(_message.Message):
    __slots__ = ("run_ids",)
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AttemptMetric(_message.Message):
    __slots__ = ("task", "attempt", "name", "value", "step", "ts", "count")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    task: str
    attempt: int
    name: str
    value: float
    step: int
    ts: float
    count: int
    def __init__(self, task: _Optional[str] = ..., attempt: _Optional[int] = ..., name: _Optional[str] = ..., value: _Optional[float] = ..., step: _Optional[int] = ..., ts: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class AttemptMetricsSkipped(_message.Message):
    __slots__ = ("task", "attempt", "count", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: str
    attempt: int
    count: int
    reason: str
    def __init__(self, task: _Optional[str] = ..., attempt: _Optional[int] = ..., count: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RunStageMetrics(_message.Message):
    __slots__ = ("run_id", "metrics", "skipped", "truncated")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    metrics: _containers.RepeatedCompositeFieldContainer[AttemptMetric]
    skipped: _containers.RepeatedCompositeFieldContainer[AttemptMetricsSkipped]
    truncated: bool
    def __init__(self, run_id: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[AttemptMetric, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[AttemptMetricsSkipped, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class GetStageMetricsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunStageMetrics]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunStageMetrics, _Mapping]]] = ...) -> None: ...
