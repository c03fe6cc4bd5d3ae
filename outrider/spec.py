"""The pipeline-spec validator, over the wire form ``common_pb2.PipelineSpec``.

There is one validator and every road into the scheduler meets it:

* the client runs it before sending (``Pipeline.validate``, ``Pipeline.task``, and
  ``load_pipeline``/``parse_pipeline`` for YAML files), after the front end
  (``outrider.spec_reader``) has read the YAML or the SDK's arguments into the wire form;
* the scheduler runs it on every spec it receives (``validate_proto``): RPC input can come
  from any client, not just from our SDK.

``check_spec`` returns ``SpecProblem``s: a wire field path (tasks by index, as in the
message: ``("tasks", 2, "requires", "memory_bytes")``), the message and a short ``code``
naming the check. Front ends map the path back to what the user wrote (``FILE:LINE:
tasks.train.requires.memory``); ``validate_proto`` prints it in wire terms
(``tasks[train].requires.memory_bytes: ...``).

What is checked: names (pipeline, tasks, outputs, inputs), ``task.output`` references,
``after`` lists, dependency cycles, argv, resource amounts, label keys and label
expressions, zones, tenant, environment variable names (plain and secret), times, weights,
and NUL characters in text that reaches a process. Proto maps have no order, so the
validator reads them by key (a front end that knows the order inputs were written in may
pass it: ``input_order``). A problem never quotes a ``secret_env`` value.

This module imports neither PyYAML nor ``outrider.pipeline``: the scheduler uses it alone.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from outrider.labels import LABEL_KEY_PATTERN, describe_value, format_label_expr, label_expr_problem
from outrider.protocol import is_digest
from outrider.v1 import common_pb2

__all__ = [
    "GRAPH_FIELDS",
    "LABEL_KEY_PATTERN",
    "MAX_NAME_LENGTH",
    "MAX_SECRETS",
    "MAX_SECRET_BYTES",
    "NAME_PATTERN",
    "TENANT_PATTERN",
    "ZONE_PATTERN",
    "FieldPath",
    "SpecProblem",
    "check_spec",
    "check_task",
    "env_name_problem",
    "find_cycles",
    "gpu_model_problem",
    "label_key_problem",
    "name_problem",
    "parse_ref",
    "tenant_problem",
    "upstream_names",
    "validate_proto",
    "wire_field",
    "zone_problem",
]

#: Task, output, input and pipeline names. No dots, so ``task.output`` is unambiguous.
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"
_NAME_RE = re.compile(NAME_PATTERN)
#: The longest task, output, input or pipeline name: names become file names on the scheduler
#: (``logs/<run>/<task>/``) and on agents, and most file systems stop at 255 bytes a name.
MAX_NAME_LENGTH = 128
#: Data-residency zone names (``requires.residency``).
ZONE_PATTERN = r"[A-Za-z0-9._-]+"
_ZONE_RE = re.compile(ZONE_PATTERN)
#: Fair-share tenant names: plain names, ``user@host``, or a SPIFFE ID such as
#: ``spiffe://acme.ml/submitter/alice`` (the default tenant is the submitter's identity).
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,252}"
_TENANT_RE = re.compile(TENANT_PATTERN)
#: Environment variable names: what every shell accepts (no '-', no '=').
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Bounds on a task's ``secret_env``: how many, and each value's size in bytes.
MAX_SECRETS = 64
MAX_SECRET_BYTES = 16 * 1024

#: A field path: field names (str) and list indices or map keys, from the message root.
FieldPath = tuple[str | int, ...]

#: Fields of a task that the graph checks read, in the order they check them.
GRAPH_FIELDS = ("outputs", "inputs", "after")


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a wire spec.

    ``path`` names the field in wire terms, tasks by index: ``("tasks", 2, "argv", 0)``;
    map entries end in their key (``("tasks", 0, "env", "MY-VAR")``). ``code`` names the
    check, so that a front end can word a problem in its own terms: ``invalid-name``,
    ``duplicate-task``, ``invalid-digest``, ``no-tasks``, ``out-of-range``,
    ``invalid-tenant``, ``empty-argv``, ``shell-argv``, ``empty-program``, ``nul``,
    ``invalid-label-key``, ``empty-gpu-model``, ``invalid-label-expr``, ``invalid-zone``,
    ``duplicate-zone``, ``invalid-env-name``, ``duplicate-env``, ``duplicate-output``, ``invalid-ref``,
    ``self-reference``, ``unknown-task``, ``unknown-output``, ``duplicate-after``, ``cycle``.
    """

    path: FieldPath
    message: str
    code: str

    @property
    def between_tasks(self) -> bool:
        """Whether this is a graph problem (outputs, references, ``after``, cycles), which
        can only be seen once every task is known; the others concern one field.
        """
        return len(self.path) > 2 and self.path[0] == "tasks" and self.path[2] in GRAPH_FIELDS


