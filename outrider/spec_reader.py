"""Reading spec data into the wire form: the front end shared by YAML files and the SDK.

A spec arrives as plain data: a YAML document (composed by ``outrider.spec_yaml``, which
records every line) or the SDK's keyword arguments and model (``Pipeline.task``,
``Pipeline.validate``), turned into the same dicts. ``SpecReader`` reads that data into a
``common_pb2.PipelineSpec`` and reports only what the data alone shows:

* its shape: mappings, lists and strings where the schema has them; unknown keys; required
  keys that are missing;
* quantities, each read whole with its range, as ``parse_bytes`` and ``parse_duration``
  read theirs: sizes (``4GiB``), durations (``30m``), CPU, GPU and retry counts, weights
  (> 0: the sign comes from ``prefer``/``avoid``), priority and concurrency;
* label-expression text (``parse_label_expr``);
* values the wire cannot tell from "absent": an empty ``tenant`` or ``gpu_model``,
  ``residency: []``, ``concurrency: 0``; and ``code:``, a local directory.

Everything else is the validator's: ``SpecReader.finish`` runs ``outrider.spec.check_spec``
on the wire form and turns each of its problems back into the user's terms: the path
(``tasks[2].requires.memory_bytes`` becomes ``tasks.train.requires.memory``), the line, and
for ``run`` the wording (the wire speaks of ``argv`` and ``shell``). A field the reader could
not read is left out of the wire form (or, in a list, kept as an empty placeholder so that
later indices stay right) and silenced: one mistake, one message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrider.spec import (
    GRAPH_FIELDS,
    FieldPath,
    SpecProblem,
    check_spec,
    check_task,
    env_name_problem,
    gpu_model_problem,
    label_key_problem,
    name_problem,
    tenant_problem,
)
from outrider.spec_problems import Problem, Source
from outrider.spec_values import ValueReader, is_int, is_number
from outrider.v1 import common_pb2

__all__ = ["DEFAULT_AFFINITY_WEIGHT", "DEFAULT_BACKOFF_S", "DEFAULT_CPUS", "SpecReader", "TaskOrigin"]

# Proto field ranges, checked up front so that building the wire form never fails.
_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)

# The keys allowed at each level, in the order the docs list them.
# New keys are appended, so that the start of each "allowed:" list never changes.
_TOP_KEYS = ("name", "code", "tasks", "priority", "concurrency", "tenant")
_TASK_KEYS = (
    "run",
    "inputs",
    "outputs",
    "after",
    "requires",
    "retries",
    "timeout",
    "env",
    "secret_env",
    "prefer",
    "avoid",
)
_REQUIRES_KEYS = (
    "cpus",
    "memory",
    "gpus",
    "disk",
    "labels",
    "match",
    "gpu_memory",
    "gpu_model",
    "residency",
    "max_clock_skew",
)
_RETRIES_KEYS = ("max", "backoff")
_AFFINITY_KEYS = ("match", "weight")

# Defaults of the optional task fields (also the defaults of ``pipeline.Task``).
DEFAULT_CPUS = 1.0
DEFAULT_BACKOFF_S = 1.0
DEFAULT_AFFINITY_WEIGHT = 1.0

# Wire names of the ``requires`` fields whose spec key differs.
_REQUIRES_WIRE_NAMES = {
    "memory_bytes": "memory",
    "disk_bytes": "disk",
    "gpu_memory_bytes": "gpu_memory",
    "expressions": "match",
    "max_clock_skew_s": "max_clock_skew",
}

# Wire fields of a task whose spec field has another name and place.
_TASK_WIRE_PATHS: dict[str, FieldPath] = {"backoff_s": ("retries", "backoff"), "timeout_s": ("timeout",)}


@dataclass
class TaskOrigin:
    """How one wire task was written: what maps its wire paths back to the spec's fields.

    ``inputs``, ``env``, ``secret_env`` and ``labels`` are the maps as written, in their order (proto maps
    keep none), for the model built from the wire form.
    """

    key: Any  # the task's key under ``tasks``
    shell: bool = False
    retries: FieldPath = ("retries",)  # where the attempt count was written
    # Per wire affinity: ("prefer" or "avoid", index there, whether written as a mapping).
    affinities: list[tuple[str, int, bool]] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict)

    def spec_path(self, wire: FieldPath) -> FieldPath:
        """A path within the wire task -> the path within the task as written."""
        head, rest = wire[0], wire[1:]
        if head == "name":
            return ()
        if head == "argv":  # a shell task's command is ``run`` itself
            return ("run",) if self.shell or not rest else ("run", rest[0])
        if head == "requires" and rest:
            return ("requires", _REQUIRES_WIRE_NAMES.get(str(rest[0]), rest[0])) + rest[1:]
        if head == "affinities" and rest:
            side, index, mapping = self.affinities[int(rest[0])]
            if mapping and len(rest) > 1:
                return (side, index, "match" if rest[1] == "expr" else rest[1])
            return (side, index)
        if head == "max_attempts":
            return self.retries
        return _TASK_WIRE_PATHS.get(str(head), wire)


# --------------------------------------------------------------------------- reading a spec


class SpecReader(ValueReader):
    """Reads a spec dict (from YAML or the SDK) into the wire form, collecting problems.

    ``pipeline`` reads a whole document, ``task`` one task; ``finish`` and ``finish_task``
    then run the validator and return every problem, in reading order (graph problems last).
    ``code_dir`` and ``origins`` (one per task read) are what the wire form cannot carry.
    """

    def __init__(self, file: str, source: Source | None, base_dir: Path) -> None:
        super().__init__(file, source, base_dir)
        self.code_dir: Path | None = None
        self.origins: list[TaskOrigin] = []
        # What an SDK model shows beyond its dict form (``model_problem``): reported last.
        self.model_found: list[tuple[FieldPath, Problem]] = []

    def model_problem(self, path: FieldPath, message: str) -> None:
        """A problem of the SDK's model that its dict form cannot show (reported last)."""
        self.model_found.append((path, self.problem(path, message)))

    # ----------------------------------------------------------------- document

    def pipeline(self, doc: Any) -> common_pb2.PipelineSpec | None:
        """The wire form of a document; None if it is not even a mapping."""
        if not isinstance(doc, dict):
            got = "an empty document" if doc is None else self.kind(doc, ())
            self.add((), f"the top level must be a mapping with 'name' and 'tasks', got {got}")
            return None
        # Top-level ``x-`` keys are ignored: a place to define YAML anchors (as in Compose files).
        self.unknown_keys({k: v for k, v in doc.items() if not str(k).startswith("x-")}, (), _TOP_KEYS)
        spec = common_pb2.PipelineSpec()
        if "name" not in doc:
            self.fail(("name",), "required field is missing")
        else:
            spec.name = self.text(doc["name"], ("name",)) or ""
        self.code_dir = self.code(doc.get("code"))
        spec.priority = self.priority(doc.get("priority"))
        spec.concurrency = self.concurrency(doc.get("concurrency"))
        spec.tenant = self.tenant(doc.get("tenant"))
        raw_tasks = doc.get("tasks")
        path = self.visit(("tasks",))
        if "tasks" not in doc:
            self.fail(path, "required field is missing")
        elif raw_tasks is not None and raw_tasks != {}:  # no tasks: the validator says so
            tasks = self.mapping(raw_tasks, path, "a mapping of task name to task")
            for key, task_spec in (tasks or {}).items():
                spec.tasks.append(self.task(key, task_spec, ("tasks", key)))
        return spec

    def code(self, value: Any) -> Path | None:
        if value is None:
            return None
        path: FieldPath = ("code",)
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

    def priority(self, value: Any) -> int:
        path = self.visit(("priority",))
        if value is None:
            return 0
        if not is_int(value):
            self.fail(
                path, f"expected a whole number (higher runs first; may be negative), got {self.kind(value, path)}"
            )
            return 0
        if not _INT32_MIN <= value <= _INT32_MAX:
            self.fail(path, f"must be from {_INT32_MIN} to {_INT32_MAX}, got {value}")
            return 0
        return int(value)

    def concurrency(self, value: Any) -> int:
        """The limit, or 0 (the wire's "no limit") when absent; ``0`` as written is refused."""
        path = self.visit(("concurrency",))
        if value is None:
            return 0
        if not (is_int(value) and 1 <= value <= _INT32_MAX):
            self.fail(
                path,
                f"expected a whole number of tasks at once, at least 1 (leave the key out for no limit), "
                f"got {self.kind(value, path)}",
            )
            return 0
        return int(value)

    def tenant(self, value: Any) -> str:
        path = self.visit(("tenant",))
        if value is None:
            return ""
        text = self.text(value, path)
        if text == "":  # the wire's "the submitter's identity": only leaving the key out means that
            self.fail(path, tenant_problem(text) or "")
        return text or ""

    # ----------------------------------------------------------------- task

    def task(self, key: Any, spec: Any, path: FieldPath) -> common_pb2.TaskSpec:
        """Read one task; always returns its wire form (best effort, defaults applied), so
        that other tasks' references to it resolve and do not add noise to the report.
        """
        self.visit(path)
        if not isinstance(key, str):  # from the SDK only: YAML keys are text
            self.add(path, name_problem(key, "task name") or "")
            self.replaced.add(path)
        task = common_pb2.TaskSpec(name=str(key), max_attempts=1, backoff_s=DEFAULT_BACKOFF_S)
        task.requires.cpus = DEFAULT_CPUS
        origin = TaskOrigin(key)
        self.origins.append(origin)
        if not isinstance(spec, dict):
            self.add(path, f"a task must be a mapping with at least 'run', got {self.kind(spec, path)}")
            # Its fields are unread (the validator would miss its argv), but its name still counts.
            self.silenced.update(path + (name,) for name in _TASK_KEYS)
            return task
        self.unknown_keys(spec, path, _TASK_KEYS)
        if "run" not in spec:
            self.fail(path + ("run",), "required field is missing")
        else:
            argv, origin.shell = self.run(spec["run"], self.visit(path + ("run",)))
            task.argv.extend(argv)
            task.shell = origin.shell
        if spec.get("inputs") is not None:
            origin.inputs = self.inputs(spec["inputs"], self.visit(path + ("inputs",)))
            task.inputs.update(origin.inputs)
        if spec.get("outputs") is not None:
            task.outputs.extend(self.names(spec["outputs"], self.visit(path + ("outputs",)), "a list of output names"))
        if spec.get("after") is not None:
            task.after.extend(self.names(spec["after"], self.visit(path + ("after",)), "a list of task names"))
        if spec.get("requires") is not None:
            self.requires(spec["requires"], self.visit(path + ("requires",)), task.requires, origin)
        if spec.get("retries") is not None:
            self.retries(spec["retries"], self.visit(path + ("retries",)), task, origin)
        if spec.get("timeout") is not None:
            task.timeout_s = self.duration(spec["timeout"], self.visit(path + ("timeout",)), 0.0)
        if spec.get("env") is not None:
            what = "a mapping of variable name to value"
            origin.env = self.string_map(spec["env"], self.visit(path + ("env",)), what, env_name_problem)
            task.env.update(origin.env)
        if spec.get("secret_env") is not None:
            what = "a mapping of variable name to secret value"
            path_s = self.visit(path + ("secret_env",))
            origin.secret_env = self.string_map(spec["secret_env"], path_s, what, env_name_problem)
            task.secret_env.update(origin.secret_env)
        for side in ("prefer", "avoid"):
            if spec.get(side) is not None:
                task.affinities.extend(self.affinities(spec[side], self.visit(path + (side,)), side, origin))
        return task

    def run(self, value: Any, path: FieldPath) -> tuple[list[str], bool]:
        """``(argv, shell)``: a string runs under ``/bin/sh -c``, a list is exec'd as is."""
        if isinstance(value, list):
            return [self.text(item, path + (i,)) or "" for i, item in enumerate(value)], False
        if value is None or isinstance(value, dict):
            self.fail(
                path,
                f"expected a command string (run under /bin/sh -c) or a list of arguments "
                f"(exec'd as is), got {self.kind(value, path)}",
            )
            return [], False
        command = self.text(value, path)
        return ([command] if command is not None else []), True

    def inputs(self, value: Any, path: FieldPath) -> dict[str, str]:
        spec = self.mapping(value, path, "a mapping of input name to 'task.output'")
        inputs: dict[str, str] = {}
        for key, ref in (spec or {}).items():
            item_path = self.visit(path + (key,))
            if ref is None or isinstance(ref, (list, dict)):
                self.fail(item_path, f"expected 'task.output', got {self.kind(ref, item_path)}")
                continue
            text = self.text(ref, item_path)
            if text is not None:
                inputs[str(key)] = text
        return inputs

    def requires(self, value: Any, path: FieldPath, req: common_pb2.Requirements, origin: TaskOrigin) -> None:
        spec = self.mapping(value, path, f"a mapping with {', '.join(_REQUIRES_KEYS)}")
        if spec is None:
            return
        self.unknown_keys(spec, path, _REQUIRES_KEYS)

        def given(key: str) -> FieldPath | None:
            return self.visit(path + (key,)) if spec.get(key) is not None else None

        if at := given("cpus"):
            cpus = spec["cpus"]
            if is_number(cpus) and math.isfinite(cpus) and cpus >= 0:
                req.cpus = float(cpus)
            else:
                self.fail(at, f"expected a non-negative number of CPUs, got {self.kind(cpus, at)}")
        if at := given("gpus"):
            gpus = spec["gpus"]
            if is_int(gpus) and 0 <= gpus <= _INT32_MAX:
                req.gpus = gpus
            else:
                self.fail(at, f"expected a non-negative whole number of GPUs, got {self.kind(gpus, at)}")
        if at := given("memory"):
            req.memory_bytes = self.size(spec["memory"], at)
        if at := given("disk"):
            req.disk_bytes = self.size(spec["disk"], at)
        if at := given("labels"):
            what = "a mapping of label to value"
            if isinstance(spec["labels"], list):  # likely expressions: say where they go
                what += " (label expressions such as 'site in (a, b)' go under requires.match)"
            origin.labels = self.string_map(spec["labels"], at, what, label_key_problem)
            req.labels.update(origin.labels)
        if at := given("match"):
            req.expressions.extend(self.expressions(spec["match"], at))
        if at := given("gpu_memory"):
            req.gpu_memory_bytes = self.size(spec["gpu_memory"], at)
        if at := given("gpu_model"):
            model = self.text(spec["gpu_model"], at)
            if model == "":  # the wire's "any model": only leaving the key out means that
                self.fail(at, gpu_model_problem(model) or "")
            req.gpu_model = model or ""
        if at := given("residency"):
            req.residency.extend(self.zones(spec["residency"], at))
        if at := given("max_clock_skew"):
            req.max_clock_skew_s = self.duration(spec["max_clock_skew"], at, 0.0)

    def expressions(self, value: Any, path: FieldPath) -> list[common_pb2.LabelExpr]:
        if not isinstance(value, list):
            self.fail(
                path,
                f"expected a list of label expressions such as ['tier = edge', 'gpu exists'], "
                f"got {self.kind(value, path)}",
            )
            return []
        return [self.label_expr(item, self.visit(path + (i,))) for i, item in enumerate(value)]

    def zones(self, value: Any, path: FieldPath) -> list[str]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of zone names such as [eu, eu-west], got {self.kind(value, path)}")
            return []
        if not value:  # the wire's "anywhere": only leaving the key out means that
            self.fail(path, "must list at least one zone (leave the key out to allow any zone)")
            return []
        return [self.text(item, path + (i,)) or "" for i, item in enumerate(value)]

    def affinities(self, value: Any, path: FieldPath, side: str, origin: TaskOrigin) -> list[common_pb2.Affinity]:
        """``prefer`` (weights > 0 on the wire) or ``avoid`` (< 0); one wire affinity per item,
        an unreadable part of it left empty (and silenced).
        """
        if not isinstance(value, list):
            self.fail(
                path,
                f"expected a list of label expressions (or {{match: EXPR, weight: W}} mappings), "
                f"got {self.kind(value, path)}",
            )
            return []
        sign = 1.0 if side == "prefer" else -1.0
        result: list[common_pb2.Affinity] = []
        for i, item in enumerate(value):
            item_path = self.visit(path + (i,))
            origin.affinities.append((side, i, isinstance(item, dict)))
            weight: float | None = DEFAULT_AFFINITY_WEIGHT
            if isinstance(item, dict):
                self.unknown_keys(item, item_path, _AFFINITY_KEYS)
                if item.get("weight") is not None:
                    weight = self.weight(item["weight"], self.visit(item_path + ("weight",)))
                if item.get("match") is None:
                    self.fail(self.visit(item_path + ("match",)), "required field is missing")
                    expr = common_pb2.LabelExpr()
                else:
                    expr = self.label_expr(item["match"], self.visit(item_path + ("match",)))
            elif item is None or isinstance(item, list):
                self.fail(
                    item_path,
                    f"expected a label expression such as 'tier = edge' or a mapping "
                    f"{{match: EXPR, weight: W}}, got {self.kind(item, item_path)}",
                )
                expr = common_pb2.LabelExpr()
            else:
                expr = self.label_expr(item, item_path)
            result.append(common_pb2.Affinity(expr=expr, weight=sign * weight if weight is not None else 0.0))
        return result

    def weight(self, value: Any, path: FieldPath) -> float | None:
        if is_number(value) and math.isfinite(value) and value > 0:
            return float(value)
        self.fail(path, f"expected a number greater than 0, got {self.kind(value, path)}")
        return None

    def retries(self, value: Any, path: FieldPath, task: common_pb2.TaskSpec, origin: TaskOrigin) -> None:
        # ``retries: N`` and ``retries: {max: N}`` both mean N retries after the first attempt.
        if isinstance(value, dict):
            self.unknown_keys(value, path, _RETRIES_KEYS)
            if value.get("max") is not None:
                origin.retries = ("retries", "max")
                task.max_attempts = self.retry_count(value["max"], self.visit(path + ("max",))) + 1
            if value.get("backoff") is not None:
                task.backoff_s = self.duration(value["backoff"], self.visit(path + ("backoff",)), task.backoff_s)
            return
        if is_int(value):
            task.max_attempts = self.retry_count(value, path) + 1
            return
        self.fail(
            path, f"expected a number of retries or a mapping {{max: N, backoff: 5s}}, got {self.kind(value, path)}"
        )

    def retry_count(self, value: Any, path: FieldPath) -> int:
        if is_int(value) and 0 <= value < _INT32_MAX:
            return int(value)
        self.fail(path, f"expected a non-negative whole number of retries, got {self.kind(value, path)}")
        return 0

    # ----------------------------------------------------------------- the validator's word

    def finish(self, spec: common_pb2.PipelineSpec | None) -> list[Problem]:
        """Run the validator on what ``pipeline`` read; return every problem found."""
        if spec is None:
            return self._report([], [])
        return self._report(check_spec(spec, input_order=[list(o.inputs) for o in self.origins]), spec.tasks)

    def finish_task(self, task: common_pb2.TaskSpec) -> list[Problem]:
        """Run the validator's one-task checks on the only task ``task`` read."""
        return self._report([SpecProblem(("tasks", 0) + p.path, p.message, p.code) for p in check_task(task)], [task])

    def _report(self, found: Sequence[SpecProblem], tasks: Sequence[common_pb2.TaskSpec]) -> list[Problem]:
        # The reader's problems and the validator's field problems, in reading order (at one
        # position, the validator's first: a task's name before what is wrong with its body);
        # then the problems between tasks, by task and field as written; then cycles; then the
        # model's (a shell task's extra arguments reach the wire form only from the SDK's model).
        fields: list[tuple[int, int, Problem]] = [(self._position(path), 1, p) for path, p in self.found]
        graph: list[tuple[tuple[int, int, int], Problem]] = []
        cycles: list[Problem] = []
        model = [(self._position(path[:2]), p) for path, p in self.model_found]
        for problem in found:
            path = self._spec_path(problem.path)
            if self.is_silenced(path) or path in self.replaced:
                continue
            located = self.problem(path, self._wording(problem, tasks))
            if problem.code == "cycle":
                cycles.append(located)
            elif problem.code == "shell-argv":
                model.append((self._position(path[:2]), located))
            elif problem.between_tasks:
                rank = GRAPH_FIELDS.index(str(problem.path[2]))
                graph.append(((self._position(path[:2]), rank, self._position(path)), located))
            else:
                fields.append((self._position(path), 0, located))
        fields.sort(key=lambda item: item[:2])
        graph.sort(key=lambda item: item[0])
        model.sort(key=lambda item: item[0])
        return [p for *_, p in fields] + [p for _, p in graph] + cycles + [p for _, p in model]

    def _spec_path(self, wire: FieldPath) -> FieldPath:
        if len(wire) > 1 and wire[0] == "tasks" and isinstance(wire[1], int):
            origin = self.origins[wire[1]]
            return ("tasks", origin.key) + (origin.spec_path(wire[2:]) if len(wire) > 2 else ())
        return wire

    def _position(self, path: FieldPath) -> int:
        """Reading position of a path, or of its nearest parent that was read."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, -1)

    def _wording(self, problem: SpecProblem, tasks: Sequence[common_pb2.TaskSpec]) -> str:
        """The validator's message, in terms of ``run`` where it speaks of ``argv``."""
        if problem.code == "empty-argv":
            return "must not be an empty list"
        if problem.code == "shell-argv":
            return f"a shell task holds exactly one command string, got {len(tasks[int(problem.path[1])].argv)}"
        if problem.code == "empty-program" and self.origins[int(problem.path[1])].shell:
            return "must not be empty"
        return problem.message
