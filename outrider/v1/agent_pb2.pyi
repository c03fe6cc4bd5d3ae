from outrider.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("capabilities", "clock", "leases", "client_time", "instance_id")
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    capabilities: _common_pb2.Capabilities
    clock: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClockSample]
    leases: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    client_time: float
    instance_id: str
    def __init__(self, capabilities: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., clock: _Optional[_Iterable[_Union[_common_pb2.ClockSample, _Mapping]]] = ..., leases: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., client_time: _Optional[float] = ..., instance_id: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("agent_id", "server_time", "heartbeat_interval_s", "lease_ttl_s", "lost")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    server_time: float
    heartbeat_interval_s: float
    lease_ttl_s: float
    lost: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    def __init__(self, agent_id: _Optional[str] = ..., server_time: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ..., lease_ttl_s: _Optional[float] = ..., lost: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("leases", "clock", "client_time", "free_slots", "capabilities", "unhealthy", "draining", "figures")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    clock: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClockSample]
    client_time: float
    free_slots: int
    capabilities: _common_pb2.Capabilities
    unhealthy: str
    draining: bool
    figures: AgentFigures
    def __init__(self, leases: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., clock: _Optional[_Iterable[_Union[_common_pb2.ClockSample, _Mapping]]] = ..., client_time: _Optional[float] = ..., free_slots: _Optional[int] = ..., capabilities: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., unhealthy: _Optional[str] = ..., draining: _Optional[bool] = ..., figures: _Optional[_Union[AgentFigures, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time", "lost", "lease_ttl_s", "client_time")
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: float
    lost: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    lease_ttl_s: float
    client_time: float
    def __init__(self, server_time: _Optional[float] = ..., lost: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., lease_ttl_s: _Optional[float] = ..., client_time: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("lease", "spec", "inputs", "code_digest", "pipeline", "traceparent", "lease_ttl_s", "resume_from")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    spec: _common_pb2.TaskSpec
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    code_digest: str
    pipeline: str
    traceparent: str
    lease_ttl_s: float
    resume_from: _common_pb2.Checkpoint
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., code_digest: _Optional[str] = ..., pipeline: _Optional[str] = ..., traceparent: _Optional[str] = ..., lease_ttl_s: _Optional[float] = ..., resume_from: _Optional[_Union[_common_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("lease", "outcome", "exit_code", "error", "outputs", "started_at", "finished_at", "fetched_at", "exec_started_at", "exec_exited_at", "upload_started_at", "metrics", "metrics_skipped")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    FETCHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXEC_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXEC_EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRICS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    outcome: str
    exit_code: int
    error: str
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    started_at: float
    finished_at: float
    fetched_at: float
    exec_started_at: float
    exec_exited_at: float
    upload_started_at: float
    metrics: _containers.RepeatedCompositeFieldContainer[StageMetric]
    metrics_skipped: StageMetricsSkipped
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., outcome: _Optional[str] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., fetched_at: _Optional[float] = ..., exec_started_at: _Optional[float] = ..., exec_exited_at: _Optional[float] = ..., upload_started_at: _Optional[float] = ..., metrics: _Optional[_Iterable[_Union[StageMetric, _Mapping]]] = ..., metrics_skipped: _Optional[_Union[StageMetricsSkipped, _Mapping]] = ...) -> None: ...

class CompletionAck(_message.Message):
    __slots__ = ("lease", "code", "message")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    code: int
    message: str
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("lease", "stream", "data", "ts")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    stream: str
    data: bytes
    ts: float
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., stream: _Optional[str] = ..., data: _Optional[bytes] = ..., ts: _Optional[float] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("credits", "completions", "logs", "heartbeat", "checkpoints")
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    credits: int
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    logs: _containers.RepeatedCompositeFieldContainer[LogChunk]
    heartbeat: HeartbeatRequest
    checkpoints: _containers.RepeatedCompositeFieldContainer[_common_pb2.Checkpoint]
    def __init__(self, credits: _Optional[int] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., logs: _Optional[_Iterable[_Union[LogChunk, _Mapping]]] = ..., heartbeat: _Optional[_Union[HeartbeatRequest, _Mapping]] = ..., checkpoints: _Optional[_Iterable[_Union[_common_pb2.Checkpoint, _Mapping]]] = ...) -> None: ...

class SchedulerMessage(_message.Message):
    __slots__ = ("assignments", "acks", "cancel", "heartbeat", "checkpoint_acks", "drain")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ACKS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    acks: _containers.RepeatedCompositeFieldContainer[CompletionAck]
    cancel: _containers.RepeatedCompositeFieldContainer[_common_pb2.LeaseRef]
    heartbeat: HeartbeatResponse
    checkpoint_acks: _containers.RepeatedCompositeFieldContainer[CheckpointAck]
    drain: bool
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[CompletionAck, _Mapping]]] = ..., cancel: _Optional[_Iterable[_Union[_common_pb2.LeaseRef, _Mapping]]] = ..., heartbeat: _Optional[_Union[HeartbeatResponse, _Mapping]] = ..., checkpoint_acks: _Optional[_Iterable[_Union[CheckpointAck, _Mapping]]] = ..., drain: _Optional[bool] = ...) -> None: ...

class CheckpointAck(_message.Message):
    __slots__ = ("lease", "seq", "code", "message")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.LeaseRef
    seq: int
    code: int
    message: str
    def __init__(self, lease: _Optional[_Union[_common_pb2.LeaseRef, _Mapping]] = ..., seq: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("free_slots", "wait_s", "completions")
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    free_slots: int
    wait_s: float
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    def __init__(self, free_slots: _Optional[int] = ..., wait_s: _Optional[float] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ...) -> None: ...

class PollResponse(_message.Message):
    __slots__ = ("assignments", "acks")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    acks: _containers.RepeatedCompositeFieldContainer[CompletionAck]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[CompletionAck, _Mapping]]] = ...) -> None: ...

class ReportLogsRequest(_message.Message):
    __slots__ = ("logs",)
    LOGS_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[LogChunk]
    def __init__(self, logs: _Optional[_Iterable[_Union[LogChunk, _Mapping]]] = ...) -> None: ...

class ReportLogsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: Completion
    def __init__(self, completion: _Optional[_Union[Completion, _Mapping]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportCheckpointRequest(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class ReportCheckpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentFigures(_message.Message):
    __slots__ = ("stage_cpu_seconds", "stage_cpu_percent", "stage_rss_bytes", "gpus", "disk_free_bytes", "disk_total_bytes", "cache_bytes", "outbox_depth", "transfers")
    STAGE_CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STAGE_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STAGE_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    stage_cpu_seconds: float
    stage_cpu_percent: float
    stage_rss_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuFigures]
    disk_free_bytes: int
    disk_total_bytes: int
    cache_bytes: int
    outbox_depth: int
    transfers: _containers.RepeatedCompositeFieldContainer[_common_pb2.TransferProgress]
    def __init__(self, stage_cpu_seconds: _Optional[float] = ..., stage_cpu_percent: _Optional[float] = ..., stage_rss_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuFigures, _Mapping]]] = ..., disk_free_bytes: _Optional[int] = ..., disk_total_bytes: _Optional[int] = ..., cache_bytes: _Optional[int] = ..., outbox_depth: _Optional[int] = ..., transfers: _Optional[_Iterable[_Union[_common_pb2.TransferProgress, _Mapping]]] = ...) -> None: ...

class GpuFigures(_message.Message):
    __slots__ = ("index", "utilization_percent", "memory_used_bytes", "memory_total_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    def __init__(self, index: _Optional[int] = ..., utilization_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ...) -> None: ...

class StageMetric(_message.Message):
    __slots__ = ("name", "value", "step", "ts", "count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    step: int
    ts: float
    count: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., step: _Optional[int] = ..., ts: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class StageMetricsSkipped(_message.Message):
    __slots__ = ("count", "reason")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    count: int
    reason: str
    def __init__(self, count: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