# --------------------------------------------------------------------------- names and values


def name_problem(name: Any, what: str) -> str | None:
    """Why ``name`` is not a valid task/output/input/pipeline name (``what``), or None."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {describe_value(name)}"
    if not name:
        return f"{what} must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"{what} is {len(name)} characters long, over the limit of {MAX_NAME_LENGTH}: {name[:40]!r}..."
    if not _NAME_RE.fullmatch(name):
        return (
            f"invalid {what} {name!r}: use letters, digits, '_' and '-', "
            f"not starting with a digit or '-' (pattern {NAME_PATTERN})"
        )
    return None


def parse_ref(text: str) -> tuple[str, str] | None:
    """``"task.output"`` as ``(task, output)``; None unless it is exactly two valid names
    joined by one dot. The one place a reference is taken apart.
    """
    if not isinstance(text, str):
        return None
    task, dot, output = text.partition(".")
    if not dot or name_problem(task, "") or name_problem(output, ""):
        return None
    return task, output


def zone_problem(zone: str) -> str | None:
    """Why ``zone`` is not a valid residency zone name, or None."""
    if not zone:
        return "zone names must not be empty"
    if not _ZONE_RE.fullmatch(zone):
        return f"invalid zone name {zone!r}: use letters, digits, '.', '_' and '-' (pattern {ZONE_PATTERN})"
    return None


def tenant_problem(tenant: str) -> str | None:
    """Why ``tenant`` is not a valid tenant name, or None. On the wire an empty tenant means
    the submitter's identity; a front end that can tell "empty" from "absent" refuses it.
    """
    if not tenant:
        return "must not be empty (leave the key out to use the submitter's identity)"
    if not _TENANT_RE.fullmatch(tenant):
        return (
            f"invalid tenant {tenant!r}: use letters, digits, '.', '_', '-', ':', '/' and '@', "
            f"starting with a letter or digit, at most 253 characters"
        )
    return None


def gpu_model_problem(model: str) -> str | None:
    """Why ``model`` is not a usable GPU model, or None. On the wire an empty model means any
    model; a front end that can tell "empty" from "absent" refuses it.
    """
    if not model.strip():
        return "must not be empty (leave the key out to accept any GPU model)"
    if "\0" in model:
        return "must not contain NUL characters"
    return None


def env_name_problem(key: Any) -> str | None:
    """Why ``key`` is not a valid environment variable name, or None."""
    if not isinstance(key, str) or not _ENV_RE.fullmatch(key):
        return f"invalid environment variable name {key!r}: use letters, digits and '_', not starting with a digit"
    return None


def label_key_problem(key: Any) -> str | None:
    """Why ``key`` is not a usable key of ``requires.labels``, or None."""
    if not isinstance(key, str) or not key.strip():
        return f"label names must be non-empty strings, got {describe_value(key)}"
    return None


# --------------------------------------------------------------------------- the validator


def check_spec(
    spec: common_pb2.PipelineSpec, *, input_order: Sequence[Sequence[str]] | None = None
) -> list[SpecProblem]:
    """Every problem of a wire spec, in this order: pipeline fields, each task's own fields,
    then the problems between tasks (``SpecProblem.between_tasks``), cycles last.

    ``input_order[i]`` is the order task ``i``'s inputs were written in, which a proto map
    does not keep; it decides which field a cycle is reported on and, in a tangle, which
    cycles are listed, so that a front end's report follows the spec as written. Without
    it (and for any input it leaves out), inputs are read by name.
    """
    problems: list[SpecProblem] = []
    problem = name_problem(spec.name, "pipeline name")
    if problem:
        problems.append(SpecProblem(("name",), problem, "invalid-name"))
    if spec.code_digest and not is_digest(spec.code_digest):
        problems.append(
            SpecProblem(("code_digest",), "expected a lowercase sha256 hex digest (64 characters)", "invalid-digest")
        )
    if not spec.tasks:
        problems.append(SpecProblem(("tasks",), "must declare at least one task", "no-tasks"))
    if spec.concurrency < 0:
        message = f"must not be negative (0 means no limit), got {spec.concurrency}"
        problems.append(SpecProblem(("concurrency",), message, "out-of-range"))
    if spec.tenant:
        problem = tenant_problem(spec.tenant)
        if problem:
            problems.append(SpecProblem(("tenant",), problem, "invalid-tenant"))
    first_index: dict[str, int] = {}
    for i, task in enumerate(spec.tasks):
        base: FieldPath = ("tasks", i)
        name = _task_name_problem(task)
        if name:
            problems.append(_under(base, name))
        elif task.name in first_index:
            message = f"duplicate task name {task.name!r} (also tasks[{first_index[task.name]}])"
            problems.append(SpecProblem(base + ("name",), message, "duplicate-task"))
        first_index.setdefault(task.name, i)
        problems.extend(_under(base, p) for p in _task_field_problems(task))
    problems.extend(_graph_problems(spec.tasks, input_order or ()))
    return problems


def check_task(task: common_pb2.TaskSpec) -> list[SpecProblem]:
    """The problems of one task on its own (its name and fields; not its references, which
    need the other tasks). Paths are relative to the task: ``("argv", 0)``.
    """
    name = _task_name_problem(task)
    return ([name] if name else []) + _task_field_problems(task)


def validate_proto(spec: common_pb2.PipelineSpec) -> list[str]:
    """Check a wire ``PipelineSpec``; return ``"field.path: message"`` strings (empty if valid).

    The scheduler calls this on every Submit/Plan. Paths name tasks in brackets, by name
    where that is unambiguous, else by index: ``tasks[train].inputs.features``, ``tasks[3].name``.
    """
    counts = Counter(task.name for task in spec.tasks)
    found = []
    for problem in check_spec(spec):
        fld = wire_field(spec, problem, counts)
        found.append(f"{fld}: {problem.message}" if fld else problem.message)
    return found


def wire_field(spec: common_pb2.PipelineSpec, problem: SpecProblem, counts: Mapping[str, int] | None = None) -> str:
    """``problem``'s field as ``validate_proto`` prints it: ``tasks[train].run[1]`` style.

    A task is named by its index where its name is not unique or too long to quote; a long
    map key is cut.
    A bad label key is reported on ``requires.labels`` itself: the key may be empty or blank,
    and the message quotes it. ``counts`` (task name -> how many tasks bear it) saves a
    recount when printing many problems of one spec.
    """
    path = problem.path[:-1] if problem.code == "invalid-label-key" else problem.path
    if counts is None:
        counts = Counter(task.name for task in spec.tasks)
    text = ""
    for i, part in enumerate(path):
        if i == 1 and path[0] == "tasks" and isinstance(part, int):
            name = spec.tasks[part].name
            text += f"[{name if name and counts[name] == 1 and len(name) <= MAX_NAME_LENGTH else part}]"
        elif isinstance(part, int):
            text += f"[{part}]"
        else:  # a field, or a map key (an input, an env var): cut where too long to quote
            text += ("." if text else "") + (part if len(part) <= MAX_NAME_LENGTH else part[:40] + "...")
    return text


def _under(base: FieldPath, problem: SpecProblem) -> SpecProblem:
    return SpecProblem(base + problem.path, problem.message, problem.code)


def _task_name_problem(task: common_pb2.TaskSpec) -> SpecProblem | None:
    problem = name_problem(task.name, "task name")
    return SpecProblem(("name",), problem, "invalid-name") if problem else None


def _task_field_problems(task: common_pb2.TaskSpec) -> list[SpecProblem]:
    """A task's own fields: argv, resources, placement, retries, times and environment."""
    problems = _argv_problems(task)
    problems.extend(_requires_problems(task.requires))
    for i, affinity in enumerate(task.affinities):
        expr = affinity.expr
        problem = label_expr_problem(expr.key, expr.op, expr.values)
        if problem:
            message = f"invalid label expression {format_label_expr(expr)!r}: {problem}"
            problems.append(SpecProblem(("affinities", i, "expr"), message, "invalid-label-expr"))
        if not (math.isfinite(affinity.weight) and affinity.weight != 0):
            message = f"must be a finite number other than 0 (> 0 prefers, < 0 avoids), got {affinity.weight}"
            problems.append(SpecProblem(("affinities", i, "weight"), message, "out-of-range"))
    if task.max_attempts < 0:
        problems.append(
            SpecProblem(("max_attempts",), f"must not be negative, got {task.max_attempts}", "out-of-range")
        )
    for name in ("backoff_s", "timeout_s"):
        seconds = getattr(task, name)
        if not (math.isfinite(seconds) and seconds >= 0):
            message = f"must be a non-negative number of seconds, got {seconds}"
            problems.append(SpecProblem((name,), message, "out-of-range"))
    problems.extend(_env_problems(task))
    return problems


