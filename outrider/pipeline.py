"""Pipeline specs: the Python SDK, the domain model, and the entry points for YAML files.

A pipeline reaches the scheduler by one of three roads, and all of them meet the one
validator (``outrider.spec``), which checks the wire form ``common_pb2.PipelineSpec``:

* a YAML file (``load_pipeline`` / ``parse_pipeline``): the YAML front end
  (``outrider.spec_yaml``) reads it into the wire form and reports every problem as
  ``FILE:LINE: field.path: message``;
* the SDK (``Pipeline("digits").task(...)``): keyword arguments are turned into the very
  dict the YAML would have produced and read by the same front end (file ``<sdk>``);
* the wire (``validate_proto`` / ``Pipeline.from_proto``): any gRPC client may send a
  ``PipelineSpec``, so the scheduler checks it again on receipt.

``parse_label_expr`` and ``format_label_expr`` (``outrider.labels``) turn the text form of a
label expression (``"site in (a, b)"``, used by ``requires.match``, ``prefer`` and ``avoid``)
into a ``LabelExpr`` and back; the scheduler and the CLI use them too. The names this module
has always offered (``NAME_PATTERN``, ``validate_proto``, ...) are still importable from here.

See docs/pipeline.md for the schema, every field, the defaults and the error format.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from outrider.labels import LABEL_KEY_PATTERN, LABEL_OPS, format_label_expr, parse_label_expr
from outrider.spec import (
    NAME_PATTERN,
    TENANT_PATTERN,
    ZONE_PATTERN,
    FieldPath,
    check_spec,
    find_cycles,
    parse_ref,
    upstream_names,
    validate_proto,
    wire_field,
)
from outrider.spec_problems import Problem, SpecError
from outrider.spec_reader import DEFAULT_AFFINITY_WEIGHT, DEFAULT_BACKOFF_S, DEFAULT_CPUS, SpecReader, TaskOrigin
from outrider.spec_values import is_int
from outrider.spec_yaml import read_yaml
from outrider.v1 import common_pb2

__all__ = [
    "LABEL_KEY_PATTERN",
    "LABEL_OPS",
    "NAME_PATTERN",
    "TENANT_PATTERN",
    "ZONE_PATTERN",
    "Pipeline",
    "Problem",
    "SpecError",
    "Task",
    "format_label_expr",
    "load_pipeline",
    "parse_label_expr",
    "parse_pipeline",
    "validate_proto",
]

#: Pseudo file names used where a problem has no YAML file behind it.
SDK_FILE = "<sdk>"
PROTO_FILE = "<proto>"


def _copy_expr(expr: common_pb2.LabelExpr) -> common_pb2.LabelExpr:
    return common_pb2.LabelExpr(key=expr.key, op=expr.op, values=list(expr.values))


def _copy_affinity(affinity: common_pb2.Affinity) -> common_pb2.Affinity:
    copy = common_pb2.Affinity()
    copy.CopyFrom(affinity)
    return copy


# --------------------------------------------------------------------------- domain model


@dataclass
class Task:
    """One task of a pipeline, with every default applied (the YAML and the SDK build these).

    ``inputs`` maps an input name to ``"task.output"``; ``after`` lists ordering-only
    upstreams. ``shell`` means ``argv`` holds one string run under ``/bin/sh -c``.
    ``max_attempts`` is 1 + retries; ``timeout_s`` 0 means no timeout.

    Placement: ``labels`` (equality) and ``expressions`` (``requires.match``) must all hold
    on the agent; ``residency`` lists the zones the task may run in (empty: anywhere);
    ``max_clock_skew_s`` 0 means no bound. ``affinities`` are soft: weight > 0 from
    ``prefer``, < 0 from ``avoid``.
    """

    name: str
    argv: list[str] = field(default_factory=list)
    shell: bool = False
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    cpus: float = DEFAULT_CPUS
    memory_bytes: int = 0
    disk_bytes: int = 0
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    max_attempts: int = 1
    backoff_s: float = DEFAULT_BACKOFF_S
    timeout_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    #: Like ``env``, but secret: never shown (not even in this object's repr), and masked
    #: in the stage's forwarded output.
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    gpu_memory_bytes: int = 0
    gpu_model: str = ""
    expressions: list[common_pb2.LabelExpr] = field(default_factory=list)
    residency: list[str] = field(default_factory=list)
    max_clock_skew_s: float = 0.0
    affinities: list[common_pb2.Affinity] = field(default_factory=list)

    @property
    def retries(self) -> int:
        """Retries after the first attempt (``max_attempts - 1``)."""
        return max(0, self.max_attempts - 1)

    def output(self, name: str) -> str:
        """The ``"task.output"`` reference to one of this task's outputs, for SDK ``inputs=``."""
        if name not in self.outputs:
            declared = ", ".join(self.outputs) or "none"
            message = f"task {self.name!r} has no output {name!r} (declared: {declared})"
            raise SpecError([Problem(SDK_FILE, 0, f"tasks.{self.name}.outputs", message)])
        return f"{self.name}.{name}"

    def input_refs(self) -> dict[str, tuple[str, str]]:
        """``inputs`` split into ``(task, output)`` pairs; an input that is not a reference
        (``validate`` reports it) is left out.
        """
        refs: dict[str, tuple[str, str]] = {}
        for key, ref in self.inputs.items():
            parsed = parse_ref(ref)
            if parsed is not None:
                refs[key] = parsed
        return refs

    def upstreams(self) -> set[str]:
        """Names of the tasks this one needs to finish first (inputs' tasks and ``after``)."""
        return set(upstream_names(self))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this task (only the keys that differ from the defaults)."""
        spec: dict[str, Any] = {"run": self.argv[0] if self.shell and self.argv else list(self.argv)}
        if self.inputs:
            spec["inputs"] = dict(self.inputs)
        if self.outputs:
            spec["outputs"] = list(self.outputs)
        if self.after:
            spec["after"] = list(self.after)
        requires: dict[str, Any] = {}
        if self.cpus != DEFAULT_CPUS:
            requires["cpus"] = self.cpus
        if self.memory_bytes:
            requires["memory"] = self.memory_bytes
        if self.gpus:
            requires["gpus"] = self.gpus
        if self.disk_bytes:
            requires["disk"] = self.disk_bytes
        if self.labels:
            requires["labels"] = dict(self.labels)
        if self.expressions:
            requires["match"] = [format_label_expr(expr) for expr in self.expressions]
        if self.gpu_memory_bytes:
            requires["gpu_memory"] = self.gpu_memory_bytes
        if self.gpu_model:
            requires["gpu_model"] = self.gpu_model
        if self.residency:
            requires["residency"] = list(self.residency)
        if self.max_clock_skew_s:
            requires["max_clock_skew"] = self.max_clock_skew_s
        if requires:
            spec["requires"] = requires
        if self.backoff_s != DEFAULT_BACKOFF_S:
            spec["retries"] = {"max": self.max_attempts - 1, "backoff": self.backoff_s}
        elif self.max_attempts != 1:
            spec["retries"] = self.max_attempts - 1
        if self.timeout_s:
            spec["timeout"] = self.timeout_s
        if self.env:
            spec["env"] = dict(self.env)
        if self.secret_env:
            spec["secret_env"] = dict(self.secret_env)
        prefer: list[Any] = []
        avoid: list[Any] = []
        for affinity in self.affinities:
            # A weight that is neither > 0 nor < 0 (0, NaN) lands in prefer as is, for the checker to report.
            side, weight = (avoid, -affinity.weight) if affinity.weight < 0 else (prefer, affinity.weight)
            text = format_label_expr(affinity.expr)
            side.append(text if weight == DEFAULT_AFFINITY_WEIGHT else {"match": text, "weight": weight})
        if prefer:
            spec["prefer"] = prefer
        if avoid:
            spec["avoid"] = avoid
        return spec

    def to_proto(self) -> common_pb2.TaskSpec:
        """The wire form of this task."""
        return common_pb2.TaskSpec(
            name=self.name,
            argv=list(self.argv),
            shell=self.shell,
            inputs=dict(self.inputs),
            outputs=list(self.outputs),
            after=list(self.after),
            requires=common_pb2.Requirements(
                cpus=self.cpus,
                memory_bytes=self.memory_bytes,
                disk_bytes=self.disk_bytes,
                gpus=self.gpus,
                labels=dict(self.labels),
                gpu_memory_bytes=self.gpu_memory_bytes,
                gpu_model=self.gpu_model,
                expressions=[_copy_expr(expr) for expr in self.expressions],
                residency=list(self.residency),
                max_clock_skew_s=self.max_clock_skew_s,
            ),
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
            timeout_s=self.timeout_s,
            env=dict(self.env),
            affinities=[_copy_affinity(a) for a in self.affinities],
            secret_env=dict(self.secret_env),
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskSpec) -> Task:
        """A task from its wire form, as is (no checks; see ``validate_proto``).

        ``max_attempts`` 0 reads as 1 (the proto's documented meaning). Without a
        ``requires`` message the task gets the YAML defaults (1 cpu); with one, its values
        are taken literally, so ``cpus: 0`` stays 0.
        """
        task = cls(
            name=msg.name,
            argv=list(msg.argv),
            shell=msg.shell,
            inputs=dict(msg.inputs),
            outputs=list(msg.outputs),
            after=list(msg.after),
            max_attempts=msg.max_attempts or 1,
            backoff_s=msg.backoff_s,
            timeout_s=msg.timeout_s,
            env=dict(msg.env),
            secret_env=dict(msg.secret_env),
            affinities=[_copy_affinity(a) for a in msg.affinities],
        )
        if msg.HasField("requires"):
            req = msg.requires
            task.cpus = req.cpus
            task.memory_bytes = req.memory_bytes
            task.disk_bytes = req.disk_bytes
            task.gpus = req.gpus
            task.labels = dict(req.labels)
            task.gpu_memory_bytes = req.gpu_memory_bytes
            task.gpu_model = req.gpu_model
            task.expressions = [_copy_expr(expr) for expr in req.expressions]
            task.residency = list(req.residency)
            task.max_clock_skew_s = req.max_clock_skew_s
        return task


@dataclass
class Pipeline:
    """A pipeline: a name, tasks in file order, and the code directory shipped to every task.

    Also the SDK builder::

        p = Pipeline("digits", code="./stages")        # code: relative to the current directory
        ingest = p.task("ingest", run="python ingest.py", outputs=["raw"])
        p.task("train", run=["python", "train.py"], inputs={"raw": ingest.output("raw")})
        p.validate()                                    # SpecError listing every problem

    ``code`` (constructor only) sets ``code_dir`` to its absolute path at construction
    time, so a later ``chdir`` changes nothing. ``code_digest`` is the digest of the code
    bundle once uploaded (kept by ``from_proto``; empty otherwise).

    ``priority`` (higher runs first, may be negative), ``concurrency`` (at most this many of
    the run's tasks at once; None: no limit) and ``tenant`` (fair-share name; empty: the
    submitter's identity) are the YAML's top-level keys: ``Pipeline("p", priority=5)``.
    """

    name: str
    tasks: dict[str, Task] = field(default_factory=dict)
    code_dir: Path | None = None
    code_digest: str = ""
    code: InitVar[str | os.PathLike[str] | None] = None
    priority: int = 0
    concurrency: int | None = None
    tenant: str = ""

    def __post_init__(self, code: str | os.PathLike[str] | None) -> None:
        if code is not None:
            self.code_dir = Path(os.path.abspath(os.fspath(code)))
        elif self.code_dir is not None and not isinstance(self.code_dir, Path):
            self.code_dir = Path(self.code_dir)

    # ----------------------------------------------------------------- SDK builder

    def task(
        self,
        name: str,
        run: str | Sequence[str] | None,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Sequence[str] | None = None,
        after: Sequence[str | Task] | None = None,
        requires: Mapping[str, Any] | None = None,
        retries: int | Mapping[str, Any] | None = None,
        timeout: str | float | None = None,
        env: Mapping[str, Any] | None = None,
        secret_env: Mapping[str, Any] | None = None,
        prefer: Sequence[str | Mapping[str, Any]] | None = None,
        avoid: Sequence[str | Mapping[str, Any]] | None = None,
    ) -> Task:
        """Add a task; the keywords are the YAML keys and take the same values.

        Problems confined to this call (bad name, duplicate name, bad ``run``, quantities,
        durations, unknown ``requires`` keys...) raise ``SpecError`` right here, so the
        traceback points at the faulty line. Problems between tasks (references, cycles)
        can only be seen once every task is added: ``validate()`` reports those.
        """
        given: dict[str, Any] = {
            "run": run,
            "inputs": inputs,
            "outputs": outputs,
            "requires": requires,
            "retries": retries,
            "timeout": timeout,
            "env": env,
            "secret_env": secret_env,
            "prefer": prefer,
            "avoid": avoid,
            # Task objects are accepted in ``after`` for convenience; the spec holds names.
            "after": None if after is None else [a.name if isinstance(a, Task) else a for a in after],
        }
        spec = {key: _plain(value) for key, value in given.items() if value is not None}
        reader = SpecReader(SDK_FILE, None, Path.cwd())
        path: FieldPath = reader.visit(("tasks", name))
        if isinstance(name, str) and name in self.tasks:
            reader.add(path, f"a task named {name!r} already exists")
        wire = reader.task(name, spec, path)  # reports a name that is no string
        problems = reader.finish_task(wire)
        if problems:
            raise SpecError(problems)
        task = Task.from_proto(wire)
        _keep_written_order(task, reader.origins[0])
        self.tasks[name] = task
        return task

    def validate(self) -> None:
        """Check the whole pipeline as the YAML path would; raise ``SpecError`` listing every problem.

        The pipeline is turned into its YAML dict (``to_dict``) and read by the same front
        end as a file, into the wire form that the one validator checks, so SDK and YAML
        pipelines obey exactly the same rules.
        """
        reader = SpecReader(SDK_FILE, None, Path.cwd())
        spec = reader.pipeline(self.to_dict())
        assert spec is not None  # to_dict is a mapping
        for i, (key, task) in enumerate(self.tasks.items()):
            # The dict is keyed by name; the model's keys are the user's to break.
            if task.name != key:
                reader.model_problem(("tasks", key), f"is keyed {key!r} but the task is named {task.name!r}")
            # ``to_dict`` writes a shell task's command alone: give the validator the whole argv.
            if task.shell and len(task.argv) > 1 and all(isinstance(arg, str) for arg in task.argv):
                del spec.tasks[i].argv[:]
                spec.tasks[i].argv.extend(task.argv)
        problems = reader.finish(spec)
        if problems:
            raise SpecError(problems)

    # ----------------------------------------------------------------- conversions

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``yaml.safe_dump(p.to_dict())`` writes a loadable spec)."""
        doc: dict[str, Any] = {"name": self.name}
        if self.code_dir is not None:
            doc["code"] = str(self.code_dir)
        if self.priority != 0 or not is_int(self.priority):
            doc["priority"] = self.priority
        if self.concurrency is not None:
            doc["concurrency"] = self.concurrency
        if self.tenant != "":
            doc["tenant"] = self.tenant
        doc["tasks"] = {key: task.to_dict() for key, task in self.tasks.items()}
        return doc

    def to_proto(self, code_digest: str = "") -> common_pb2.PipelineSpec:
        """The wire form; ``code_digest`` (the uploaded code bundle) defaults to ``self.code_digest``."""
        return common_pb2.PipelineSpec(
            name=self.name,
            code_digest=code_digest or self.code_digest,
            tasks=[task.to_proto() for task in self.tasks.values()],
            priority=self.priority,
            concurrency=self.concurrency or 0,
            tenant=self.tenant,
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.PipelineSpec, validate: bool = True) -> Pipeline:
        """A pipeline from its wire form; with ``validate`` (the default) ``validate_proto``
        runs first and its problems raise ``SpecError`` (file ``<proto>``).
        """
        if validate:
            found = check_spec(msg)
            if found:
                counts = Counter(task.name for task in msg.tasks)
                raise SpecError([Problem(PROTO_FILE, 0, wire_field(msg, p, counts), p.message) for p in found])
        tasks: dict[str, Task] = {}
        for spec in msg.tasks:
            tasks.setdefault(spec.name, Task.from_proto(spec))
        return cls(
            name=msg.name,
            tasks=tasks,
            code_dir=None,
            code_digest=msg.code_digest,
            priority=msg.priority,
            concurrency=msg.concurrency or None,
            tenant=msg.tenant,
        )

    # ----------------------------------------------------------------- graph

    def upstreams(self, task_name: str) -> set[str]:
        """Tasks that ``task_name`` waits for: its inputs' tasks and its ``after`` list."""
        return self._task(task_name).upstreams()

    def downstreams(self, task_name: str) -> set[str]:
        """Tasks that wait for ``task_name`` directly (the inverse of ``upstreams``)."""
        self._task(task_name)
        return {name for name, task in self.tasks.items() if task_name in upstream_names(task)}

    def topological_order(self) -> list[str]:
        """Task names, every task after its upstreams; ties keep file order (deterministic).

        References to unknown tasks are ignored (``validate`` reports them); a cycle
        raises ``SpecError`` naming it.
        """
        names = list(self.tasks)
        index = {name: i for i, name in enumerate(names)}
        deps = {name: [u for u in upstream_names(task) if u in index] for name, task in self.tasks.items()}
        waiting = {name: len(ups) for name, ups in deps.items()}
        dependents: dict[str, list[str]] = {name: [] for name in names}
        for name, ups in deps.items():
            for up in ups:
                dependents[up].append(name)
        ready = [index[name] for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for child in dependents[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, index[child])
        if len(order) < len(names):
            raise SpecError(
                [
                    Problem("<pipeline>", 0, "tasks", f"dependency cycle: {' -> '.join(cycle)}")
                    for cycle in find_cycles(names, deps)
                ]
            )
        return order

    def _task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(f"pipeline {self.name!r} has no task {name!r}") from None


# --------------------------------------------------------------------------- entry points


def load_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Read and check a YAML spec; ``code:`` is relative to the file's directory.

    Raises ``SpecError`` listing every problem as ``FILE:LINE: field: message``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        err = SpecError([Problem(str(p), 0, "", f"cannot read pipeline file: {exc.strerror or exc}")])
        if isinstance(exc, FileNotFoundError):
            err.code = "NOT_FOUND"  # the command line tells "no such file" from "a bad spec" (exit 5, not 3)
        raise err from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(str(p), 0, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return parse_pipeline(text, filename=str(p), base_dir=p.parent)


def parse_pipeline(text: str, filename: str = "<string>", base_dir: str | os.PathLike[str] | None = None) -> Pipeline:
    """Parse and check a YAML spec from text; ``code:`` is relative to ``base_dir`` (default: cwd).

    Raises ``SpecError`` listing every problem as ``FILE:LINE: field: message``.
    """
    reader, spec, problems = read_yaml(text, filename, Path(base_dir) if base_dir is not None else Path.cwd())
    if problems or reader is None or spec is None:
        raise SpecError(problems)
    pipeline = Pipeline.from_proto(spec, validate=False)
    pipeline.code_dir = reader.code_dir
    for task, origin in zip(pipeline.tasks.values(), reader.origins, strict=True):
        _keep_written_order(task, origin)
    return pipeline


def _keep_written_order(task: Task, origin: TaskOrigin) -> None:
    """Proto maps keep no order: give a task built from the wire form its maps as written."""
    task.inputs, task.env, task.labels = dict(origin.inputs), dict(origin.env), dict(origin.labels)
    task.secret_env = dict(origin.secret_env)


def _plain(value: Any) -> Any:
    """SDK arguments as YAML data: tuples become lists, Mappings dicts, paths strings, and a
    ``LabelExpr`` (from ``parse_label_expr``) its text.
    """
    if isinstance(value, common_pb2.LabelExpr):
        return format_label_expr(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
