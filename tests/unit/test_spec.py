"""Tests for outrider.spec: the one validator, run on wire specs (``validate_proto``,
``check_spec``, ``check_task``), ``parse_ref``, and its independence from PyYAML.
"""

from __future__ import annotations

import math

import pytest

from outrider.pipeline import Pipeline, SpecError
from outrider.spec import validate_proto
from outrider.v1 import common_pb2
from tests.helpers.specs import affinity, expr, good_proto

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
