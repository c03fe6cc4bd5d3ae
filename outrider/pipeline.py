"""Pipeline specs: the YAML parser/validator, the domain model and the Python SDK builder.

A pipeline reaches the scheduler by one of three roads, and all of them meet the same checks:

* a YAML file (``load_pipeline`` / ``parse_pipeline``): composed with a ``SafeLoader``
  subclass into a node tree, so that every problem names ``FILE:LINE: field.path``;
* the SDK (``Pipeline("digits").task(...)``): keyword arguments are turned into the very
  dict the YAML would have produced and go through the same checker (file ``<sdk>``);
* the wire (``validate_proto`` / ``Pipeline.from_proto``): any gRPC client may send a
  ``PipelineSpec``, so the scheduler re-checks names, references and cycles there too.

The graph checks (names of outputs and inputs, references, self dependencies, duplicate
outputs, cycles) are written once, in ``_graph_problems``, and shared by all three roads.

See docs/pipeline.md for the schema, every field, the defaults and the error format.
"""
from __future__ import annotations

import difflib
import heapq
import math
import os
import re
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from outrider.config import parse_bytes, parse_duration
from outrider.errors import InvalidArgument
from outrider.v1 import common_pb2

__all__ = [
    "NAME_PATTERN",
    "Pipeline",
    "Problem",
    "SpecError",
    "Task",
    "load_pipeline",
    "parse_pipeline",
    "validate_proto",
]

#: Task, output, input and pipeline names. No dots, so ``task.output`` is unambiguous.
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"
_NAME_RE = re.compile(NAME_PATTERN)
#: Environment variable names: what every shell accepts (no '-', no '=').
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# Proto field ranges, checked up front so that ``to_proto`` never fails on a valid spec.
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1

# The keys allowed at each level, in the order the docs list them.
_TOP_KEYS = ("name", "code", "tasks")
_TASK_KEYS = ("run", "inputs", "outputs", "after", "requires", "retries", "timeout", "env")
_REQUIRES_KEYS = ("cpus", "memory", "gpus", "disk", "labels")
_RETRIES_KEYS = ("max", "backoff")

# Defaults of the optional task fields (also the defaults of ``Task``).
DEFAULT_CPUS = 1.0
DEFAULT_BACKOFF_S = 1.0

#: Pseudo file names used where a problem has no YAML file behind it.
SDK_FILE = "<sdk>"
PROTO_FILE = "<proto>"

# A field path: keys of mappings (str) and indices of lists (int), from the document root.
_Path = tuple[Union[str, int], ...]

# YAML tags a spec may use. Anything else (python/*, !!set, !!binary, local !tags) is
# refused outright: a pipeline spec is plain data, and it comes from users.
_YAML = "tag:yaml.org,2002:"
_MAP_TAG = _YAML + "map"
_SEQ_TAG = _YAML + "seq"
_SCALAR_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
# ``<<`` and ``=`` are resolved to these tags by PyYAML, which cannot construct them as
# values (``yaml.safe_load("a: =")`` fails); as values they are just text.
_TEXT_TAGS = {_YAML + "merge", _YAML + "value"}
_MERGE_TAG = _YAML + "merge"

# An upper bound on nodes visited after alias expansion: a "billion laughs" document is
# tiny as text but explodes when walked path by path, as this loader must.
_MAX_NODES = 100_000


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    ``line`` is 1-based; 0 means unknown (SDK and proto specs have no lines). ``field`` is a
    dotted path such as ``tasks.train.requires.memory`` (empty for the document itself).
    """

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line else self.file]
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class SpecError(InvalidArgument):
    """A pipeline spec is invalid; ``problems`` lists every problem found, not just the first.

    ``str(error)`` is all of them, one per line, as ``FILE:LINE: field: message``.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the structured problems across pickling (multiprocessing, test runners).
        return (type(self), (self.problems,))


# --------------------------------------------------------------------------- domain model


