"""Tests for outrider.spec_yaml and the YAML entry points: composition with lines, tags,
duplicate keys, anchors and merge keys, YAML errors, and whole valid specs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider.errors import InvalidArgument
from outrider.pipeline import SpecError, load_pipeline
from outrider.spec_yaml import read_yaml
from tests.helpers.specs import PLACEMENT, affinity, expr, only_problem, parse, problems, task_spec

REPO = Path(__file__).resolve().parents[2]


FULL = """\
name: digits
code: ./stages
tasks:
  ingest:
    run: python ingest.py
    outputs: [raw]
    requires: {labels: {tier: edge}}
  featurize:
    run: python featurize.py
    inputs: {raw: ingest.raw}
    outputs: [features]
  train:
    run: [python, train.py]
    inputs: {features: featurize.features}
    outputs: [model]
    requires: {cpus: 2, memory: 4GiB, gpus: 1, disk: 10GiB, labels: {accelerator: gpu}}
    retries: 2
    timeout: 30m
    env: {EPOCHS: "10"}
  evaluate:
    run: [python, evaluate.py]
    inputs: {model: train.model, features: featurize.features}
    outputs: [metrics]
    retries: {max: 3, backoff: 5s}
  report:
    run: echo done
    after: [evaluate]
"""


# --------------------------------------------------------------------------- valid specs


def test_full_example_parses_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    p = parse(FULL, base_dir=tmp_path)
    assert p.name == "digits"
    assert p.code_dir == tmp_path / "stages"
    assert list(p.tasks) == ["ingest", "featurize", "train", "evaluate", "report"]  # file order

    ingest = p.tasks["ingest"]
    assert ingest.argv == ["python ingest.py"] and ingest.shell
    assert ingest.cpus == 1.0 and ingest.memory_bytes == 0 and ingest.gpus == 0
    assert ingest.max_attempts == 1 and ingest.backoff_s == 1.0 and ingest.timeout_s == 0.0
    assert ingest.labels == {"tier": "edge"}

    train = p.tasks["train"]
    assert train.argv == ["python", "train.py"] and not train.shell
    assert train.inputs == {"features": "featurize.features"}
    assert train.input_refs() == {"features": ("featurize", "features")}
    assert (train.cpus, train.memory_bytes, train.gpus, train.disk_bytes) == (2.0, 4 * 2**30, 1, 10 * 2**30)
    assert train.labels == {"accelerator": "gpu"}
    assert train.max_attempts == 3 and train.retries == 2  # retries: 2 -> 3 attempts
    assert train.timeout_s == 1800.0
    assert train.env == {"EPOCHS": "10"}

    evaluate = p.tasks["evaluate"]
    assert evaluate.max_attempts == 4 and evaluate.backoff_s == 5.0  # {max: 3} -> 3 retries

    assert p.upstreams("evaluate") == {"train", "featurize"}
    assert p.upstreams("report") == {"evaluate"}
    assert p.downstreams("featurize") == {"train", "evaluate"}
    assert p.topological_order() == ["ingest", "featurize", "train", "evaluate", "report"]


def test_digits_example_loads() -> None:
    p = load_pipeline(REPO / "examples/digits/pipeline.yaml")
    assert p.code_dir == REPO / "examples/digits/stages"
    assert p.topological_order()[0] == "ingest"
    assert p.tasks["ingest"].env == {"DIGITS_CORRUPT": ""}
    p.validate()


def test_load_pipeline_resolves_code_against_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub" / "stages").mkdir(parents=True)
    spec = tmp_path / "sub" / "pipeline.yaml"
    spec.write_text("name: p\ncode: stages\ntasks:\n  a: {run: x}\n")
    monkeypatch.chdir(tmp_path)
    assert load_pipeline("sub/pipeline.yaml").code_dir == tmp_path / "sub" / "stages"


def test_load_pipeline_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline(tmp_path / "nope.yaml")
    assert "cannot read pipeline file" in str(info.value)


def test_plain_scalars_are_text_as_written() -> None:
    p = parse("""\
        name: p
        tasks:
          on:
            run: true
          yes:
            run: [echo, yes, 1.10, 007, 2024-01-01]
            after: [on]
            env: {VERSION: 1.10, DEBUG: yes, N: 10}
            requires: {labels: {zone: 07}}
        """)
    assert list(p.tasks) == ["on", "yes"]  # keys are text: not True
    assert p.tasks["on"].argv == ["true"]
    assert p.tasks["yes"].argv == ["echo", "yes", "1.10", "007", "2024-01-01"]
    assert p.tasks["yes"].env == {"VERSION": "1.10", "DEBUG": "yes", "N": "10"}
    assert p.tasks["yes"].labels == {"zone": "07"}


def test_merge_keys_and_anchors() -> None:
    p = parse("""\
        x-gpu: &gpu {cpus: 2, memory: 1GiB, gpus: 1}
        name: p
        tasks:
          a:
            run: x
            requires:
              <<: *gpu
              cpus: 4
          b:
            run: y
            requires: *gpu
          c:
            run: z
            requires:
              <<: [{cpus: 3}, {cpus: 9, disk: 1KiB}]
        """)
    assert (p.tasks["a"].cpus, p.tasks["a"].memory_bytes, p.tasks["a"].gpus) == (4.0, 2**30, 1)
    assert (p.tasks["b"].cpus, p.tasks["b"].gpus) == (2.0, 1)
    assert (p.tasks["c"].cpus, p.tasks["c"].disk_bytes) == (3.0, 1024)


def test_null_optional_keys_mean_absent() -> None:
    p = parse(task_spec("run: x\noutputs:\ninputs:\nenv:\nrequires:\n"))
    assert p.tasks["a"].outputs == [] and p.tasks["a"].env == {}


# --------------------------------------------------------------------------- duplicates, tags, YAML itself


def test_duplicate_keys_are_reported_at_every_level() -> None:
    found = problems("""\
        name: p
        name: q
        tasks:
          a:
            run: x
            run: y
            env:
              A: "1"
              A: "2"
          a:
            run: z
        """)
    assert found == [
        "p.yaml:2: name: duplicate key 'name' (first on line 1)",
        "p.yaml:6: tasks.a.run: duplicate key 'run' (first on line 5)",
        "p.yaml:9: tasks.a.env.A: duplicate key 'A' (first on line 8)",
        "p.yaml:10: tasks.a: duplicate key 'a' (first on line 4)",
    ]


def test_many_problems_are_reported_at_once_in_line_order() -> None:
    with pytest.raises(SpecError) as info:
        parse("""\
            name: p
            tasks:
              a:
                run: []
                outputs: [o, o]
                requires: {memory: lots, gpus: -1}
              b:
                inputs: {i: a.missing}
                timeout: forever
                colour: blue
            """)
    err = info.value
    assert isinstance(err, InvalidArgument) and err.code == "INVALID_ARGUMENT"
    assert [(p.line, p.field) for p in err.problems] == [
        (4, "tasks.a.run"),
        (5, "tasks.a.outputs[1]"),
        (6, "tasks.a.requires.gpus"),
        (6, "tasks.a.requires.memory"),
        (7, "tasks.b.run"),
        (8, "tasks.b.inputs.i"),
        (9, "tasks.b.timeout"),
        (10, "tasks.b.colour"),
    ]
    assert all(p.file == "p.yaml" for p in err.problems)
    assert str(err).splitlines()[0] == "p.yaml:4: tasks.a.run: must not be an empty list"
    assert len(str(err).splitlines()) == 8


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object:os.system {{}}",
        "!!python/name:os.system",
        "!!python/tuple [a, b]",
        "!!set {{a, b}}",
        "!custom x",
    ],
)
def test_yaml_tags_beyond_plain_data_are_refused(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "pwned"
    found = only_problem(task_spec(f"run: {value.format(marker=marker)}\n"))
    assert found.startswith("p.yaml:4: tasks.a.run: YAML tag ")
    assert "is not allowed" in found
    assert not marker.exists()


def test_yaml_python_object_on_a_task_is_refused() -> None:
    found = only_problem("name: p\ntasks:\n  a: !!python/object:outrider.pipeline.Task {name: a}\n")
    assert found.startswith("p.yaml:3: tasks.a: YAML tag !!python/object:outrider.pipeline.Task is not allowed")


def test_yaml_syntax_error_has_a_line() -> None:
    found = only_problem("name: p\ntasks:\n  a: {run: x\n  b: y\n")
    assert found.startswith("p.yaml:") and "invalid YAML" in found
    assert only_problem("name: p\n\x00").startswith("p.yaml:2: invalid YAML:")
    assert "invalid YAML" in only_problem("name: p\n---\nname: q\n")  # one document only


def test_recursive_alias_and_alias_bombs_are_refused() -> None:
    assert "recursive YAML alias" in only_problem("name: p\ntasks:\n  a: &a\n    run: [x, *a]\n")
    bomb = "name: p\nl0: &l0 [a, a, a, a, a, a, a, a, a, a]\n"
    bomb += "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8))
    bomb += "tasks: {a: {run: x}}\n"
    assert "document too large" in only_problem(bomb)


# --------------------------------------------------------------------------- placement


def test_placement_fields_parse() -> None:
    p = parse(PLACEMENT)
    assert (p.priority, p.concurrency, p.tenant) == (-3, 2, "spiffe://acme.ml/submitter/alice")
    a = p.tasks["a"]
    assert a.gpu_memory_bytes == 40 * 2**30 and a.gpu_model == "H100"
    assert a.labels == {"tier": "edge"}  # plain labels still mean equality, stored as before
    assert a.expressions == [expr("site", "in", "plant-7", "plant-9"), expr("cuda", ">=", "12.1"),
                             expr("gpu", "exists")]
    assert a.residency == ["eu", "eu-west"]
    assert a.max_clock_skew_s == 0.5
    assert a.affinities == [affinity("tier = edge", 1.0), affinity("site = plant-7", 2.5),
                            affinity("power = battery", -1.0), affinity("tier = lab", -3.0)]


def test_placement_defaults() -> None:
    p = parse("name: p\ntasks:\n  a: {run: x}\n")
    assert (p.priority, p.concurrency, p.tenant) == (0, None, "")
    a = p.tasks["a"]
    assert (a.gpu_memory_bytes, a.gpu_model, a.expressions, a.residency, a.max_clock_skew_s, a.affinities) == (
        0, "", [], [], 0.0, [])
    msg = p.to_proto()
    assert (msg.priority, msg.concurrency, msg.tenant) == (0, 0, "")
    assert not msg.tasks[0].affinities and not msg.tasks[0].requires.expressions
    assert "priority" not in p.to_dict() and "prefer" not in p.tasks["a"].to_dict()


def test_placement_values_at_their_limits() -> None:
    p = parse("""\
        name: p
        priority: -2147483648
        concurrency: 2147483647
        tenant: team-vision_2
        tasks:
          a:
            run: x
            requires:
              gpu_memory: 0
              gpu_model: 4090
              residency: [07, eu.west_1]
              max_clock_skew: 0
              match: []
            prefer:
            avoid: []
        """)
    assert (p.priority, p.concurrency, p.tenant) == (-(2**31), 2**31 - 1, "team-vision_2")
    a = p.tasks["a"]
    assert a.gpu_model == "4090" and a.residency == ["07", "eu.west_1"]  # plain scalars are text as written
    assert a.max_clock_skew_s == 0.0 and a.expressions == [] and a.affinities == []
    assert parse("name: p\ntenant: alice@example.org\ntasks:\n  a: {run: x}\n").tenant == "alice@example.org"
    assert parse("name: p\npriority: 7\ntasks:\n  a: {run: x}\n").priority == 7


def test_placement_fields_merge_from_anchors() -> None:
    p = parse("""\
        x-edge: &edge {residency: [eu], match: [tier = edge], max_clock_skew: 2s}
        x-prefs: &prefs [site = plant-7, {match: site = plant-9, weight: 0.5}]
        name: p
        tasks:
          a:
            run: x
            requires: {<<: *edge, gpus: 1}
            prefer: *prefs
          b:
            run: y
            requires: *edge
            avoid: *prefs
        """)
    assert p.tasks["a"].residency == p.tasks["b"].residency == ["eu"]
    assert p.tasks["a"].expressions == [expr("tier", "=", "edge")]
    assert [af.weight for af in p.tasks["a"].affinities] == [1.0, 0.5]
    assert [af.weight for af in p.tasks["b"].affinities] == [-1.0, -0.5]


# --------------------------------------------------------------------------- the wire form


def test_read_yaml_gives_the_wire_form_that_the_model_sends(tmp_path: Path) -> None:
    reader, spec, found = read_yaml(PLACEMENT, "p.yaml", tmp_path)
    assert found == [] and reader is not None and spec is not None
    assert spec == parse(PLACEMENT).to_proto()
    assert [origin.key for origin in reader.origins] == ["a", "b"]


def test_read_yaml_reports_what_is_not_yaml_without_a_wire_form(tmp_path: Path) -> None:
    reader, spec, found = read_yaml("name: [p\n", "p.yaml", tmp_path)
    assert (reader, spec) == (None, None)
    assert len(found) == 1 and str(found[0]).startswith("p.yaml:2: invalid YAML:")