def _env_problems(task: common_pb2.TaskSpec) -> list[SpecProblem]:
    """``env`` and ``secret_env``: names, NULs, sizes; a problem never quotes a value."""
    problems: list[SpecProblem] = []
    for field in ("env", "secret_env"):
        env = getattr(task, field)
        if field == "secret_env" and len(env) > MAX_SECRETS:
            message = f"at most {MAX_SECRETS} secret variables, got {len(env)}"
            problems.append(SpecProblem((field,), message, "out-of-range"))
        for key in sorted(env):
            problem = env_name_problem(key)
            if problem:
                problems.append(SpecProblem((field, key), problem, "invalid-env-name"))
            elif "\0" in env[key]:
                problems.append(SpecProblem((field, key), "must not contain NUL characters", "nul"))
            elif field == "secret_env" and key in task.env:
                message = f"{key!r} is in env too: a variable is either secret or not"
                problems.append(SpecProblem((field, key), message, "duplicate-env"))
            elif field == "secret_env" and len(env[key].encode()) > MAX_SECRET_BYTES:
                message = f"a secret value is at most {MAX_SECRET_BYTES} bytes"
                problems.append(SpecProblem((field, key), message, "out-of-range"))
    return problems


def _argv_problems(task: common_pb2.TaskSpec) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    if not task.argv:
        problems.append(SpecProblem(("argv",), "must not be empty", "empty-argv"))
    elif task.shell and len(task.argv) != 1:
        message = f"with shell=true argv holds exactly one command string, got {len(task.argv)}"
        problems.append(SpecProblem(("argv",), message, "shell-argv"))
    elif not task.argv[0].strip():
        problems.append(SpecProblem(("argv", 0), "the program (first element) must not be empty", "empty-program"))
    for i, arg in enumerate(task.argv):
        if "\0" in arg:
            problems.append(SpecProblem(("argv", i), "must not contain NUL characters", "nul"))
    return problems


