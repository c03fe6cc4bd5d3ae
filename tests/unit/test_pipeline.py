"""Tests for outrider.pipeline: the SDK builder, the model, its conversions and graph helpers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from outrider.labels import format_label_expr, parse_label_expr
from outrider.pipeline import Pipeline, Problem, SpecError, Task, parse_pipeline
from outrider.spec import validate_proto
from outrider.v1 import common_pb2
from tests.helpers.specs import PLACEMENT, affinity, expr, good_proto, parse


def test_spec_error_pickles_with_its_problems() -> None:
    err = SpecError([Problem("f.yaml", 3, "tasks.a.run", "bad"), Problem("<sdk>", 0, "", "worse")])
    assert str(err) == "f.yaml:3: tasks.a.run: bad\n<sdk>: worse"
    copy = pickle.loads(pickle.dumps(err))
    assert copy.problems == err.problems and str(copy) == str(err)


# --------------------------------------------------------------------------- SDK builder


def build_sdk(code: Path | None = None) -> Pipeline:
    p = Pipeline("digits", code=code)
    ingest = p.task("ingest", run="python ingest.py", outputs=["raw"], requires={"labels": {"tier": "edge"}})
    feat = p.task("featurize", run=["python", "featurize.py"], inputs={"raw": ingest.output("raw")},
                  outputs=("features",))
    p.task("train", run=["python", "train.py"], inputs={"features": "featurize.features"}, outputs=["model"],
           requires={"cpus": 2, "memory": "4GiB", "gpus": 1, "disk": "10GiB"}, retries={"max": 2, "backoff": "5s"},
           timeout="30m", env={"EPOCHS": "10", "SEED": 0})
    p.task("report", run="echo done", after=["train", feat], retries=1)
    return p


def test_sdk_builds_the_same_model_as_yaml(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    p = build_sdk(tmp_path / "stages")
    p.validate()
    train = p.tasks["train"]
    assert (train.cpus, train.memory_bytes, train.gpus, train.disk_bytes) == (2.0, 4 * 2**30, 1, 10 * 2**30)
    assert (train.max_attempts, train.backoff_s, train.timeout_s) == (3, 5.0, 1800.0)
    assert train.env == {"EPOCHS": "10", "SEED": "0"}
    assert p.tasks["featurize"].outputs == ["features"]
    assert p.tasks["report"].after == ["train", "featurize"] and p.tasks["report"].max_attempts == 2
    # to_dict is a loadable YAML spec that gives back the same pipeline
    again = parse_pipeline(yaml.safe_dump(p.to_dict(), sort_keys=False))
    assert again.tasks == p.tasks and again.code_dir == p.code_dir


def test_sdk_round_trip_to_proto_and_back() -> None:
    p = build_sdk()
    msg = p.to_proto(code_digest="ab" * 32)
    assert isinstance(msg, common_pb2.PipelineSpec)
    assert msg.code_digest == "ab" * 32
    assert [t.name for t in msg.tasks] == ["ingest", "featurize", "train", "report"]
    train = msg.tasks[2]
    assert list(train.argv) == ["python", "train.py"] and not train.shell
    assert train.requires.memory_bytes == 4 * 2**30 and train.max_attempts == 3 and train.timeout_s == 1800.0
    assert validate_proto(msg) == []
    back = Pipeline.from_proto(common_pb2.PipelineSpec.FromString(msg.SerializeToString()))
    assert back.name == p.name and back.code_digest == "ab" * 32
    assert back.tasks == p.tasks
    assert back.to_proto() == msg


def test_sdk_task_errors_are_raised_at_the_call() -> None:
    p = Pipeline("p")
    p.task("a", run="x", outputs=["o"])
    with pytest.raises(SpecError) as info:
        p.task("a", run="y")
    assert str(info.value) == "<sdk>: tasks.a: a task named 'a' already exists"
    with pytest.raises(SpecError) as info:
        p.task("b.c", run=[], requires={"cpu": 1, "gpus": True, "memory": "4XB"}, env={"X": True}, timeout="soon")
    assert [pr.field for pr in info.value.problems] == [
        "tasks.b.c", "tasks.b.c.run", "tasks.b.c.requires.cpu", "tasks.b.c.requires.gpus",
        "tasks.b.c.requires.memory", "tasks.b.c.timeout", "tasks.b.c.env.X",
    ]
    assert all(pr.file == "<sdk>" and pr.line == 0 for pr in info.value.problems)
    assert list(p.tasks) == ["a"]  # a failed call adds nothing
    with pytest.raises(SpecError, match="has no output 'nope'"):
        p.tasks["a"].output("nope")


def test_sdk_validate_reports_every_cross_task_problem(tmp_path: Path) -> None:
    p = Pipeline("p", code=tmp_path / "missing")
    p.task("a", run="x", inputs={"i": "b.o"}, after=["zz"])
    p.task("b", run="y", inputs={"i": "a.nope"}, outputs=["o"])
    p.task("c", run="z", after=["c"])
    with pytest.raises(SpecError) as info:
        p.validate()
    assert str(info.value).splitlines() == [
        f"<sdk>: code: code directory {tmp_path / 'missing'} does not exist",
        "<sdk>: tasks.a.after[0]: no task named 'zz' (known: a, b, c)",
        "<sdk>: tasks.b.inputs.i: task 'a' has no output 'nope' (it declares no outputs)",
        "<sdk>: tasks.c.after[0]: task 'c' cannot run after itself",
        "<sdk>: tasks.a.inputs.i: dependency cycle: a -> b -> a",
    ]


def test_sdk_validate_checks_mutated_tasks() -> None:
    p = Pipeline("p")
    p.task("a", run="x")
    p.tasks["a"].gpus = -1
    p.tasks["b"] = Task(name="c", argv=["x", "y"], shell=True)
    with pytest.raises(SpecError) as info:
        p.validate()
    fields = [pr.field for pr in info.value.problems]
    assert fields == ["tasks.a.requires.gpus", "tasks.b", "tasks.b.run"]


# --------------------------------------------------------------------------- graph helpers


def test_topological_order_keeps_file_order_and_refuses_cycles() -> None:
    p = Pipeline("p")
    p.task("z", run="x", after=["y"])
    p.task("y", run="x")
    p.task("x", run="x")
    assert p.topological_order() == ["y", "z", "x"]
    p.tasks["y"].after = ["z"]
    with pytest.raises(SpecError, match=r"dependency cycle: z -> y -> z"):
        p.topological_order()
    with pytest.raises(KeyError):
        p.upstreams("nope")


# --------------------------------------------------------------------------- wire form


def test_from_proto_refuses_a_bad_spec_unless_told_not_to_check() -> None:
    spec = good_proto()
    spec.tasks[1].inputs["i"] = "a.nope"
    with pytest.raises(SpecError) as info:
        Pipeline.from_proto(spec)
    assert str(info.value) == "<proto>: tasks[b].inputs.i: task 'a' has no output 'nope' (declared: o)"
    assert Pipeline.from_proto(spec, validate=False).tasks["b"].inputs == {"i": "a.nope"}


# --------------------------------------------------------------------------- placement: SDK and round trips


def build_placement_sdk() -> Pipeline:
    p = Pipeline("p", priority=-3, concurrency=2, tenant="spiffe://acme.ml/submitter/alice")
    p.task("a", run="x", outputs=["o"],
           requires={"gpus": 1, "gpu_memory": "40GiB", "gpu_model": "H100", "labels": {"tier": "edge"},
                     "match": ["site in (plant-7, plant-9)", parse_label_expr("cuda >= 12.1"), "gpu exists"],
                     "residency": ("eu", "eu-west"), "max_clock_skew": "500ms"},
           prefer=["tier = edge", {"match": "site = plant-7", "weight": 2.5}],
           avoid=["power = battery", {"match": "tier = lab", "weight": 3}])
    p.task("b", run="y", inputs={"i": "a.o"})
    return p


def test_sdk_placement_matches_yaml() -> None:
    p = build_placement_sdk()
    p.validate()
    yaml_p = parse(PLACEMENT)
    assert p.tasks == yaml_p.tasks
    assert (p.priority, p.concurrency, p.tenant) == (yaml_p.priority, yaml_p.concurrency, yaml_p.tenant)
    assert p.to_proto() == yaml_p.to_proto()


def test_placement_round_trips_through_dict_and_proto() -> None:
    p = parse(PLACEMENT)
    text = yaml.safe_dump(p.to_dict(), sort_keys=False)
    again = parse_pipeline(text)
    assert again.tasks == p.tasks
    assert (again.priority, again.concurrency, again.tenant) == (-3, 2, "spiffe://acme.ml/submitter/alice")
    requires = p.tasks["a"].to_dict()["requires"]
    assert requires["match"] == ["site in (plant-7, plant-9)", "cuda >= 12.1", "gpu exists"]
    assert p.tasks["a"].to_dict()["prefer"] == ["tier = edge", {"match": "site = plant-7", "weight": 2.5}]
    assert p.tasks["a"].to_dict()["avoid"] == ["power = battery", {"match": "tier = lab", "weight": 3.0}]

    msg = p.to_proto(code_digest="cd" * 32)
    assert (msg.priority, msg.concurrency, msg.tenant) == (-3, 2, "spiffe://acme.ml/submitter/alice")
    req = msg.tasks[0].requires
    assert (req.gpu_memory_bytes, req.gpu_model, list(req.residency), req.max_clock_skew_s) == (
        40 * 2**30, "H100", ["eu", "eu-west"], 0.5)
    assert [format_label_expr(e) for e in req.expressions] == requires["match"]
    assert [(format_label_expr(af.expr), af.weight) for af in msg.tasks[0].affinities] == [
        ("tier = edge", 1.0), ("site = plant-7", 2.5), ("power = battery", -1.0), ("tier = lab", -3.0)]
    assert validate_proto(msg) == []
    back = Pipeline.from_proto(common_pb2.PipelineSpec.FromString(msg.SerializeToString()))
    assert back.tasks == p.tasks
    assert (back.priority, back.concurrency, back.tenant) == (p.priority, p.concurrency, p.tenant)
    assert back.to_proto() == msg


def test_from_proto_copies_expressions_and_affinities() -> None:
    msg = parse(PLACEMENT).to_proto()
    task = Task.from_proto(msg.tasks[0])
    msg.tasks[0].requires.expressions[0].values.append("plant-8")
    msg.tasks[0].affinities[0].weight = 9.0
    assert task.expressions[0] == expr("site", "in", "plant-7", "plant-9")
    assert task.affinities[0].weight == 1.0
    out = task.to_proto()
    task.expressions[0].key = "changed"
    assert out.requires.expressions[0].key == "site"


def test_from_proto_concurrency_zero_means_no_limit() -> None:
    spec = good_proto()
    assert Pipeline.from_proto(spec).concurrency is None
    spec.concurrency, spec.priority, spec.tenant = 4, -1, "vision"
    p = Pipeline.from_proto(spec)
    assert (p.priority, p.concurrency, p.tenant) == (-1, 4, "vision")


def test_to_dict_writes_non_unit_weights_as_mappings_and_keeps_order_per_side() -> None:
    t = Task(name="a", argv=["x"], shell=True, affinities=[
        affinity("a = 1", -2.0), affinity("b = 1", 1.0), affinity("c = 1", -1.0), affinity("d = 1", 0.25)])
    d = t.to_dict()
    assert d["prefer"] == ["b = 1", {"match": "d = 1", "weight": 0.25}]
    assert d["avoid"] == [{"match": "a = 1", "weight": 2.0}, "c = 1"]


def test_sdk_placement_errors_are_raised_at_the_call() -> None:
    p = Pipeline("p")
    with pytest.raises(SpecError) as info:
        p.task("a", run="x", requires={"gpu_memory": "lots", "match": ["tier == edge"], "residency": ["e u"],
                                       "max_clock_skew": "soon", "gpu_model": ""},
               prefer=[{"match": "a = b", "weight": 0}], avoid="tier = lab")
    assert [pr.field for pr in info.value.problems] == [
        "tasks.a.requires.match[0]", "tasks.a.requires.gpu_memory", "tasks.a.requires.gpu_model",
        "tasks.a.requires.residency[0]", "tasks.a.requires.max_clock_skew", "tasks.a.prefer[0].weight",
        "tasks.a.avoid",
    ]
    assert all(pr.file == "<sdk>" and pr.line == 0 for pr in info.value.problems)
    assert "invalid label expression 'tier == edge'" in str(info.value)
    assert p.tasks == {}


def test_sdk_validate_checks_pipeline_level_fields_and_mutated_placement() -> None:
    p = Pipeline("p", priority=True, concurrency=0, tenant="no spaces")  # type: ignore[arg-type]
    p.task("a", run="x")
    p.tasks["a"].expressions.append(expr("cuda", ">=", "new"))
    p.tasks["a"].residency.append("")
    p.tasks["a"].affinities.append(affinity("tier = edge", 0.0))
    p.tasks["a"].affinities.append(affinity("tier = lab", float("nan")))
    p.tasks["a"].max_clock_skew_s = -1.0
    with pytest.raises(SpecError) as info:
        p.validate()
    assert str(info.value).splitlines() == [
        "<sdk>: priority: expected a whole number (higher runs first; may be negative), got true (a boolean)",
        "<sdk>: concurrency: expected a whole number of tasks at once, at least 1 (leave the key out for no "
        "limit), got 0 (a number)",
        "<sdk>: tenant: invalid tenant 'no spaces': use letters, digits, '.', '_', '-', ':', '/' and '@', "
        "starting with a letter or digit, at most 253 characters",
        "<sdk>: tasks.a.requires.match[0]: invalid label expression 'cuda >= new': '>=' compares numbers, got "
        "'new' (write a number such as 12.1 or -3)",
        "<sdk>: tasks.a.requires.residency[0]: zone names must not be empty",
        "<sdk>: tasks.a.requires.max_clock_skew: duration must not be negative, got -1.0",
        "<sdk>: tasks.a.prefer[0].weight: expected a number greater than 0, got 0.0 (a number)",
        "<sdk>: tasks.a.prefer[1].weight: expected a number greater than 0, got nan (a number)",
    ]


# --------------------------------------------------------------------------- the public contract and the one validator


def test_every_public_name_is_still_importable_from_outrider_pipeline() -> None:
    # Users' scripts import these from outrider.pipeline; the split must not break them.
    import outrider.labels
    import outrider.pipeline
    import outrider.spec

    names = ["LABEL_KEY_PATTERN", "LABEL_OPS", "NAME_PATTERN", "Pipeline", "Problem", "SpecError", "TENANT_PATTERN",
             "Task", "ZONE_PATTERN", "format_label_expr", "load_pipeline", "parse_label_expr", "parse_pipeline",
             "validate_proto"]
    assert sorted(outrider.pipeline.__all__) == sorted(names)
    for name in names:
        assert getattr(outrider.pipeline, name) is not None
    # One definition each, re-exported.
    assert outrider.pipeline.validate_proto is outrider.spec.validate_proto
    assert outrider.pipeline.NAME_PATTERN is outrider.spec.NAME_PATTERN
    assert outrider.pipeline.parse_label_expr is outrider.labels.parse_label_expr
    assert outrider.pipeline.LABEL_KEY_PATTERN is outrider.spec.LABEL_KEY_PATTERN is outrider.labels.LABEL_KEY_PATTERN


def test_input_refs_split_references_with_parse_ref() -> None:
    task = Task(name="c", inputs={"x": "a.o", "y": "nodot", "z": "b.o-2"})
    assert task.input_refs() == {"x": ("a", "o"), "z": ("b", "o-2")}  # "nodot" is no reference
    assert task.upstreams() == {"a", "b"}


def test_the_model_keeps_maps_in_the_order_written() -> None:
    # The wire form's maps keep no order; the model built from it gets the order back.
    p = parse("name: p\ntasks:\n  a:\n    run: x\n    outputs: [o, p]\n  b:\n    run: y\n"
              "    inputs: {z: a.o, b: a.p, m: a.o}\n    env: {Z: '1', A: '2', M: '3'}\n"
              "    requires: {labels: {z: '1', a: '2'}}\n")
    b = p.tasks["b"]
    assert (list(b.inputs), list(b.env), list(b.labels)) == (["z", "b", "m"], ["Z", "A", "M"], ["z", "a"])
    sdk = Pipeline("p")
    t = sdk.task("t", run="x", env={"Z": "1", "A": "2"}, requires={"labels": {"z": "1", "a": "2"}})
    assert (list(t.env), list(t.labels)) == (["Z", "A"], ["z", "a"])


def test_validate_and_the_wire_road_find_the_same_problems() -> None:
    # Pipeline.validate reads the model into the wire form and runs the same validator as
    # validate_proto: what one refuses, the other refuses, each in its own terms.
    p = Pipeline("p")
    p.task("a", run="x", outputs=["o"], env={"A": "1"})
    p.task("b", run=["python", "b.py"], inputs={"i": "a.o"})
    p.tasks["a"].env["MY-VAR"] = "x"
    p.tasks["a"].labels["zone"] = "a\0"
    p.tasks["b"].inputs["j"] = "a.nope"
    p.tasks["b"].argv[0] = " "
    with pytest.raises(SpecError) as info:
        p.validate()
    assert [(pr.field, pr.message) for pr in info.value.problems] == [
        ("tasks.a.requires.labels.zone", "must not contain NUL characters"),
        ("tasks.a.env.MY-VAR", "invalid environment variable name 'MY-VAR': use letters, digits and '_', not "
                               "starting with a digit"),
        ("tasks.b.run[0]", "the program (first element) must not be empty"),
        ("tasks.b.inputs.j", "task 'a' has no output 'nope' (declared: o)"),
    ]
    assert validate_proto(p.to_proto()) == [
        "tasks[a].requires.labels.zone: must not contain NUL characters",
        "tasks[a].env.MY-VAR: invalid environment variable name 'MY-VAR': use letters, digits and '_', not "
        "starting with a digit",
        "tasks[b].argv[0]: the program (first element) must not be empty",
        "tasks[b].inputs.j: task 'a' has no output 'nope' (declared: o)",
    ]


def test_validate_words_a_shell_task_with_extra_arguments_in_sdk_terms() -> None:
    p = Pipeline("p")
    p.task("a", run="echo hi")
    p.tasks["a"].argv.append("extra")
    with pytest.raises(SpecError) as info:
        p.validate()
    assert str(info.value) == "<sdk>: tasks.a.run: a shell task holds exactly one command string, got 2"
    assert validate_proto(p.to_proto()) == [
        "tasks[a].argv: with shell=true argv holds exactly one command string, got 2"]
