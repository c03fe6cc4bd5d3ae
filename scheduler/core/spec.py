"""A pipeline as the core sees it: immutable values, converted from the wire once.

The wire form (``outrider.v1.PipelineSpec``) is validated by the one spec
validator (:mod:`outrider.spec`) and converted by :mod:`scheduler.api.wire`;
from there on the core reads these frozen dataclasses. A ``task.output``
reference arrives parsed (:class:`InputRef`), so nothing here splits strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Expr:
    """A label expression (see proto ``LabelExpr``): key, operator, values."""

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
class Affinity:
    """A soft preference: weight > 0 prefers agents where ``expr`` holds, < 0 avoids them."""

    expr: Expr
    weight: float


@dataclass(frozen=True, slots=True)
class Needs:
    """What a task requires of an agent: hard constraints only.

    A task's spec states them (``TaskSpec.requires``); once its inputs exist, its
    effective needs narrow the residency by theirs (:func:`scheduler.core.model.narrowed`).
    Immutable and hashable: tasks with equal needs share one ready queue, so a poll
    checks each distinct need once. A raw RPC that leaves cpus unset asks for no core
    reservation, only a slot (the client fills in one core by default).
    """

    cpus: float = 1.0
    memory: int = 0
    disk: int = 0
    gpus: int = 0
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs, all required
    gpu_memory: int = 0  # free memory each GPU must have
    gpu_model: str = ""  # a GPU model substring, e.g. "H100"
    exprs: tuple[Expr, ...] = ()  # label expressions, all must hold
    residency: frozenset[str] | None = None  # zones the data may be processed in; None: anywhere; empty: conflict
    max_clock_skew: float = 0.0  # 0: no bound


@dataclass(frozen=True, slots=True)
class InputRef:
    """Where an input comes from: output ``output`` of upstream task ``task``."""

    task: str
    output: str

    def __str__(self) -> str:
        return f"{self.task}.{self.output}"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a pipeline, as submitted."""

    name: str
    argv: tuple[str, ...]
    shell: bool = False
    inputs: tuple[tuple[str, InputRef], ...] = ()  # (input name, reference), in spec order
    outputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # ordering-only upstreams
    requires: Needs = Needs()
    affinities: tuple[Affinity, ...] = ()
    max_attempts: int = 0  # total attempts allowed (1 + retries); 0 means 1
    backoff_s: float = 0.0
    timeout_s: float = 0.0  # 0: none
    env: tuple[tuple[str, str], ...] = ()
    #: Secret environment variables: for the stage only, never shown, not even in a repr.
    secret_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def upstream(self) -> tuple[str, ...]:
        """The tasks this one depends on, through inputs or ``after``, in a stable order."""
        ups = dict.fromkeys(ref.task for _, ref in self.inputs)
        ups.update(dict.fromkeys(self.after))
        return tuple(ups)


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A pipeline, as submitted."""

    name: str
    tasks: tuple[TaskSpec, ...]
    code_digest: str = ""
    priority: int = 0
    concurrency: int = 0  # 0: no limit
    tenant: str = ""  # empty: the submitter
    #: The spec exactly as it was submitted, in its wire encoding: what the store keeps, verbatim.
    #: Opaque to the core; empty for a spec built in code (the store then encodes it itself).
    encoded: bytes = field(default=b"", compare=False, repr=False)
