from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelExpr(_message.Message):
    __slots__ = ("key", "op", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    op: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., op: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class Requirements(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "disk_bytes", "gpus", "labels", "gpu_memory_bytes", "gpu_model", "expressions", "residency", "max_clock_skew_s")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_CLOCK_SKEW_S_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    disk_bytes: int
    gpus: int
    labels: _containers.ScalarMap[str, str]
    gpu_memory_bytes: int
    gpu_model: str
    expressions: _containers.RepeatedCompositeFieldContainer[LabelExpr]
    residency: _containers.RepeatedScalarFieldContainer[str]
    max_clock_skew_s: float
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., gpus: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., gpu_memory_bytes: _Optional[int] = ..., gpu_model: _Optional[str] = ..., expressions: _Optional[_Iterable[_Union[LabelExpr, _Mapping]]] = ..., residency: _Optional[_Iterable[str]] = ..., max_clock_skew_s: _Optional[float] = ...) -> None: ...

class Affinity(_message.Message):
    __slots__ = ("expr", "weight")
    EXPR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    expr: LabelExpr
    weight: float
    def __init__(self, expr: _Optional[_Union[LabelExpr, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("name", "argv", "shell", "inputs", "outputs", "after", "requires", "max_attempts", "backoff_s", "timeout_s", "env", "affinities", "secret_env")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SecretEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    SECRET_ENV_FIELD_NUMBER: _ClassVar[int]
    name: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    shell: bool
    inputs: _containers.ScalarMap[str, str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    after: _containers.RepeatedScalarFieldContainer[str]
    requires: Requirements
    max_attempts: int
    backoff_s: float
    timeout_s: float
    env: _containers.ScalarMap[str, str]
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    secret_env: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., shell: _Optional[bool] = ..., inputs: _Optional[_Mapping[str, str]] = ..., outputs: _Optional[_Iterable[str]] = ..., after: _Optional[_Iterable[str]] = ..., requires: _Optional[_Union[Requirements, _Mapping]] = ..., max_attempts: _Optional[int] = ..., backoff_s: _Optional[float] = ..., timeout_s: _Optional[float] = ..., env: _Optional[_Mapping[str, str]] = ..., affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ..., secret_env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PipelineSpec(_message.Message):
    __slots__ = ("name", "code_digest", "tasks", "priority", "concurrency", "tenant")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    code_digest: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    priority: int
    concurrency: int
    tenant: str
    def __init__(self, name: _Optional[str] = ..., code_digest: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., priority: _Optional[int] = ..., concurrency: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("run_id", "task", "epoch")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    epoch: int
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("name", "digest", "size", "kind", "residency")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    size: int
    kind: str
    residency: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., kind: _Optional[str] = ..., residency: _Optional[_Iterable[str]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("lease", "digest", "size", "kind", "seq", "created_at")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    digest: str
    size: int
    kind: str
    seq: int
    created_at: float
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., kind: _Optional[str] = ..., seq: _Optional[int] = ..., created_at: _Optional[float] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("index", "model", "memory_bytes", "memory_free_bytes", "driver", "uuid", "compute_capability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    model: str
    memory_bytes: int
    memory_free_bytes: int
    driver: str
    uuid: str
    compute_capability: str
    def __init__(self, index: _Optional[int] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., driver: _Optional[str] = ..., uuid: _Optional[str] = ..., compute_capability: _Optional[str] = ...) -> None: ...

class ClockSample(_message.Message):
    __slots__ = ("offset_s", "uncertainty_s", "source", "measured_at")
    OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_S_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_FIELD_NUMBER: _ClassVar[int]
    offset_s: float
    uncertainty_s: float
    source: str
    measured_at: float
    def __init__(self, offset_s: _Optional[float] = ..., uncertainty_s: _Optional[float] = ..., source: _Optional[str] = ..., measured_at: _Optional[float] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("cpu_cores", "arch", "cpu_model", "memory_bytes", "disk_bytes", "disk_free_bytes", "gpus", "os", "os_release", "python_version", "hostname", "labels", "slots", "agent_version", "gpu_probe", "zones", "bandwidth_bps", "rtt_s", "cached", "power", "queued_jobs")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    OS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_PROBE_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    RTT_S_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    cpu_cores: int
    arch: str
    cpu_model: str
    memory_bytes: int
    disk_bytes: int
    disk_free_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    os: str
    os_release: str
    python_version: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    slots: int
    agent_version: str
    gpu_probe: str
    zones: _containers.RepeatedScalarFieldContainer[str]
    bandwidth_bps: float
    rtt_s: float
    cached: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    power: Power
    queued_jobs: int
    def __init__(self, cpu_cores: _Optional[int] = ..., arch: _Optional[str] = ..., cpu_model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., os: _Optional[str] = ..., os_release: _Optional[str] = ..., python_version: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., slots: _Optional[int] = ..., agent_version: _Optional[str] = ..., gpu_probe: _Optional[str] = ..., zones: _Optional[_Iterable[str]] = ..., bandwidth_bps: _Optional[float] = ..., rtt_s: _Optional[float] = ..., cached: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ..., power: _Optional[_Union[Power, _Mapping]] = ..., queued_jobs: _Optional[int] = ...) -> None: ...

class Power(_message.Message):
    __slots__ = ("has_battery", "on_battery", "battery_percent")
    HAS_BATTERY_FIELD_NUMBER: _ClassVar[int]
    ON_BATTERY_FIELD_NUMBER: _ClassVar[int]
    BATTERY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    has_battery: bool
    on_battery: bool
    battery_percent: float
    def __init__(self, has_battery: _Optional[bool] = ..., on_battery: _Optional[bool] = ..., battery_percent: _Optional[float] = ...) -> None: ...

class TransferProgress(_message.Message):
    __slots__ = ("digest", "direction", "done_bytes", "total_bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    direction: str
    done_bytes: int
    total_bytes: int
    def __init__(self, digest: _Optional[str] = ..., direction: _Optional[str] = ..., done_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...