def _requires_problems(req: common_pb2.Requirements) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    base: FieldPath = ("requires",)
    if not (math.isfinite(req.cpus) and req.cpus >= 0):
        problems.append(SpecProblem(base + ("cpus",), f"must be a non-negative number, got {req.cpus}", "out-of-range"))
    for name in ("memory_bytes", "disk_bytes", "gpus"):
        if getattr(req, name) < 0:
            message = f"must not be negative, got {getattr(req, name)}"
            problems.append(SpecProblem(base + (name,), message, "out-of-range"))
    for key in sorted(req.labels):
        problem = label_key_problem(key)
        if problem:
            problems.append(SpecProblem(base + ("labels", key), problem, "invalid-label-key"))
        elif "\0" in req.labels[key]:
            problems.append(SpecProblem(base + ("labels", key), "must not contain NUL characters", "nul"))
    if req.gpu_memory_bytes < 0:
        message = f"must not be negative, got {req.gpu_memory_bytes}"
        problems.append(SpecProblem(base + ("gpu_memory_bytes",), message, "out-of-range"))
    if req.gpu_model:  # empty: any model
        problem = gpu_model_problem(req.gpu_model)
        if problem:
            code = "nul" if req.gpu_model.strip() else "empty-gpu-model"
            problems.append(SpecProblem(base + ("gpu_model",), problem, code))
    for i, expr in enumerate(req.expressions):
        problem = label_expr_problem(expr.key, expr.op, expr.values)
        if problem:
            message = f"invalid label expression {format_label_expr(expr)!r}: {problem}"
            problems.append(SpecProblem(base + ("expressions", i), message, "invalid-label-expr"))
    seen_zones: dict[str, int] = {}
    for i, zone in enumerate(req.residency):
        problem = zone_problem(zone)
        if problem:
            problems.append(SpecProblem(base + ("residency", i), problem, "invalid-zone"))
        elif zone in seen_zones:
            message = f"zone {zone!r} is listed twice (also residency[{seen_zones[zone]}])"
            problems.append(SpecProblem(base + ("residency", i), message, "duplicate-zone"))
        seen_zones.setdefault(zone, i)
    if not (math.isfinite(req.max_clock_skew_s) and req.max_clock_skew_s >= 0):
        message = f"must be a non-negative number of seconds (0 means no bound), got {req.max_clock_skew_s}"
        problems.append(SpecProblem(base + ("max_clock_skew_s",), message, "out-of-range"))
    return problems


