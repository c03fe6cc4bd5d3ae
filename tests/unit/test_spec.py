"""Tests for outrider.spec: the one validator, run on wire specs (``validate_proto``,
``check_spec``, ``check_task``), ``parse_ref``, and its independence from PyYAML.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from outrider.pipeline import Pipeline, SpecError
from outrider.spec import SpecProblem, check_spec, check_task, parse_ref, upstream_names, validate_proto, wire_field
from outrider.v1 import common_pb2
from tests.helpers.specs import affinity, expr, good_proto

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- validate_proto


def test_validate_proto_accepts_a_good_spec() -> None:
    assert validate_proto(good_proto()) == []
    p = Pipeline.from_proto(good_proto())
    # no requires message -> YAML defaults; max_attempts 0 -> 1
    assert p.tasks["a"].cpus == 1.0 and p.tasks["a"].max_attempts == 1


def test_validate_proto_reports_field_paths() -> None:
    spec = common_pb2.PipelineSpec(name="", code_digest="xyz", tasks=[
        common_pb2.TaskSpec(
            name="train", argv=[], outputs=["m", "m", "bad.name"],
            inputs={"features": "featurize.features", "self": "train.m", "fmt": "nodot", "2in": "b.o"},
            after=["train", "ghost"],
            requires=common_pb2.Requirements(cpus=-1, memory_bytes=-1, disk_bytes=-2, gpus=-3),
            max_attempts=-1, backoff_s=float("inf"), timeout_s=-1, env={"BAD-KEY": "x", "OK": "a\0b"},
        ),
        common_pb2.TaskSpec(name="b", argv=["x", "y"], shell=True, outputs=["o"], inputs={"m": "train.m"}),
        common_pb2.TaskSpec(name="dup", argv=[""]),
        common_pb2.TaskSpec(name="dup", argv=["x"]),
        common_pb2.TaskSpec(name="", argv=["x"]),
        common_pb2.TaskSpec(name="has space", argv=["x"]),
    ])
    found = validate_proto(spec)
    expected_prefixes = [
        "name: pipeline name must not be empty",
        "code_digest: expected a lowercase sha256 hex digest",
        "tasks[train].argv: must not be empty",
        "tasks[train].requires.cpus: must be a non-negative number",
        "tasks[train].requires.memory_bytes: must not be negative",
        "tasks[train].requires.disk_bytes: must not be negative",
        "tasks[train].requires.gpus: must not be negative",
        "tasks[train].max_attempts: must not be negative",
        "tasks[train].backoff_s: must be a non-negative number of seconds",
        "tasks[train].timeout_s: must be a non-negative number of seconds",
        "tasks[train].env.BAD-KEY: invalid environment variable name",
        "tasks[train].env.OK: must not contain NUL characters",
        "tasks[b].argv: with shell=true argv holds exactly one command string, got 2",
        "tasks[2].argv[0]: the program (first element) must not be empty",
        "tasks[3].name: duplicate task name 'dup' (also tasks[2])",
        "tasks[4].name: task name must not be empty",
        "tasks[has space].name: invalid task name 'has space'",
        "tasks[train].outputs[1]: duplicate output 'm' (also outputs[0])",
        "tasks[train].outputs[2]: invalid output name 'bad.name'",
        "tasks[train].inputs.features: no task named 'featurize'",
        "tasks[train].inputs.self: task 'train' cannot consume its own output 'm'",
        "tasks[train].inputs.fmt: expected 'task.output', got 'nodot'",
        "tasks[train].inputs.2in: invalid input name '2in'",
        "tasks[train].after[0]: task 'train' cannot run after itself",
        "tasks[train].after[1]: no task named 'ghost'",
        "tasks[train].inputs.2in: dependency cycle: train -> b -> train",
    ]
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in found), (prefix, found)
    assert len(found) == len(expected_prefixes), found


def test_validate_proto_cycle_and_empty_pipeline() -> None:
    spec = good_proto()
    spec.tasks[0].after.append("b")
    assert validate_proto(spec) == ["tasks[a].after[0]: dependency cycle: a -> b -> a"]
    assert validate_proto(common_pb2.PipelineSpec(name="p")) == ["tasks: must declare at least one task"]


# --------------------------------------------------------------------------- placement


def test_validate_proto_checks_placement_fields() -> None:
    spec = good_proto()
    spec.concurrency = -1
    spec.tenant = "bad tenant"
    req = spec.tasks[0].requires
    req.gpu_memory_bytes = -1
    req.gpu_model = "H\0"
    req.max_clock_skew_s = -0.5
    req.expressions.extend([
        expr("tier", "==", "edge"),        # unknown op (a likely slip)
        expr("tier", "like", "edge"),      # unknown op
        expr("tier", "="),                 # missing value
        expr("site", "in"),                # missing values
        expr("tier", "=", "a", "b"),       # too many values
        expr("gpu", "exists", "yes"),      # exists takes none
        expr("cuda", ">=", "new"),         # not a number
        expr("cuda", "<=", "nan"),         # not a finite number
        expr("", "exists"),                # empty key
        expr("bad key", "exists"),         # invalid key
        expr("tier", "=", "a\0"),          # NUL
        expr("site", "not in", "a", ""),   # fine: an empty value is a value
    ])
    req.residency.extend(["eu", "", "eu", "e u"])
    spec.tasks[1].requires.max_clock_skew_s = float("nan")
    spec.tasks[1].affinities.extend([
        affinity("tier = edge", 0.0),
        affinity("tier = edge", float("inf")),
        affinity("tier = edge", float("nan")),
        common_pb2.Affinity(expr=expr("tier", "~", "x"), weight=-1.0),
        common_pb2.Affinity(weight=2.0),   # no expression at all
        affinity("tier = edge", -0.5),     # fine: avoid
    ])
    assert validate_proto(spec) == [
        "concurrency: must not be negative (0 means no limit), got -1",
        "tenant: invalid tenant 'bad tenant': use letters, digits, '.', '_', '-', ':', '/' and '@', starting "
        "with a letter or digit, at most 253 characters",
        "tasks[a].requires.gpu_memory_bytes: must not be negative, got -1",
        "tasks[a].requires.gpu_model: must not contain NUL characters",
        "tasks[a].requires.expressions[0]: invalid label expression 'tier == edge': unknown operator '==' "
        "(use =, !=, in, not in, exists, not exists, >=, <=); did you mean '='?",
        "tasks[a].requires.expressions[1]: invalid label expression 'tier like edge': unknown operator 'like' "
        "(use =, !=, in, not in, exists, not exists, >=, <=)",
        "tasks[a].requires.expressions[2]: invalid label expression 'tier = ()': '=' takes exactly one value, got 0",
        "tasks[a].requires.expressions[3]: invalid label expression 'site in ()': 'in' needs at least one value",
        "tasks[a].requires.expressions[4]: invalid label expression 'tier = (a, b)': '=' takes exactly one value, "
        "got 2",
        "tasks[a].requires.expressions[5]: invalid label expression 'gpu exists (yes)': 'exists' takes no value, "
        "got 1",
        "tasks[a].requires.expressions[6]: invalid label expression 'cuda >= new': '>=' compares numbers, got "
        "'new' (write a number such as 12.1 or -3)",
        "tasks[a].requires.expressions[7]: invalid label expression 'cuda <= nan': '<=' compares numbers, got "
        "'nan' (write a number such as 12.1 or -3)",
        "tasks[a].requires.expressions[8]: invalid label expression ' exists': the label key must not be empty",
        "tasks[a].requires.expressions[9]: invalid label expression 'bad key exists': invalid label key 'bad key': "
        "use letters, digits, '.', '_', '/' and '-' (pattern [A-Za-z0-9._/-]+)",
        "tasks[a].requires.expressions[10]: invalid label expression 'tier = a\\x00': values must not contain "
        "NUL characters",
        "tasks[a].requires.residency[1]: zone names must not be empty",
        "tasks[a].requires.residency[2]: zone 'eu' is listed twice (also residency[0])",
        "tasks[a].requires.residency[3]: invalid zone name 'e u': use letters, digits, '.', '_' and '-' "
        "(pattern [A-Za-z0-9._-]+)",
        "tasks[a].requires.max_clock_skew_s: must be a non-negative number of seconds (0 means no bound), got -0.5",
        "tasks[b].requires.max_clock_skew_s: must be a non-negative number of seconds (0 means no bound), got nan",
        "tasks[b].affinities[0].weight: must be a finite number other than 0 (> 0 prefers, < 0 avoids), got 0.0",
        "tasks[b].affinities[1].weight: must be a finite number other than 0 (> 0 prefers, < 0 avoids), got inf",
        "tasks[b].affinities[2].weight: must be a finite number other than 0 (> 0 prefers, < 0 avoids), got nan",
        "tasks[b].affinities[3].expr: invalid label expression 'tier ~ x': unknown operator '~' "
        "(use =, !=, in, not in, exists, not exists, >=, <=)",
        "tasks[b].affinities[4].expr: invalid label expression ' ? ()': the label key must not be empty",
    ]
    with pytest.raises(SpecError) as info:
        Pipeline.from_proto(spec)
    assert all(pr.file == "<proto>" for pr in info.value.problems) and len(info.value.problems) == 25


def test_validate_proto_accepts_good_placement_values() -> None:
    spec = good_proto()
    spec.priority, spec.concurrency, spec.tenant = -(2**31), 0, ""
    req = spec.tasks[0].requires
    req.expressions.extend([expr("a", op, *vals) for op, vals in [
        ("=", [""]), ("!=", ["x"]), ("in", ["x", "y"]), ("not in", ["x"]), ("exists", []), ("not exists", []),
        (">=", ["-1.5e3"]), ("<=", ["64"])]])
    req.residency.extend(["eu", "eu-west.1_a"])
    req.max_clock_skew_s = 0.0
    assert validate_proto(spec) == []
    assert math.isclose(float(req.expressions[6].values[0]), -1500.0)


# --------------------------------------------------------------------------- the validator, check by check


def one_task(**fields: object) -> common_pb2.PipelineSpec:
    """A valid one-task spec (task ``a``, output ``o``) with ``fields`` set on the task."""
    spec = common_pb2.PipelineSpec(name="p", tasks=[common_pb2.TaskSpec(name="a", argv=["x"], outputs=["o"])])
    task = spec.tasks[0]
    for name, value in fields.items():
        if name == "requires":
            task.requires.CopyFrom(value)  # type: ignore[arg-type]
        elif isinstance(value, dict):
            getattr(task, name).update(value)
        elif isinstance(value, list):
            del getattr(task, name)[:]
            getattr(task, name).extend(value)
        else:
            setattr(task, name, value)
    return spec


def req(**fields: object) -> common_pb2.Requirements:
    return common_pb2.Requirements(**{"cpus": 1.0, **fields})  # type: ignore[arg-type]


def with_tasks(*tasks: common_pb2.TaskSpec, **fields: object) -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name="p", tasks=list(tasks), **fields)  # type: ignore[arg-type]


T = common_pb2.TaskSpec


# One row per check the YAML road has (and the wire-only ones): the spec, then the one problem
# the validator finds: its wire path (tasks by index), its code and its message.
CHECKS = [
    # pipeline
    (common_pb2.PipelineSpec(name="my p", tasks=[T(name="a", argv=["x"])]), ("name",), "invalid-name",
     "invalid pipeline name 'my p': use letters, digits, '_' and '-', not starting with a digit or '-' "
     "(pattern [A-Za-z_][A-Za-z0-9_-]*)"),
    (common_pb2.PipelineSpec(name="", tasks=[T(name="a", argv=["x"])]), ("name",), "invalid-name",
     "pipeline name must not be empty"),
    (common_pb2.PipelineSpec(name="p"), ("tasks",), "no-tasks", "must declare at least one task"),
    (with_tasks(T(name="a", argv=["x"]), tenant="team a"), ("tenant",), "invalid-tenant",
     "invalid tenant 'team a': use letters, digits, '.', '_', '-', ':', '/' and '@', starting with a letter or "
     "digit, at most 253 characters"),
    (with_tasks(T(name="a", argv=["x"]), concurrency=-1), ("concurrency",), "out-of-range",
     "must not be negative (0 means no limit), got -1"),
    (with_tasks(T(name="a", argv=["x"]), code_digest="XYZ"), ("code_digest",), "invalid-digest",
     "expected a lowercase sha256 hex digest (64 characters)"),
    # task names
    (with_tasks(T(name="1st", argv=["x"])), ("tasks", 0, "name"), "invalid-name",
     "invalid task name '1st': use letters, digits, '_' and '-', not starting with a digit or '-' "
     "(pattern [A-Za-z_][A-Za-z0-9_-]*)"),
    (with_tasks(T(name="a", argv=["x"]), T(name="a", argv=["y"])), ("tasks", 1, "name"), "duplicate-task",
     "duplicate task name 'a' (also tasks[0])"),
    # argv (the YAML road's run)
    (one_task(argv=[]), ("tasks", 0, "argv"), "empty-argv", "must not be empty"),
    (one_task(argv=["x", "y"], shell=True), ("tasks", 0, "argv"), "shell-argv",
     "with shell=true argv holds exactly one command string, got 2"),
    (one_task(argv=["  ", "x"]), ("tasks", 0, "argv", 0), "empty-program",
     "the program (first element) must not be empty"),
    (one_task(argv=["   "], shell=True), ("tasks", 0, "argv", 0), "empty-program",
     "the program (first element) must not be empty"),
    (one_task(argv=["x", "a\0b"]), ("tasks", 0, "argv", 1), "nul", "must not contain NUL characters"),
    # resources
    (one_task(requires=req(cpus=-1.0)), ("tasks", 0, "requires", "cpus"), "out-of-range",
     "must be a non-negative number, got -1.0"),
    (one_task(requires=req(cpus=math.nan)), ("tasks", 0, "requires", "cpus"), "out-of-range",
     "must be a non-negative number, got nan"),
    (one_task(requires=req(memory_bytes=-1)), ("tasks", 0, "requires", "memory_bytes"), "out-of-range",
     "must not be negative, got -1"),
    (one_task(requires=req(disk_bytes=-1)), ("tasks", 0, "requires", "disk_bytes"), "out-of-range",
     "must not be negative, got -1"),
    (one_task(requires=req(gpus=-1)), ("tasks", 0, "requires", "gpus"), "out-of-range",
     "must not be negative, got -1"),
    (one_task(requires=req(gpu_memory_bytes=-1)), ("tasks", 0, "requires", "gpu_memory_bytes"), "out-of-range",
     "must not be negative, got -1"),
    # labels, GPU model, label expressions, zones, clock skew
    (one_task(requires=req(labels={" ": "x"})), ("tasks", 0, "requires", "labels", " "), "invalid-label-key",
     "label names must be non-empty strings, got ' '"),
    (one_task(requires=req(labels={"zone": "a\0"})), ("tasks", 0, "requires", "labels", "zone"), "nul",
     "must not contain NUL characters"),
    (one_task(requires=req(gpu_model="  ")), ("tasks", 0, "requires", "gpu_model"), "empty-gpu-model",
     "must not be empty (leave the key out to accept any GPU model)"),
    (one_task(requires=req(gpu_model="H\0")), ("tasks", 0, "requires", "gpu_model"), "nul",
     "must not contain NUL characters"),
    (one_task(requires=req(expressions=[expr("cuda", ">=", "new")])), ("tasks", 0, "requires", "expressions", 0),
     "invalid-label-expr",
     "invalid label expression 'cuda >= new': '>=' compares numbers, got 'new' (write a number such as 12.1 or -3)"),
    (one_task(requires=req(residency=["eu", ""])), ("tasks", 0, "requires", "residency", 1), "invalid-zone",
     "zone names must not be empty"),
    (one_task(requires=req(residency=["eu west"])), ("tasks", 0, "requires", "residency", 0), "invalid-zone",
     "invalid zone name 'eu west': use letters, digits, '.', '_' and '-' (pattern [A-Za-z0-9._-]+)"),
    (one_task(requires=req(residency=["eu", "eu"])), ("tasks", 0, "requires", "residency", 1), "duplicate-zone",
     "zone 'eu' is listed twice (also residency[0])"),
    (one_task(requires=req(max_clock_skew_s=-1.0)), ("tasks", 0, "requires", "max_clock_skew_s"), "out-of-range",
     "must be a non-negative number of seconds (0 means no bound), got -1.0"),
    # affinities (the YAML road's prefer and avoid)
    (one_task(affinities=[common_pb2.Affinity(expr=expr("tier", "==", "x"), weight=1.0)]),
     ("tasks", 0, "affinities", 0, "expr"), "invalid-label-expr",
     "invalid label expression 'tier == x': unknown operator '==' (use =, !=, in, not in, exists, not exists, "
     ">=, <=); did you mean '='?"),
    (one_task(affinities=[affinity("tier = edge", 0.0)]), ("tasks", 0, "affinities", 0, "weight"), "out-of-range",
     "must be a finite number other than 0 (> 0 prefers, < 0 avoids), got 0.0"),
    # retries and times
    (one_task(max_attempts=-1), ("tasks", 0, "max_attempts"), "out-of-range", "must not be negative, got -1"),
    (one_task(backoff_s=-1.0), ("tasks", 0, "backoff_s"), "out-of-range",
     "must be a non-negative number of seconds, got -1.0"),
    (one_task(timeout_s=math.inf), ("tasks", 0, "timeout_s"), "out-of-range",
     "must be a non-negative number of seconds, got inf"),
    # environment
    (one_task(env={"MY-VAR": "x"}), ("tasks", 0, "env", "MY-VAR"), "invalid-env-name",
     "invalid environment variable name 'MY-VAR': use letters, digits and '_', not starting with a digit"),
    (one_task(env={"A": "x\0"}), ("tasks", 0, "env", "A"), "nul", "must not contain NUL characters"),
    # between tasks
    (one_task(outputs=["ok", "bad.name"]), ("tasks", 0, "outputs", 1), "invalid-name",
     "invalid output name 'bad.name': use letters, digits, '_' and '-', not starting with a digit or '-' "
     "(pattern [A-Za-z_][A-Za-z0-9_-]*)"),
    (one_task(outputs=["m", "n", "m"]), ("tasks", 0, "outputs", 2), "duplicate-output",
     "duplicate output 'm' (also outputs[0])"),
    (with_tasks(T(name="a", argv=["x"], outputs=["o"]), T(name="b", argv=["x"], inputs={"2x": "a.o"})),
     ("tasks", 1, "inputs", "2x"), "invalid-name",
     "invalid input name '2x': use letters, digits, '_' and '-', not starting with a digit or '-' "
     "(pattern [A-Za-z_][A-Za-z0-9_-]*)"),
    (with_tasks(T(name="a", argv=["x"], outputs=["o"]), T(name="b", argv=["x"], inputs={"i": "a.o.p"})),
     ("tasks", 1, "inputs", "i"), "invalid-ref", "expected 'task.output', got 'a.o.p'"),
    (one_task(inputs={"i": "a.o"}), ("tasks", 0, "inputs", "i"), "self-reference",
     "task 'a' cannot consume its own output 'o'"),
    (with_tasks(T(name="a", argv=["x"], outputs=["o"]), T(name="b", argv=["x"], inputs={"i": "aa.o"})),
     ("tasks", 1, "inputs", "i"), "unknown-task", "no task named 'aa'; did you mean 'a'?"),
    (with_tasks(T(name="a", argv=["x"], outputs=["o"]), T(name="b", argv=["x"], inputs={"i": "a.model"})),
     ("tasks", 1, "inputs", "i"), "unknown-output", "task 'a' has no output 'model' (declared: o)"),
    (with_tasks(T(name="a", argv=["x"]), T(name="b", argv=["x"], inputs={"i": "a.o"})),
     ("tasks", 1, "inputs", "i"), "unknown-output", "task 'a' has no output 'o' (it declares no outputs)"),
    (one_task(after=["a"]), ("tasks", 0, "after", 0), "self-reference", "task 'a' cannot run after itself"),
    (one_task(after=["zz"]), ("tasks", 0, "after", 0), "unknown-task", "no task named 'zz' (known: a)"),
    (with_tasks(T(name="a", argv=["x"]), T(name="b", argv=["x"], after=["a", "a"])), ("tasks", 1, "after", 1),
     "duplicate-after", "'a' is listed twice (also after[0])"),
    (with_tasks(T(name="a", argv=["x"], after=["b"]), T(name="b", argv=["x"], after=["a"])), ("tasks", 0, "after", 0),
     "cycle", "dependency cycle: a -> b -> a"),
]


@pytest.mark.parametrize(("spec", "path", "code", "message"), CHECKS)
def test_check_spec_finds_each_problem_at_its_wire_path(
    spec: common_pb2.PipelineSpec, path: tuple[object, ...], code: str, message: str
) -> None:
    assert check_spec(spec) == [SpecProblem(path, message, code)]


def test_check_spec_accepts_every_good_value() -> None:
    assert check_spec(good_proto()) == []
    spec = one_task(
        requires=req(labels={"tier": "edge"}, gpu_model="H100", residency=["eu"], max_clock_skew_s=0.5),
        affinities=[affinity("tier = edge", 2.0), affinity("tier = lab", -1.0)],
        env={"A": ""},
        max_attempts=0,  # 0 reads as 1 on the wire
    )
    assert check_spec(spec) == []


def test_problems_between_tasks_come_last_and_say_so() -> None:
    spec = with_tasks(T(name="a", argv=[], after=["zz"]), concurrency=-1)
    found = check_spec(spec)
    assert [p.code for p in found] == ["out-of-range", "empty-argv", "unknown-task"]
    assert [p.between_tasks for p in found] == [False, False, True]


def test_check_task_checks_one_task_without_its_references() -> None:
    task = T(name="b.c", argv=[], inputs={"i": "nowhere.o"}, after=["ghost"], env={"X-Y": "1"})
    assert check_task(task) == [
        SpecProblem(("name",), "invalid task name 'b.c': use letters, digits, '_' and '-', not starting with a digit "
                    "or '-' (pattern [A-Za-z_][A-Za-z0-9_-]*)", "invalid-name"),
        SpecProblem(("argv",), "must not be empty", "empty-argv"),
        SpecProblem(("env", "X-Y"), "invalid environment variable name 'X-Y': use letters, digits and '_', not "
                    "starting with a digit", "invalid-env-name"),
    ]


def test_wire_field_names_tasks_by_name_where_unambiguous() -> None:
    spec = with_tasks(T(name="a", argv=["x"]), T(name="d"), T(name="d"), T(name="", argv=["x"]))
    assert wire_field(spec, SpecProblem(("tasks", 0, "argv", 1), "m", "nul")) == "tasks[a].argv[1]"
    assert wire_field(spec, SpecProblem(("tasks", 2, "name"), "m", "duplicate-task")) == "tasks[2].name"
    assert wire_field(spec, SpecProblem(("tasks", 3, "name"), "m", "invalid-name")) == "tasks[3].name"
    # A bad label key may be empty: the field printed is the map, the message quotes the key.
    key = SpecProblem(("tasks", 0, "requires", "labels", ""), "m", "invalid-label-key")
    assert wire_field(spec, key) == "tasks[a].requires.labels"
    value = SpecProblem(("tasks", 0, "requires", "labels", "zone"), "m", "nul")
    assert wire_field(spec, value) == "tasks[a].requires.labels.zone"


def test_validate_proto_reads_maps_by_key() -> None:
    # Proto maps keep no order (and upb's differs between processes): the report must not depend on it.
    env = {"C-": "1", "A-": "2", "B-": "3"}
    spec = with_tasks(T(name="a", argv=["x"], env=env, inputs={"z": "q.o", "b": "r.o", "m": "s.o"}))
    assert [line.split(":")[0] for line in validate_proto(spec)] == [
        "tasks[a].env.A-", "tasks[a].env.B-", "tasks[a].env.C-",
        "tasks[a].inputs.b", "tasks[a].inputs.m", "tasks[a].inputs.z",
    ]


def test_input_order_decides_where_a_cycle_is_reported() -> None:
    spec = with_tasks(T(name="a", argv=["x"], inputs={"z": "b.o", "a": "b.p"}),
                      T(name="b", argv=["x"], outputs=["o", "p"], after=["a"]))
    by_name = check_spec(spec)
    assert [(p.path, p.message) for p in by_name] == [(("tasks", 0, "inputs", "a"), "dependency cycle: a -> b -> a")]
    as_written = check_spec(spec, input_order=[["z", "a"], []])
    assert [(p.path, p.message) for p in as_written] == [(("tasks", 0, "inputs", "z"), "dependency cycle: a -> b -> a")]
    # An order that leaves inputs out (or names unknown ones) still checks every input.
    assert check_spec(spec, input_order=[["nope"]]) == by_name


# --------------------------------------------------------------------------- references and names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.model", ("train", "model")),
        ("a_1.out-2", ("a_1", "out-2")),
        ("train", None),
        ("train.", None),
        (".model", None),
        ("a.b.c", None),
        ("1st.o", None),
        ("a.-o", None),
        ("a b.o", None),
        ("a.o\0", None),
        ("", None),
    ],
)
def test_parse_ref(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_ref(text) == expected


def test_parse_ref_refuses_non_strings() -> None:
    assert parse_ref(None) is None  # type: ignore[arg-type]


def test_upstream_names_skip_inputs_that_are_not_references() -> None:
    task = T(name="c", inputs={"x": "a.o", "y": "nodot", "z": "b.o"}, after=["b", "d"])
    assert sorted(upstream_names(task)[:2]) == ["a", "b"]
    assert upstream_names(task)[2:] == ["d"]


def test_spec_and_labels_do_not_import_yaml() -> None:
    # The scheduler validates with outrider.spec alone: it must not drag PyYAML in.
    for modules in ("outrider.spec, outrider.labels", "outrider.spec_reader, outrider.spec_values"):
        code = f"import {modules}, sys; assert 'yaml' not in sys.modules, 'yaml imported'"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, (modules, result.stderr)


# --------------------------------------------------------------------------- name lengths (issue 8, item 5)


def test_names_have_a_length_limit_in_the_one_validator() -> None:
    """Names become file names on the scheduler (logs): the one validator bounds them, so the
    client refuses a long name before sending and the scheduler on receipt, with the same words."""
    from outrider.spec import MAX_NAME_LENGTH, name_problem

    assert MAX_NAME_LENGTH == 128
    assert name_problem("t" * MAX_NAME_LENGTH, "task name") is None
    problem = name_problem("t" * 10_000, "task name")
    assert problem is not None
    assert "10000 characters" in problem and "128" in problem and len(problem) < 200
    long = "n" * 300
    spec = common_pb2.PipelineSpec(name=long, tasks=[
        common_pb2.TaskSpec(name=long, argv=["true"], outputs=[long]),
        common_pb2.TaskSpec(name="b", argv=["true"], inputs={long: "x.y"}),
    ])
    paths = {(p.path, p.code) for p in check_spec(spec)}
    assert (("name",), "invalid-name") in paths
    assert (("tasks", 0, "name"), "invalid-name") in paths
    assert (("tasks", 0, "outputs", 0), "invalid-name") in paths
    assert (("tasks", 1, "inputs", long), "invalid-name") in paths
    assert all(len(text) < 400 for text in validate_proto(spec)), validate_proto(spec)


def test_the_sdk_refuses_a_long_task_name_before_sending() -> None:
    p = Pipeline("p")
    with pytest.raises(SpecError) as info:
        p.task("t" * 300, run="true")
    assert "300 characters" in str(info.value)
