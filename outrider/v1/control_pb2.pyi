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
    __slots__ = ("task", "agents_considered", "feasible_agents", "rejections")
    class RejectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    AGENTS_CONSIDERED_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    task: str
    agents_considered: int
    feasible_agents: _containers.RepeatedScalarFieldContainer[str]
    rejections: _containers.ScalarMap[str, str]
    def __init__(self, task: _Optional[str] = ..., agents_considered: _Optional[int] = ..., feasible_agents: _Optional[_Iterable[str]] = ..., rejections: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("pipeline",)
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.PipelineSpec
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.PipelineSpec, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("run_id", "warnings")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitAndWatchRequest(_message.Message):
    __slots__ = ("pipeline", "run_only")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    RUN_ONLY_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.PipelineSpec
    run_only: bool
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.PipelineSpec, _Mapping]] = ..., run_only: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("name", "state", "attempts", "agent", "outputs", "error", "exit_code", "started_at", "finished_at", "not_before")
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
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., agent: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., error: _Optional[str] = ..., exit_code: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., not_before: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunStatus]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunStatus, _Mapping]]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "run_only")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ONLY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    run_only: bool
    def __init__(self, run_id: _Optional[str] = ..., run_only: _Optional[bool] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "task", "state", "attempt", "agent", "message", "ts", "snapshot", "warnings")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    state: str
    attempt: int
    agent: str
    message: str
    ts: float
    snapshot: RunStatus
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., agent: _Optional[str] = ..., message: _Optional[str] = ..., ts: _Optional[float] = ..., snapshot: _Optional[_Union[RunStatus, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("name", "identity", "state", "capabilities", "clock", "last_seen", "running", "free_slots", "registered_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity: str
    state: str
    capabilities: _common_pb2.Capabilities
    clock: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClockSample]
    last_seen: float
    running: int
    free_slots: int
    registered_at: float
    def __init__(self, name: _Optional[str] = ..., identity: _Optional[str] = ..., state: _Optional[str] = ..., capabilities: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., clock: _Optional[_Iterable[_Union[_common_pb2.ClockSample, _Mapping]]] = ..., last_seen: _Optional[float] = ..., running: _Optional[int] = ..., free_slots: _Optional[int] = ..., registered_at: _Optional[float] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

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