# --------------------------------------------------------------------------- the graph


class GraphTask(Protocol):
    """What ``upstream_names`` reads: satisfied by ``pipeline.Task`` and ``common_pb2.TaskSpec``."""

    name: str

    @property
    def inputs(self) -> Mapping[str, str]: ...

    @property
    def after(self) -> Sequence[str]: ...


def upstream_names(task: GraphTask) -> list[str]:
    """Names of the tasks ``task`` waits for (its inputs' tasks, then ``after``), without
    duplicates, in the order the mapping and list give them. Inputs that are not
    references (``parse_ref`` says None) name no task.
    """
    names = [ref[0] for ref in map(parse_ref, task.inputs.values()) if ref is not None]
    names.extend(task.after)
    return list(dict.fromkeys(names))


def _suggest(word: str, choices: Iterable[str], known: str = "known") -> str:
    """A "did you mean" hint, or a list of what exists when nothing is close."""
    if len(word) > MAX_NAME_LENGTH:  # no name is close, and difflib's cost grows with the length
        return ""
    options = sorted({c for c in choices if c})
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not options:
        return ""
    shown = ", ".join(options[:10]) + (", ..." if len(options) > 10 else "")
    return f" ({known}: {shown})"


def find_cycles(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
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
                    flow = path[path.index(up) :][::-1]
                    start = min(range(len(flow)), key=lambda i: index[flow[i]])
                    flow = flow[start:] + flow[:start]
                    if tuple(flow) not in seen:
                        seen.add(tuple(flow))
                        cycles.append(flow + [flow[0]])
            else:
                state[path.pop()] = 2
                stack.pop()
    return cycles


def _graph_problems(tasks: Sequence[common_pb2.TaskSpec], input_order: Sequence[Sequence[str]]) -> list[SpecProblem]:
    """The checks between tasks: output and input names, duplicate outputs, ``task.output``
    references (task exists, output declared, not the task itself), ``after`` references,
    and dependency cycles. A name borne by several tasks means its first bearer.
    """
    problems: list[SpecProblem] = []
    first: dict[str, int] = {}
    for i, task in enumerate(tasks):
        first.setdefault(task.name, i)
    deps: dict[str, list[str]] = {}
    edge_paths: dict[tuple[str, str], FieldPath] = {}  # (task, upstream) -> field declaring that edge
    for i, task in enumerate(tasks):
        base: FieldPath = ("tasks", i)
        seen_outputs: dict[str, int] = {}
        for j, out in enumerate(task.outputs):
            problem = name_problem(out, "output name")
            if problem:
                problems.append(SpecProblem(base + ("outputs", j), problem, "invalid-name"))
            elif out in seen_outputs:
                message = f"duplicate output {out!r} (also outputs[{seen_outputs[out]}])"
                problems.append(SpecProblem(base + ("outputs", j), message, "duplicate-output"))
            seen_outputs.setdefault(out, j)
        ups: list[str] = []
        written = [key for key in (input_order[i] if i < len(input_order) else ()) if key in task.inputs]
        for key in dict.fromkeys(written + sorted(task.inputs)):
            up = _input_problems(task, key, base + ("inputs", key), tasks, first, problems)
            if up is not None:
                ups.append(up)
                edge_paths.setdefault((task.name, up), base + ("inputs", key))
        seen_after: dict[str, int] = {}
        for j, up in enumerate(task.after):
            path = base + ("after", j)
            if up == task.name:
                problems.append(SpecProblem(path, f"task {task.name!r} cannot run after itself", "self-reference"))
            elif up not in first:
                problems.append(SpecProblem(path, f"no task named {up!r}{_suggest(up, first)}", "unknown-task"))
            elif up in seen_after:
                message = f"{up!r} is listed twice (also after[{seen_after[up]}])"
                problems.append(SpecProblem(path, message, "duplicate-after"))
            else:
                ups.append(up)
                edge_paths.setdefault((task.name, up), path)
            seen_after.setdefault(up, j)
        if first[task.name] == i:
            deps[task.name] = ups
    for cycle in find_cycles(list(first), deps):
        # Point at the field in the cycle's first task that closes the loop.
        path = edge_paths[(cycle[0], cycle[-2])]
        problems.append(SpecProblem(path, f"dependency cycle: {' -> '.join(cycle)}", "cycle"))
    return problems


def _input_problems(
    task: common_pb2.TaskSpec,
    key: str,
    path: FieldPath,
    tasks: Sequence[common_pb2.TaskSpec],
    first: Mapping[str, int],
    problems: list[SpecProblem],
) -> str | None:
    """Check one input (its name and reference), appending to ``problems``; return the
    upstream task it makes an edge to, or None.
    """
    problem = name_problem(key, "input name")
    if problem:
        problems.append(SpecProblem(path, problem, "invalid-name"))
    ref = task.inputs[key]
    parsed = parse_ref(ref)
    if parsed is None:
        problems.append(SpecProblem(path, f"expected 'task.output', got {ref!r}", "invalid-ref"))
        return None
    up, out = parsed
    if up == task.name:
        message = f"task {task.name!r} cannot consume its own output {out!r}"
        problems.append(SpecProblem(path, message, "self-reference"))
        return None
    if up not in first:
        problems.append(SpecProblem(path, f"no task named {up!r}{_suggest(up, first)}", "unknown-task"))
        return None
    declared = tasks[first[up]].outputs
    if out not in declared:
        hint = _suggest(out, declared, "declared") if declared else " (it declares no outputs)"
        problems.append(SpecProblem(path, f"task {up!r} has no output {out!r}{hint}", "unknown-output"))
    return up  # still an edge: the dependency is meant even if the output is misnamed