@dataclass
class Task:
    """One task of a pipeline, with every default applied (the YAML and the SDK build these).

    ``inputs`` maps an input name to ``"task.output"``; ``after`` lists ordering-only
    upstreams. ``shell`` means ``argv`` holds one string run under ``/bin/sh -c``.
    ``max_attempts`` is 1 + retries; ``timeout_s`` 0 means no timeout.
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

    @property
    def retries(self) -> int:
        """Retries after the first attempt (``max_attempts - 1``)."""
        return max(0, self.max_attempts - 1)

    def output(self, name: str) -> str:
        """The ``"task.output"`` reference to one of this task's outputs, for SDK ``inputs=``."""
        if name not in self.outputs:
            declared = ", ".join(self.outputs) or "none"
            raise SpecError([Problem(SDK_FILE, 0, f"tasks.{self.name}.outputs",
                                     f"task {self.name!r} has no output {name!r} (declared: {declared})")])
        return f"{self.name}.{name}"

    def input_refs(self) -> dict[str, tuple[str, str]]:
        """``inputs`` split into ``(task, output)`` pairs."""
        refs: dict[str, tuple[str, str]] = {}
        for key, ref in self.inputs.items():
            task, _, out = ref.partition(".")
            refs[key] = (task, out)
        return refs

    def upstreams(self) -> set[str]:
        """Names of the tasks this one needs to finish first (inputs' tasks and ``after``)."""
        return set(_upstream_names(self))

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
            ),
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
            timeout_s=self.timeout_s,
            env=dict(self.env),
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
        )
        if msg.HasField("requires"):
            req = msg.requires
            task.cpus = req.cpus
            task.memory_bytes = req.memory_bytes
            task.disk_bytes = req.disk_bytes
            task.gpus = req.gpus
            task.labels = dict(req.labels)
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
    """

    name: str
    tasks: dict[str, Task] = field(default_factory=dict)
    code_dir: Path | None = None
    code_digest: str = ""
    code: InitVar[str | os.PathLike[str] | None] = None

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
    ) -> Task:
        """Add a task; the keywords are the YAML keys and take the same values.

        Problems confined to this call (bad name, duplicate name, bad ``run``, quantities,
        durations, unknown ``requires`` keys...) raise ``SpecError`` right here, so the
        traceback points at the faulty line. Problems between tasks (references, cycles)
        can only be seen once every task is added: ``validate()`` reports those.
        """
        given: dict[str, Any] = {
            "run": run, "inputs": inputs, "outputs": outputs, "requires": requires,
            "retries": retries, "timeout": timeout, "env": env,
            # Task objects are accepted in ``after`` for convenience; the spec holds names.
            "after": None if after is None else [a.name if isinstance(a, Task) else a for a in after],
        }
        spec = {key: _plain(value) for key, value in given.items() if value is not None}
        checker = _Checker(SDK_FILE, None, Path.cwd())
        path: _Path = ("tasks", name)
        name_problem = _name_problem(name, "task name")
        if name_problem:
            checker.add(path, name_problem)
        elif name in self.tasks:
            checker.add(path, f"a task named {name!r} already exists")
        task = checker.task(name, spec, path)
        if checker.problems:
            raise SpecError(checker.problems)
        self.tasks[name] = task
        return task

    def validate(self) -> None:
        """Check the whole pipeline as the YAML path would; raise ``SpecError`` listing every problem.

        The pipeline is turned into its YAML dict (``to_dict``) and run through the same
        checker as a file, so SDK and YAML pipelines obey exactly the same rules.
        """
        checker = _Checker(SDK_FILE, None, Path.cwd())
        checker.pipeline(self.to_dict())
        # What the dict form cannot express, checked on the model itself.
        for key, task in self.tasks.items():
            if task.name != key:
                checker.add(("tasks", key), f"is keyed {key!r} but the task is named {task.name!r}")
            if task.shell and len(task.argv) > 1:
                checker.add(("tasks", key, "run"),
                            f"a shell task holds exactly one command string, got {len(task.argv)}")
        if checker.problems:
            raise SpecError(checker.problems)

    # ----------------------------------------------------------------- conversions

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``yaml.safe_dump(p.to_dict())`` writes a loadable spec)."""
        doc: dict[str, Any] = {"name": self.name}
        if self.code_dir is not None:
            doc["code"] = str(self.code_dir)
        doc["tasks"] = {key: task.to_dict() for key, task in self.tasks.items()}
        return doc

    def to_proto(self, code_digest: str = "") -> common_pb2.PipelineSpec:
        """The wire form; ``code_digest`` (the uploaded code bundle) defaults to ``self.code_digest``."""
        return common_pb2.PipelineSpec(
            name=self.name,
            code_digest=code_digest or self.code_digest,
            tasks=[task.to_proto() for task in self.tasks.values()],
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.PipelineSpec, validate: bool = True) -> Pipeline:
        """A pipeline from its wire form; with ``validate`` (the default) ``validate_proto``
        runs first and its problems raise ``SpecError`` (file ``<proto>``).
        """
        if validate:
            problems = _proto_problems(msg)
            if problems:
                raise SpecError([Problem(PROTO_FILE, 0, fld, message) for fld, message in problems])
        tasks: dict[str, Task] = {}
        for spec in msg.tasks:
            tasks.setdefault(spec.name, Task.from_proto(spec))
        return cls(name=msg.name, tasks=tasks, code_dir=None, code_digest=msg.code_digest)

    # ----------------------------------------------------------------- graph

    def upstreams(self, task_name: str) -> set[str]:
        """Tasks that ``task_name`` waits for: its inputs' tasks and its ``after`` list."""
        return self._task(task_name).upstreams()

    def downstreams(self, task_name: str) -> set[str]:
        """Tasks that wait for ``task_name`` directly (the inverse of ``upstreams``)."""
        self._task(task_name)
        return {name for name, task in self.tasks.items() if task_name in _upstream_names(task)}

    def topological_order(self) -> list[str]:
        """Task names, every task after its upstreams; ties keep file order (deterministic).

        References to unknown tasks are ignored (``validate`` reports them); a cycle
        raises ``SpecError`` naming it.
        """
        names = list(self.tasks)
        index = {name: i for i, name in enumerate(names)}
        deps = {name: [u for u in _upstream_names(task) if u in index] for name, task in self.tasks.items()}
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
            raise SpecError([Problem("<pipeline>", 0, "tasks", f"dependency cycle: {' -> '.join(cycle)}")
                             for cycle in _find_cycles(names, deps)])
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
        raise SpecError([Problem(str(p), 0, "", f"cannot read pipeline file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(str(p), 0, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return parse_pipeline(text, filename=str(p), base_dir=p.parent)


def parse_pipeline(
    text: str, filename: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Pipeline:
    """Parse and check a YAML spec from text; ``code:`` is relative to ``base_dir`` (default: cwd).

    Raises ``SpecError`` listing every problem as ``FILE:LINE: field: message``.
    """
    problems: list[Problem] = []
    composed = _compose(text, filename, problems)
    if composed is None:  # not even YAML: nothing further can be checked
        raise SpecError(problems)
    doc, source = composed
    checker = _Checker(filename, source, Path(base_dir) if base_dir is not None else Path.cwd())
    pipeline = checker.pipeline(doc)
    problems.extend(checker.problems)
    if problems or pipeline is None:
        # Compiler order: by line. The sort is stable, so same-line problems keep the walk order.
        raise SpecError(sorted(problems, key=lambda p: p.line))
    return pipeline


def validate_proto(spec: common_pb2.PipelineSpec) -> list[str]:
    """Check a wire ``PipelineSpec``; return ``"field.path: message"`` strings (empty if valid).

    The scheduler calls this on every Submit/Plan: RPC input can come from any client, not
    just from our SDK. Paths name tasks in brackets: ``tasks[train].inputs.features``.
    """
    return [f"{fld}: {message}" if fld else message for fld, message in _proto_problems(spec)]


# --------------------------------------------------------------------------- shared checks


class _GraphTask(Protocol):
    """What the graph checks read: satisfied by ``Task`` and by ``common_pb2.TaskSpec``."""

    name: str

    @property
    def inputs(self) -> Mapping[str, str]: ...

    @property
    def outputs(self) -> Sequence[str]: ...

    @property
    def after(self) -> Sequence[str]: ...


def _name_problem(name: Any, what: str) -> str | None:
    """Why ``name`` is not a valid task/output/input/pipeline name, or None."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {_kind(name)}"
    if not name:
        return f"{what} must not be empty"
    if not _NAME_RE.fullmatch(name):
        return (f"invalid {what} {name!r}: use letters, digits, '_' and '-', "
                f"not starting with a digit or '-' (pattern {NAME_PATTERN})")
    return None


def _upstream_names(task: _GraphTask) -> list[str]:
    """Upstream task names of a task, without duplicates, in declaration order."""
    names = [ref.partition(".")[0] for ref in task.inputs.values()]
    names.extend(task.after)
    return list(dict.fromkeys(names))


def _suggest(word: str, choices: Iterable[str], known: str = "known") -> str:
    """A "did you mean" hint, or a list of what exists when nothing is close."""
    options = sorted({c for c in choices if c})
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not options:
        return ""
    shown = ", ".join(options[:10]) + (", ..." if len(options) > 10 else "")
    return f" ({known}: {shown})"


def _find_cycles(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Dependency cycles, each as names in data-flow order (upstream first), starting and
    ending at its member that comes first in ``names``: ``[a, b, a]`` means b consumes a
    and a consumes b. One cycle per DFS back edge, so every tangle yields at least one
    (listing all elementary cycles can take exponential time); a self-dependency is ``[a, a]``.

    ``deps`` maps a task to its upstreams; names missing from ``names`` are ignored. The
    DFS is iterative so that a long chain cannot hit Python's recursion limit.
    """
    index = {name: i for i, name in enumerate(names)}
    state = dict.fromkeys(names, 0)  # 0: unvisited, 1: on the DFS path, 2: done
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for root in names:
        if state[root]:
            continue
        state[root] = 1
        path = [root]
        stack = [iter(deps.get(root, ()))]
        while stack:
            for up in stack[-1]:
                if up not in state:
                    continue
                if state[up] == 0:
                    state[up] = 1
                    path.append(up)
                    stack.append(iter(deps.get(up, ())))
                    break
                if state[up] == 1:
                    # path[k:] = [up, x1, ..., node]: each depends on the next, and node on up.
                    # Reversed, that is the data flow: node -> ... -> x1 -> up -> node.
                    flow = path[path.index(up):][::-1]
                    start = min(range(len(flow)), key=lambda i: index[flow[i]])
                    flow = flow[start:] + flow[:start]
                    if tuple(flow) not in seen:
                        seen.add(tuple(flow))
                        cycles.append(flow + [flow[0]])
            else:
                state[path.pop()] = 2
                stack.pop()
    return cycles


def _graph_problems(entries: Sequence[tuple[str | int, _GraphTask]]) -> list[tuple[_Path, str]]:
    """The checks between tasks, shared by the YAML, SDK and proto roads.

    ``entries`` pairs each task with the path element that names it (its name, or its
    index for proto tasks whose name is empty or duplicated). Checks: output and input
    names, duplicate outputs, ``task.output`` references (task exists, output declared,
    not the task itself), ``after`` references, and dependency cycles.
    """
    problems: list[tuple[_Path, str]] = []
    first: dict[str, tuple[str | int, _GraphTask]] = {}
    for elem, task in entries:
        first.setdefault(task.name, (elem, task))
    deps: dict[str, list[str]] = {}
    edge_paths: dict[tuple[str, str], _Path] = {}  # (task, upstream) -> field declaring that edge
    for elem, task in entries:
        base: _Path = ("tasks", elem)
        is_first = first[task.name][0] == elem
        seen_outputs: dict[str, int] = {}
        for i, out in enumerate(task.outputs):
            problem = _name_problem(out, "output name")
            if problem:
                problems.append((base + ("outputs", i), problem))
            elif out in seen_outputs:
                problems.append((base + ("outputs", i), f"duplicate output {out!r} (also outputs[{seen_outputs[out]}])"))
            seen_outputs.setdefault(out, i)
        ups: list[str] = []
        for key, ref in task.inputs.items():
            path = base + ("inputs", key)
            problem = _name_problem(key, "input name")
            if problem:
                problems.append((path, problem))
            up, dot, out = ref.partition(".")
            if not dot or _name_problem(up, "") or _name_problem(out, ""):
                problems.append((path, f"expected 'task.output', got {ref!r}"))
                continue
            if up == task.name:
                problems.append((path, f"task {task.name!r} cannot consume its own output {out!r}"))
                continue
            if up not in first:
                problems.append((path, f"no task named {up!r}{_suggest(up, first)}"))
                continue
            declared = first[up][1].outputs
            if out not in declared:
                hint = _suggest(out, declared, "declared") if declared else " (it declares no outputs)"
                problems.append((path, f"task {up!r} has no output {out!r}{hint}"))
            ups.append(up)  # still an edge: the dependency is meant even if the output is misnamed
            edge_paths.setdefault((task.name, up), path)
        seen_after: dict[str, int] = {}
        for i, up in enumerate(task.after):
            path = base + ("after", i)
            if up == task.name:
                problems.append((path, f"task {task.name!r} cannot run after itself"))
            elif up not in first:
                problems.append((path, f"no task named {up!r}{_suggest(up, first)}"))
            elif up in seen_after:
                problems.append((path, f"{up!r} is listed twice (also after[{seen_after[up]}])"))
            else:
                ups.append(up)
                edge_paths.setdefault((task.name, up), path)
            seen_after.setdefault(up, i)
        if is_first:
            deps[task.name] = ups
    for cycle in _find_cycles(list(first), deps):
        # Point at the field in the cycle's first task that closes the loop.
        path = edge_paths[(cycle[0], cycle[-2])]
        problems.append((path, f"dependency cycle: {' -> '.join(cycle)}"))
    return problems


def _fmt(path: _Path, proto: bool = False) -> str:
    """``("tasks", "train", "run", 1)`` -> ``tasks.train.run[1]``, or ``tasks[train].run[1]`` for protos."""
    text = ""
    for i, part in enumerate(path):
        bracket = isinstance(part, int) or (proto and i == 1 and path[0] == "tasks")
        text += f"[{part}]" if bracket else (("." if text else "") + str(part))
    return text


def _kind(value: Any) -> str:
    """A short description of a value for messages: ``'two'``, ``true (a boolean)``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _is_number(value: Any) -> bool:
    """Real numbers only: YAML booleans are ints in Python, and must not pass as counts."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """SDK arguments as YAML data: tuples become lists, Mappings dicts, paths strings."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# --------------------------------------------------------------------------- YAML composition


@dataclass
class _Source:
    """Where each value of a composed document came from, by field path."""

    key_lines: dict[_Path, int] = field(default_factory=dict)
    value_lines: dict[_Path, int] = field(default_factory=dict)
    # Source text of plain scalars that YAML turned into non-strings (10, 0.10, yes, 2024-01-01):
    # where a string is expected, the text as written is what the user meant.
    raw: dict[_Path, str] = field(default_factory=dict)
    # Paths already reported while composing (refused tags): no further problems there.
    refused: set[_Path] = field(default_factory=set)

    def line(self, path: _Path) -> int:
        """Line of a field: its key, else its value, else its nearest present parent."""
        while path:
            found = self.key_lines.get(path) or self.value_lines.get(path)
            if found:
                return found
            path = path[:-1]
        return self.value_lines.get((), 1)


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes and to build scalars with the safe constructors.

    Collections are never constructed by PyYAML: ``_Composer`` walks them itself to keep
    every line number and to see duplicate keys, which ``safe_load`` silently merges.
    """


class _TooLarge(Exception):
    """The document expands into more than ``_MAX_NODES`` nodes."""


class _Composer:
    """Turns a composed node tree into plain data, recording lines and problems by path."""

    def __init__(self, loader: _SpecLoader, file: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.file = file
        self.problems = problems
        self.source = _Source()
        self.count = 0
        self.active: set[int] = set()  # collection nodes on the current walk: a cyclic alias guard

    def problem(self, line: int, path: _Path, message: str) -> None:
        self.problems.append(Problem(self.file, line, _fmt(path), message))

    def refuse(self, node: Node, path: _Path, what: str) -> None:
        self.problem(node.start_mark.line + 1, path,
                     f"YAML tag {_short_tag(node.tag)} is not allowed on {what}: a pipeline spec is plain "
                     f"data (strings, numbers, booleans, lists, mappings)")
        self.source.refused.add(path)

    def convert(self, node: Node, path: _Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge
        self.source.value_lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.problem(node.start_mark.line + 1, path, "recursive YAML alias (a value that contains itself)")
            self.source.refused.add(path)
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.refuse(node, path, "a list")
                    return None
                return [self.convert(child, path + (i,)) for i, child in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    self.refuse(node, path, "a mapping")
                    return None
                return self.mapping(node, path)
            raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover - PyYAML has 3 kinds
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: _Path) -> Any:
        if node.tag in _TEXT_TAGS:
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self.refuse(node, path, "a value")
            return None
        try:
            value = self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError):
            # e.g. 2024-13-45 matches the timestamp pattern but is no date: safe_load crashes
            # with ValueError; the text as written is the only sensible reading.
            return node.value
        if node.style is None and not isinstance(value, str) and value is not None:
            self.source.raw[path] = node.value
        return value

    def mapping(self, node: MappingNode, path: _Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        explicit: list[tuple[Node, Node]] = []
        sources: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                # ``<<: *defaults`` (or a list of them), as safe_load supports.
                items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                if all(isinstance(item, MappingNode) for item in items):
                    sources.extend(items)
                else:
                    self.problem(key_node.start_mark.line + 1, path,
                                 "a merge key '<<' takes a mapping or a list of mappings")
            else:
                explicit.append((key_node, value_node))
        # Earlier merge sources win over later ones, and explicit keys over all: apply in reverse.
        for source in reversed(sources):
            merged = self.convert(source, path)
            if isinstance(merged, dict):
                result.update(merged)
        self.source.value_lines[path] = node.start_mark.line + 1
        first_line: dict[str, int] = {}
        for key_node, value_node in explicit:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self.problem(line, path, "mapping keys must be plain text, not lists or mappings")
                continue
            if key_node.tag not in _SCALAR_TAGS and key_node.tag not in _TEXT_TAGS:
                self.refuse(key_node, path, "a key")
                continue
            # Keys are the text as written: a task named ``on`` or ``1`` is "on" and "1", not a bool or int.
            key = key_node.value
            if key in first_line:
                self.problem(line, path + (key,), f"duplicate key {key!r} (first on line {first_line[key]})")
                continue
            first_line[key] = line
            self.source.key_lines[path + (key,)] = line
            result[key] = self.convert(value_node, path + (key,))
        return result


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML):] if tag.startswith(_YAML) else tag


def _compose(text: str, file: str, problems: list[Problem]) -> tuple[Any, _Source] | None:
    """Compose ``text`` into plain data and its ``_Source``; None (with a problem) if it is not YAML."""
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)  # the reader checks for unprintable characters right here
        node = loader.get_single_node()
        composer = _Composer(loader, file, problems)
        doc = composer.convert(node, ()) if node is not None else None
        return doc, composer.source
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = "; ".join(filter(None, [exc.context, exc.problem]))
        problems.append(Problem(file, mark.line + 1 if mark else 0, "", f"invalid YAML: {reason}"))
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(text, str) else 0
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        problems.append(Problem(file, line, "", f"invalid YAML: {exc.reason} (character {char})"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 0, "", f"invalid YAML: {exc}"))
    except _TooLarge:
        problems.append(Problem(file, 0, "", f"document too large: more than {_MAX_NODES} values "
                                             f"once aliases are expanded"))
    except RecursionError:
        problems.append(Problem(file, 0, "", "document nested too deeply"))
    finally:
        if loader is not None:
            loader.dispose()
    return None


# --------------------------------------------------------------------------- the checker


class _Checker:
    """Checks a spec dict (from YAML or the SDK) and builds the model, collecting problems.

    Every problem goes through ``add``, which attaches the file and line. A field reported
    by ``fail`` (its value was dropped) gets no further problems, so one mistake is one
    message, not a cascade.
    """

    def __init__(self, file: str, source: _Source | None, base_dir: Path) -> None:
        self.file = file
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.silenced: set[_Path] = set(source.refused) if source else set()

    def add(self, path: _Path, message: str) -> None:
        if any(path[:i] in self.silenced for i in range(len(path) + 1)):
            return
        line = self.source.line(path) if self.source else 0
        self.problems.append(Problem(self.file, line, _fmt(path), message))

    def fail(self, path: _Path, message: str) -> None:
        self.add(path, message)
        self.silenced.add(path)

    def kind(self, value: Any, path: _Path) -> str:
        raw = self.source.raw.get(path) if self.source else None
        if raw is not None and isinstance(value, bool):
            return f"{raw} (a boolean)"
        return _kind(value)

    def unknown_keys(self, spec: dict[Any, Any], path: _Path, allowed: Sequence[str]) -> None:
        for key in spec:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(path + (key,), f"unknown key {key!r} (allowed: {', '.join(allowed)}){hint}")

    def text(self, value: Any, path: _Path) -> str | None:
        """A string field. Plain YAML scalars are taken as written (``10``, ``0.10``, ``yes``);
        from the SDK, ints and floats are converted with ``str`` but booleans and None refused.
        """
        if isinstance(value, str):
            return value
        raw = self.source.raw.get(path) if self.source else None
        if raw is not None:
            return raw
        if _is_number(value):
            return str(value)
        self.fail(path, f"expected a string, got {self.kind(value, path)}")
        return None

    def mapping(self, value: Any, path: _Path, what: str) -> dict[Any, Any] | None:
        if isinstance(value, dict):
            return value
        self.fail(path, f"expected {what}, got {self.kind(value, path)}")
        return None

    # ----------------------------------------------------------------- document

    def pipeline(self, doc: Any) -> Pipeline | None:
        if not isinstance(doc, dict):
            got = "an empty document" if doc is None else self.kind(doc, ())
            self.add((), f"the top level must be a mapping with 'name' and 'tasks', got {got}")
            return None
        # Top-level ``x-`` keys are ignored: a place to define YAML anchors (as in Compose files).
        self.unknown_keys({k: v for k, v in doc.items() if not str(k).startswith("x-")}, (), _TOP_KEYS)
        name = ""
        if "name" not in doc:
            self.add(("name",), "required field is missing")
        else:
            name = self.text(doc["name"], ("name",)) or ""
            problem = _name_problem(name, "pipeline name")
            if problem:  # silenced by ``add`` if ``text`` already reported this field
                self.add(("name",), problem)
        code_dir = self.code(doc.get("code"))
        tasks: dict[str, Task] = {}
        raw_tasks = doc.get("tasks")
        if "tasks" not in doc:
            self.add(("tasks",), "required field is missing")
        elif raw_tasks is None or raw_tasks == {}:
            self.add(("tasks",), "must declare at least one task")
        elif self.mapping(raw_tasks, ("tasks",), "a mapping of task name to task") is not None:
            for task_name, spec in raw_tasks.items():
                path: _Path = ("tasks", task_name)
                problem = _name_problem(task_name, "task name")
                if problem:
                    self.add(path, problem)
                tasks[task_name] = self.task(task_name, spec, path)
            for path, message in _graph_problems(list(tasks.items())):
                self.add(path, message)
        return Pipeline(name=name, tasks=tasks, code_dir=code_dir)

    def code(self, value: Any) -> Path | None:
        if value is None:
            return None
        path: _Path = ("code",)
        text = self.text(value, path)
        if text is None:
            return None
        if not text.strip():
            self.add(path, "must not be empty (leave the key out for no code bundle)")
            return None
        # Relative to the spec file, so that `outrider submit dir/pipeline.yaml` works from anywhere.
        resolved = Path(os.path.abspath(self.base_dir / text))
        if not resolved.exists():
            self.add(path, f"code directory {resolved} does not exist")
        elif not resolved.is_dir():
            self.add(path, f"code directory {resolved} is not a directory")
        return resolved

    # ----------------------------------------------------------------- task

    def task(self, name: Any, spec: Any, path: _Path) -> Task:
        """Check one task and build it; always returns a Task (best effort), so that other
        tasks' references to it resolve and do not add noise to the report.
        """
        task = Task(name=name if isinstance(name, str) else str(name))
        if not isinstance(spec, dict):
            self.fail(path, f"a task must be a mapping with at least 'run', got {self.kind(spec, path)}")
            return task
        self.unknown_keys(spec, path, _TASK_KEYS)
        if "run" not in spec:
            self.add(path + ("run",), "required field is missing")
        else:
            task.argv, task.shell = self.run(spec["run"], path + ("run",))
        if spec.get("inputs") is not None:
            task.inputs = self.inputs(spec["inputs"], path + ("inputs",))
        if spec.get("outputs") is not None:
            task.outputs = self.names(spec["outputs"], path + ("outputs",), "a list of output names")
        if spec.get("after") is not None:
            task.after = self.names(spec["after"], path + ("after",), "a list of task names")
        if spec.get("requires") is not None:
            self.requires(spec["requires"], path + ("requires",), task)
        if spec.get("retries") is not None:
            self.retries(spec["retries"], path + ("retries",), task)
        if spec.get("timeout") is not None:
            task.timeout_s = self.duration(spec["timeout"], path + ("timeout",), task.timeout_s)
        if spec.get("env") is not None:
            task.env = self.string_map(spec["env"], path + ("env",), "a mapping of variable name to value",
                                       _env_key_problem)
        return task

    def run(self, value: Any, path: _Path) -> tuple[list[str], bool]:
        if isinstance(value, list):
            if not value:
                self.add(path, "must not be an empty list")
                return [], False
            argv = []
            for i, item in enumerate(value):
                arg = self.text(item, path + (i,))
                if arg is not None and "\0" in arg:
                    self.fail(path + (i,), "must not contain NUL characters")
                argv.append(arg if arg is not None else "")
            if not argv[0].strip():
                self.add(path + (0,), "the program (first element) must not be empty")
            return argv, False
        if value is None or isinstance(value, dict):
            self.fail(path, f"expected a command string (run under /bin/sh -c) or a list of arguments "
                            f"(exec'd as is), got {self.kind(value, path)}")
            return [], False
        command = self.text(value, path)
        if command is None:
            return [], True
        if not command.strip():
            self.add(path, "must not be empty")
        elif "\0" in command:
            self.add(path, "must not contain NUL characters")
        return [command], True

    def inputs(self, value: Any, path: _Path) -> dict[str, str]:
        spec = self.mapping(value, path, "a mapping of input name to 'task.output'")
        inputs: dict[str, str] = {}
        for key, ref in (spec or {}).items():
            if ref is None or isinstance(ref, (list, dict)):
                self.fail(path + (key,), f"expected 'task.output', got {self.kind(ref, path + (key,))}")
                continue
            text = self.text(ref, path + (key,))
            if text is not None:
                inputs[str(key)] = text
        return inputs

    def names(self, value: Any, path: _Path, what: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(path, f"expected {what}, got {self.kind(value, path)}")
            return []
        # Keep a placeholder for a bad item so later indices (and their lines) stay right;
        # the item's path is silenced, so the placeholder draws no second message.
        return [self.text(item, path + (i,)) or "" for i, item in enumerate(value)]

    def requires(self, value: Any, path: _Path, task: Task) -> None:
        spec = self.mapping(value, path, "a mapping with cpus, memory, gpus, disk, labels")
        if spec is None:
            return
        self.unknown_keys(spec, path, _REQUIRES_KEYS)
        if spec.get("cpus") is not None:
            cpus = spec["cpus"]
            if _is_number(cpus) and math.isfinite(cpus) and cpus >= 0:
                task.cpus = float(cpus)
            else:
                self.add(path + ("cpus",), f"expected a non-negative number of CPUs, got {self.kind(cpus, path + ('cpus',))}")
        if spec.get("gpus") is not None:
            gpus = spec["gpus"]
            if isinstance(gpus, int) and not isinstance(gpus, bool) and 0 <= gpus <= _INT32_MAX:
                task.gpus = gpus
            else:
                self.add(path + ("gpus",), f"expected a non-negative whole number of GPUs, got {self.kind(gpus, path + ('gpus',))}")
        if spec.get("memory") is not None:
            task.memory_bytes = self.size(spec["memory"], path + ("memory",))
        if spec.get("disk") is not None:
            task.disk_bytes = self.size(spec["disk"], path + ("disk",))
        if spec.get("labels") is not None:
            task.labels = self.string_map(spec["labels"], path + ("labels",), "a mapping of label to value",
                                          _label_key_problem)

    def retries(self, value: Any, path: _Path, task: Task) -> None:
        # ``retries: N`` and ``retries: {max: N}`` both mean N retries after the first attempt.
        if isinstance(value, dict):
            self.unknown_keys(value, path, _RETRIES_KEYS)
            if value.get("max") is not None:
                task.max_attempts = self.retry_count(value["max"], path + ("max",)) + 1
            if value.get("backoff") is not None:
                task.backoff_s = self.duration(value["backoff"], path + ("backoff",), task.backoff_s)
            return
        if isinstance(value, int) and not isinstance(value, bool):
            task.max_attempts = self.retry_count(value, path) + 1
            return
        self.add(path, f"expected a number of retries or a mapping {{max: N, backoff: 5s}}, "
                       f"got {self.kind(value, path)}")

    def retry_count(self, value: Any, path: _Path) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _INT32_MAX:
            return value
        self.add(path, f"expected a non-negative whole number of retries, got {self.kind(value, path)}")
        return 0

    def size(self, value: Any, path: _Path) -> int:
        try:
            size = parse_bytes(value)
        except (ValueError, OverflowError) as exc:  # OverflowError: .inf
            self.add(path, str(exc) if not isinstance(exc, OverflowError) else f"expected a size, got {value!r}")
            return 0
        if size > _INT64_MAX:
            self.add(path, f"size {size} bytes is too large")
            return 0
        return size

    def duration(self, value: Any, path: _Path, default: float) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return default
        if not math.isfinite(seconds):  # .inf and .nan are YAML floats and pass parse_duration
            self.add(path, f"expected a finite duration, got {value!r}")
            return default
        return seconds

    def string_map(self, value: Any, path: _Path, what: str, key_problem: Callable[[Any], str | None]) -> dict[str, str]:
        spec = self.mapping(value, path, what)
        result: dict[str, str] = {}
        for key, item in (spec or {}).items():
            item_path = path + (key,)
            problem = key_problem(key)
            if problem:
                self.add(item_path, problem)
                continue
            text = self.text(item, item_path)
            if text is None:
                continue
            if "\0" in text:
                self.add(item_path, "must not contain NUL characters")
                continue
            result[key] = text
        return result


def _env_key_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not _ENV_RE.fullmatch(key):
        return f"invalid environment variable name {key!r}: use letters, digits and '_', not starting with a digit"
    return None


def _label_key_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not key.strip():
        return f"label names must be non-empty strings, got {_kind(key)}"
    return None


# --------------------------------------------------------------------------- proto checks


def _proto_problems(spec: common_pb2.PipelineSpec) -> list[tuple[str, str]]:
    """``validate_proto`` as (field, message) pairs; fields like ``tasks[train].argv``."""
    problems: list[tuple[_Path, str]] = []
    problem = _name_problem(spec.name, "pipeline name")
    if problem:
        problems.append((("name",), problem))
    if spec.code_digest and not _DIGEST_RE.fullmatch(spec.code_digest):
        problems.append((("code_digest",), "expected a lowercase sha256 hex digest (64 characters)"))
    if not spec.tasks:
        problems.append((("tasks",), "must declare at least one task"))
    counts: dict[str, int] = {}
    for task in spec.tasks:
        counts[task.name] = counts.get(task.name, 0) + 1
    first_index: dict[str, int] = {}
    entries: list[tuple[str | int, _GraphTask]] = []
    for i, task in enumerate(spec.tasks):
        # Name a task by its name where that is unambiguous, else by its index.
        elem: str | int = task.name if task.name and counts[task.name] == 1 else i
        base: _Path = ("tasks", elem)
        entries.append((elem, task))
        problem = _name_problem(task.name, "task name")
        if problem:
            problems.append((base + ("name",), problem))
        elif task.name in first_index:
            problems.append((base + ("name",), f"duplicate task name {task.name!r} (also tasks[{first_index[task.name]}])"))
        first_index.setdefault(task.name, i)
        problems.extend(_proto_task_problems(task, base))
    problems.extend(_graph_problems(entries))
    return [(_fmt(path, proto=True), message) for path, message in problems]


def _proto_task_problems(task: common_pb2.TaskSpec, base: _Path) -> list[tuple[_Path, str]]:
    """The per-task wire checks that the YAML road does while parsing (argv, resources, times)."""
    problems: list[tuple[_Path, str]] = []
    if not task.argv:
        problems.append((base + ("argv",), "must not be empty"))
    elif task.shell and len(task.argv) != 1:
        problems.append((base + ("argv",), f"with shell=true argv holds exactly one command string, got {len(task.argv)}"))
    elif not task.argv[0].strip():
        problems.append((base + ("argv", 0), "the program (first element) must not be empty"))
    for i, arg in enumerate(task.argv):
        if "\0" in arg:
            problems.append((base + ("argv", i), "must not contain NUL characters"))
    req = task.requires
    if not (math.isfinite(req.cpus) and req.cpus >= 0):
        problems.append((base + ("requires", "cpus"), f"must be a non-negative number, got {req.cpus}"))
    for name in ("memory_bytes", "disk_bytes", "gpus"):
        if getattr(req, name) < 0:
            problems.append((base + ("requires", name), f"must not be negative, got {getattr(req, name)}"))
    for key in req.labels:
        problem = _label_key_problem(key)
        if problem:
            problems.append((base + ("requires", "labels"), problem))
    if task.max_attempts < 0:
        problems.append((base + ("max_attempts",), f"must not be negative, got {task.max_attempts}"))
    for name in ("backoff_s", "timeout_s"):
        seconds = getattr(task, name)
        if not (math.isfinite(seconds) and seconds >= 0):
            problems.append((base + (name,), f"must be a non-negative number of seconds, got {seconds}"))
    for key, value in task.env.items():
        problem = _env_key_problem(key)
        if problem:
            problems.append((base + ("env", key), problem))
        elif "\0" in value:
            problems.append((base + ("env", key), "must not contain NUL characters"))
    return problems
