"""Tests for outrider.pipeline: the YAML parser/validator, the model, the SDK and the proto checks."""
from __future__ import annotations

import math
import pickle
import textwrap
from pathlib import Path

import pytest
import yaml

from outrider.errors import InvalidArgument
from outrider.pipeline import (
    Pipeline,
    Problem,
    SpecError,
    Task,
    format_label_expr,
    load_pipeline,
    parse_label_expr,
    parse_pipeline,
    validate_proto,
)
from outrider.v1 import common_pb2

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


def parse(text: str, base_dir: Path | None = None) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text), filename="p.yaml", base_dir=base_dir)


def problems(text: str, base_dir: Path | None = None) -> list[str]:
    """Every problem of an invalid spec, as the ``FILE:LINE: field: message`` lines."""
    with pytest.raises(SpecError) as info:
        parse(text, base_dir)
    lines = str(info.value).splitlines()
    assert lines == [str(p) for p in info.value.problems]
    return lines


def only_problem(text: str, base_dir: Path | None = None) -> str:
    found = problems(text, base_dir)
    assert len(found) == 1, found
    return found[0]


def task_spec(body: str, extra: str = "") -> str:
    """A one-task pipeline whose task ``a`` has ``body`` (indented 4) after line 3."""
    return "name: p\ntasks:\n  a:\n" + textwrap.indent(textwrap.dedent(body), "    ") + extra


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


# --------------------------------------------------------------------------- one problem each, with its line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "p.yaml:1: the top level must be a mapping with 'name' and 'tasks', got a list"),
        ("", "p.yaml:1: the top level must be a mapping with 'name' and 'tasks', got an empty document"),
        ("name: p\ntasks:\n  a: {run: x}\nowner: me\n",
         "p.yaml:4: owner: unknown key 'owner' (allowed: name, code, tasks, priority, concurrency, tenant)"),
        ("tasks:\n  a: {run: x}\n", "p.yaml:1: name: required field is missing"),
        ("name: p\n", "p.yaml:1: tasks: required field is missing"),
        ("name: p\ntasks: {}\n", "p.yaml:2: tasks: must declare at least one task"),
        ("name: p\ntasks: [a]\n", "p.yaml:2: tasks: expected a mapping of task name to task, got a list"),
        ("name: my pipeline\ntasks:\n  a: {run: x}\n", "p.yaml:1: name: invalid pipeline name 'my pipeline'"),
        ("name: p\ntasks:\n  a: {run: x}\n  1st: {run: y}\n", "p.yaml:4: tasks.1st: invalid task name '1st'"),
        ("name: p\ntasks:\n  a.b: {run: x}\n", "p.yaml:3: tasks.a.b: invalid task name 'a.b'"),
        ("name: p\ntasks:\n  a:\n", "p.yaml:3: tasks.a: a task must be a mapping with at least 'run', got null"),
    ],
)
def test_document_problems(text: str, expected: str) -> None:
    assert only_problem(text).startswith(expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # unknown keys name the key and list the allowed ones
        ("run: x\nretry: 2\n",
         "p.yaml:5: tasks.a.retry: unknown key 'retry' (allowed: run, inputs, outputs, after, requires, "
         "retries, timeout, env, prefer, avoid); did you mean 'retries'?"),
        ("run: x\nrequires:\n  cpu: 2\n", "p.yaml:6: tasks.a.requires.cpu: unknown key 'cpu' "
                                          "(allowed: cpus, memory, gpus, disk, labels, match, gpu_memory, "
                                          "gpu_model, residency, max_clock_skew); did you mean 'cpus'?"),
        ("run: x\nretries: {max: 1, delay: 5s}\n", "p.yaml:5: tasks.a.retries.delay: unknown key 'delay' "
                                                   "(allowed: max, backoff)"),
        # run
        ("outputs: [o]\n", "p.yaml:3: tasks.a.run: required field is missing"),
        ("run: ''\n", "p.yaml:4: tasks.a.run: must not be empty"),
        ("run: '   '\n", "p.yaml:4: tasks.a.run: must not be empty"),
        ("run: []\n", "p.yaml:4: tasks.a.run: must not be an empty list"),
        ("run:\n", "p.yaml:4: tasks.a.run: expected a command string (run under /bin/sh -c) or a list"),
        ("run: {cmd: x}\n", "p.yaml:4: tasks.a.run: expected a command string"),
        ("run:\n  - python\n  - [x]\n", "p.yaml:6: tasks.a.run[1]: expected a string, got a list"),
        ("run: ['', x]\n", "p.yaml:4: tasks.a.run[0]: the program (first element) must not be empty"),
        # names
        ("run: x\noutputs: [ok, bad.name]\n", "p.yaml:5: tasks.a.outputs[1]: invalid output name 'bad.name'"),
        ("run: x\noutputs:\n  - m\n  - n\n  - m\n", "p.yaml:8: tasks.a.outputs[2]: duplicate output 'm' (also outputs[0])"),
        ("run: x\noutputs: model\n", "p.yaml:5: tasks.a.outputs: expected a list of output names, got 'model'"),
        # inputs and after (a second task b is appended below)
        ("run: x\ninputs:\n  2x: b.o\n", "p.yaml:6: tasks.a.inputs.2x: invalid input name '2x'"),
        ("run: x\ninputs: {i: b}\n", "p.yaml:5: tasks.a.inputs.i: expected 'task.output', got 'b'"),
        ("run: x\ninputs: {i: b.o.p}\n", "p.yaml:5: tasks.a.inputs.i: expected 'task.output', got 'b.o.p'"),
        ("run: x\ninputs: {i: c.o}\n", "p.yaml:5: tasks.a.inputs.i: no task named 'c'"),
        ("run: x\ninputs: {i: bb.o}\n", "p.yaml:5: tasks.a.inputs.i: no task named 'bb'; did you mean 'b'?"),
        ("run: x\ninputs: {i: b.oo}\n", "p.yaml:5: tasks.a.inputs.i: task 'b' has no output 'oo'; did you mean 'o'?"),
        ("run: x\ninputs: {i: b.model}\n", "p.yaml:5: tasks.a.inputs.i: task 'b' has no output 'model' (declared: o)"),
        ("run: x\ninputs: [b.o]\n", "p.yaml:5: tasks.a.inputs: expected a mapping of input name to 'task.output'"),
        ("run: x\nafter: [c]\n", "p.yaml:5: tasks.a.after[0]: no task named 'c'"),
        ("run: x\nafter: [b, b]\n", "p.yaml:5: tasks.a.after[1]: 'b' is listed twice (also after[0])"),
        # self dependencies
        ("run: x\noutputs: [o]\ninputs: {i: a.o}\n", "p.yaml:6: tasks.a.inputs.i: task 'a' cannot consume its own output 'o'"),
        ("run: x\nafter: [a]\n", "p.yaml:5: tasks.a.after[0]: task 'a' cannot run after itself"),
        # quantities; booleans are not numbers
        ("run: x\nrequires: {memory: 4XB}\n",
         "p.yaml:5: tasks.a.requires.memory: expected a size like 512MiB, 4GiB or 1000 (bytes), got '4XB'"),
        ("run: x\nrequires: {disk: -1}\n", "p.yaml:5: tasks.a.requires.disk: size must not be negative"),
        ("run: x\nrequires: {memory: true}\n", "p.yaml:5: tasks.a.requires.memory: expected a size like 4GiB, got True"),
        ("run: x\nrequires: {cpus: -1}\n", "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs, got -1"),
        ("run: x\nrequires: {cpus: yes}\n",
         "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs, got yes (a boolean)"),
        ("run: x\nrequires: {cpus: '2'}\n", "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs, got '2'"),
        ("run: x\nrequires: {cpus: .nan}\n", "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs"),
        ("run: x\nrequires: {gpus: 1.5}\n", "p.yaml:5: tasks.a.requires.gpus: expected a non-negative whole number of GPUs"),
        ("run: x\nrequires: {gpus: true}\n",
         "p.yaml:5: tasks.a.requires.gpus: expected a non-negative whole number of GPUs, got true (a boolean)"),
        ("run: x\nrequires: {gpus: -2}\n", "p.yaml:5: tasks.a.requires.gpus: expected a non-negative whole number of GPUs"),
        ("run: x\nrequires: 2\n", "p.yaml:5: tasks.a.requires: expected a mapping with cpus, memory, gpus, disk, labels"),
        # durations and retries
        ("run: x\ntimeout: soon\n", "p.yaml:5: tasks.a.timeout: expected a duration like 250ms, 30s, 5m or 1h30m, got 'soon'"),
        ("run: x\ntimeout: -5\n", "p.yaml:5: tasks.a.timeout: duration must not be negative"),
        ("run: x\ntimeout: .inf\n", "p.yaml:5: tasks.a.timeout: expected a finite duration"),
        ("run: x\nretries: {max: 2, backoff: 5x}\n", "p.yaml:5: tasks.a.retries.backoff: expected a duration like"),
        ("run: x\nretries: -1\n", "p.yaml:5: tasks.a.retries: expected a non-negative whole number of retries, got -1"),
        ("run: x\nretries: true\n", "p.yaml:5: tasks.a.retries: expected a number of retries or a mapping"),
        ("run: x\nretries: three\n", "p.yaml:5: tasks.a.retries: expected a number of retries or a mapping"),
        ("run: x\nretries: {max: 1.5}\n", "p.yaml:5: tasks.a.retries.max: expected a non-negative whole number of retries"),
        # env and labels
        ("run: x\nenv:\n  EPOCHS: ~\n", "p.yaml:6: tasks.a.env.EPOCHS: expected a string, got null"),
        ("run: x\nenv:\n  EPOCHS: [1]\n", "p.yaml:6: tasks.a.env.EPOCHS: expected a string, got a list"),
        ("run: x\nenv:\n  MY-VAR: x\n", "p.yaml:6: tasks.a.env.MY-VAR: invalid environment variable name 'MY-VAR'"),
        ("run: x\nenv: [A=1]\n", "p.yaml:5: tasks.a.env: expected a mapping of variable name to value, got a list"),
        ("run: x\nrequires:\n  labels: {zone: {a: b}}\n", "p.yaml:6: tasks.a.requires.labels.zone: expected a string, got a mapping"),
        ("run: x\nrequires:\n  labels: {'': b}\n", "p.yaml:6: tasks.a.requires.labels.: label names must be non-empty strings"),
    ],
)
def test_task_problems(body: str, expected: str) -> None:
    text = task_spec(body, extra="  b:\n    run: y\n    outputs: [o]\n")
    assert only_problem(text).startswith(expected)


def test_code_directory_problems_name_the_resolved_path(tmp_path: Path) -> None:
    found = only_problem("name: p\ncode: ./nope\ntasks:\n  a: {run: x}\n", base_dir=tmp_path)
    assert found == f"p.yaml:2: code: code directory {tmp_path / 'nope'} does not exist"
    (tmp_path / "file.txt").write_text("x")
    found = only_problem("name: p\ncode: file.txt\ntasks:\n  a: {run: x}\n", base_dir=tmp_path)
    assert found == f"p.yaml:2: code: code directory {tmp_path / 'file.txt'} is not a directory"


def test_cycle_names_its_path_and_points_at_the_closing_field() -> None:
    found = only_problem("""\
        name: p
        tasks:
          a:
            run: x
            inputs: {i: c.o}
            outputs: [o]
          b:
            run: y
            inputs: {i: a.o}
            outputs: [o]
          c:
            run: z
            after: [b]
            outputs: [o]
        """)
    # a feeds b, b runs before c, c feeds a: reported at the field of a that closes the loop.
    assert found == "p.yaml:5: tasks.a.inputs.i: dependency cycle: a -> b -> c -> a"


def test_two_task_cycle_through_after() -> None:
    found = only_problem("name: p\ntasks:\n  a: {run: x, after: [b]}\n  b: {run: y, after: [a]}\n")
    assert found == "p.yaml:3: tasks.a.after[0]: dependency cycle: a -> b -> a"


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


def test_long_chain_needs_no_recursion() -> None:
    lines = ["name: p", "tasks:"] + [f"  t{i}: {{run: x, after: [t{i + 1}]}}" for i in range(3000)]
    lines.append("  t3000: {run: x, after: [t0]}")
    found = only_problem("\n".join(lines) + "\n")
    assert found.startswith("p.yaml:3: tasks.t0.after[0]: dependency cycle: t0 -> t3000 -> t2999 -> ")
    assert found.endswith(" -> t1 -> t0")


# --------------------------------------------------------------------------- proto checks


def good_proto() -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name="p", tasks=[
        common_pb2.TaskSpec(name="a", argv=["echo a"], shell=True, outputs=["o"]),
        common_pb2.TaskSpec(name="b", argv=["python", "b.py"], inputs={"i": "a.o"}, after=["a"]),
    ])


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


def test_from_proto_refuses_a_bad_spec_unless_told_not_to_check() -> None:
    spec = good_proto()
    spec.tasks[1].inputs["i"] = "a.nope"
    with pytest.raises(SpecError) as info:
        Pipeline.from_proto(spec)
    assert str(info.value) == "<proto>: tasks[b].inputs.i: task 'a' has no output 'nope' (declared: o)"
    assert Pipeline.from_proto(spec, validate=False).tasks["b"].inputs == {"i": "a.nope"}


# --------------------------------------------------------------------------- placement: label expressions


def expr(key: str, op: str, *values: str) -> common_pb2.LabelExpr:
    return common_pb2.LabelExpr(key=key, op=op, values=list(values))


def affinity(text: str, weight: float) -> common_pb2.Affinity:
    return common_pb2.Affinity(expr=parse_label_expr(text), weight=weight)


@pytest.mark.parametrize(
    ("text", "key", "op", "values", "canonical"),
    [
        ("tier = edge", "tier", "=", ["edge"], "tier = edge"),
        ("tier=edge", "tier", "=", ["edge"], "tier = edge"),
        ("tier != edge", "tier", "!=", ["edge"], "tier != edge"),
        ("site in (plant-7, plant-9)", "site", "in", ["plant-7", "plant-9"], "site in (plant-7, plant-9)"),
        ("site in(plant-7,plant-9)", "site", "in", ["plant-7", "plant-9"], "site in (plant-7, plant-9)"),
        ("site not in (lab)", "site", "not in", ["lab"], "site not in (lab)"),
        ("site NOT  In (lab)", "site", "not in", ["lab"], "site not in (lab)"),
        ("gpu exists", "gpu", "exists", [], "gpu exists"),
        ("gpu not exists", "gpu", "not exists", [], "gpu not exists"),
        ("cuda >= 12.1", "cuda", ">=", ["12.1"], "cuda >= 12.1"),
        ("mem_gb <= 64", "mem_gb", "<=", ["64"], "mem_gb <= 64"),
        ("t <= -3.5e2", "t", "<=", ["-3.5e2"], "t <= -3.5e2"),
        ("  example.com/zone-a_1 = x  ", "example.com/zone-a_1", "=", ["x"], "example.com/zone-a_1 = x"),
        ('gpu_name = "NVIDIA H100"', "gpu_name", "=", ["NVIDIA H100"], 'gpu_name = "NVIDIA H100"'),
        ("note = ''", "note", "=", [""], 'note = ""'),
        ("v in ('a, b', \"c)\")", "v", "in", ["a, b", "c)"], 'v in ("a, b", "c)")'),
        (r'v = "say \"hi\" \\ bye"', "v", "=", ['say "hi" \\ bye'], r'v = "say \"hi\" \\ bye"'),
        ("v = in", "v", "=", ["in"], "v = in"),  # keywords are plain values after an operator
        ("v = plant:7@x", "v", "=", ["plant:7@x"], "v = plant:7@x"),
    ],
)
def test_parse_label_expr(text: str, key: str, op: str, values: list[str], canonical: str) -> None:
    parsed = parse_label_expr(text)
    assert isinstance(parsed, common_pb2.LabelExpr)
    assert (parsed.key, parsed.op, list(parsed.values)) == (key, op, values)
    assert format_label_expr(parsed) == canonical
    assert parse_label_expr(format_label_expr(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("tier", "the key 'tier' needs an operator: one of =, !=, in, not in, exists, not exists, >=, <="),
        ("tier == edge", "unknown operator '==' (use =, !=, in, not in, exists, not exists, >=, <=); did you mean '='?"),
        ("cuda > 12", "unknown operator '>' (use =, !=, in, not in, exists, not exists, >=, <=); did you mean '>='?"),
        ("cuda => 12", "unknown operator '=>'"),
        ("tier is edge", "unknown operator 'is'"),
        ("my key = x", "unknown operator 'key' (use =, !=, in, not in, exists, not exists, >=, <=); "
                       "label keys cannot contain spaces"),
        ("= edge", "expected a label key first, got '='"),
        ("(a) exists", "expected a label key first, got '('"),
        ("'tier' = edge", "expected a label key first, got 'tier'"),
        ("ti~er = edge", "invalid label key 'ti~er': use letters, digits, '.', '_', '/' and '-'"),
        ("tier =", "'=' needs a value after it"),
        ("tier = (edge)", "expected a value after '=', got '('"),
        ("tier = edge core", "'=' takes one value, got more after 'edge' (quote a value that has spaces; "
                             "for several values use 'KEY in (A, B)')"),
        ("cuda >= 12 13", "'>=' takes one value, got more after '12'"),
        ("cuda >= new", "'>=' compares numbers, got 'new' (write a number such as 12.1 or -3)"),
        ("mem_gb <= 64GB", "'<=' compares numbers, got '64GB'"),
        ("cuda >= 12.1.3", "'>=' compares numbers, got '12.1.3'"),
        ("cuda >= inf", "'>=' compares numbers, got 'inf'"),
        ("cuda >= ''", "'>=' compares numbers, got ''"),
        ("gpu exists yes", "'exists' takes no value, got 'yes'"),
        ("gpu not exists (a)", "'not exists' takes no value, got '('"),
        ("gpu not", "'not' must be followed by 'in' or 'exists', got nothing"),
        ("gpu not = a", "'not' must be followed by 'in' or 'exists', got '='"),
        ("site in plant-7", "'in' needs a list of values in parentheses, like 'KEY in (A, B)'"),
        ("site not in", "'not in' needs a list of values in parentheses"),
        ("site in ()", "'in' needs at least one value in its list"),
        ("site in (a,)", "expected a value after 'a', got ')'"),
        ("site in (, a)", "expected a value after '(', got ','"),
        ("site in (a b)", "expected ',' or ')' after 'a', got 'b'; quote a value that has spaces"),
        ("site in (a", "missing ')' at the end of the list"),
        ("site in (a,", "missing ')' at the end of the list"),
        ("site in (a) b", "unexpected 'b' after the list"),
        ("site in ('it''s')", "expected ',' or ')' after 'it', got 's'"),  # no '' escape: use "it's"
        ("tier = 'edge", "unterminated quoted value starting at \"'edge\""),
        ("tier = a\0b", "must not contain NUL characters"),
    ],
)
def test_parse_label_expr_errors_name_the_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_label_expr(text)
    assert str(info.value).startswith(f"invalid label expression {text!r}: {reason}")


def test_parse_label_expr_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="a label expression must be a string, got 3 \\(a number\\)"):
        parse_label_expr(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["", " ", "a b", "a,b", "(x)", "it's", 'say "hi"', "back\\slash", "=", "<=x", "naïve", "tab\there"]
)
def test_format_label_expr_quotes_what_needs_it_and_round_trips(value: str) -> None:
    for op in ("=", "!=", "in", "not in"):
        e = expr("k", op, value, "plain") if op in ("in", "not in") else expr("k", op, value)
        assert parse_label_expr(format_label_expr(e)) == e


def test_format_label_expr_never_raises_on_bad_wire_values() -> None:
    assert format_label_expr(expr("k", "~", "a", "b c")) == 'k ~ (a, "b c")'
    assert format_label_expr(expr("k", "", "a")) == "k ? a"
    assert format_label_expr(expr("k", "==", "a b")) == 'k == "a b"'
    assert format_label_expr(expr("k", "exists", "a")) == "k exists (a)"
    assert format_label_expr(expr("k", "=")) == "k = ()"
    assert format_label_expr(common_pb2.LabelExpr()) == " ? ()"


# --------------------------------------------------------------------------- placement: YAML


PLACEMENT = """\
name: p
priority: -3
concurrency: 2
tenant: spiffe://acme.ml/submitter/alice
tasks:
  a:
    run: x
    outputs: [o]
    requires:
      gpus: 1
      gpu_memory: 40GiB
      gpu_model: H100
      labels: {tier: edge}
      match: ["site in (plant-7, plant-9)", "cuda >= 12.1", gpu exists]
      residency: [eu, eu-west]
      max_clock_skew: 500ms
    prefer:
      - tier = edge
      - {match: "site = plant-7", weight: 2.5}
    avoid: ["power = battery", {match: "tier = lab", weight: 3}]
  b:
    run: y
    inputs: {i: a.o}
"""


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: p\npriority: high\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: priority: expected a whole number (higher runs first; may be negative), got 'high'"),
        ("name: p\npriority: 1.5\ntasks:\n  a: {run: x}\n", "p.yaml:2: priority: expected a whole number"),
        ("name: p\npriority: '5'\ntasks:\n  a: {run: x}\n", "p.yaml:2: priority: expected a whole number"),
        ("name: p\npriority: yes\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: priority: expected a whole number (higher runs first; may be negative), got yes (a boolean)"),
        ("name: p\npriority: 2147483648\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: priority: must be from -2147483648 to 2147483647, got 2147483648"),
        ("name: p\nconcurrency: 0\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: concurrency: expected a whole number of tasks at once, at least 1 (leave the key out for no "
         "limit), got 0 (a number)"),
        ("name: p\nconcurrency: -1\ntasks:\n  a: {run: x}\n", "p.yaml:2: concurrency: expected a whole number"),
        ("name: p\nconcurrency: 2.0\ntasks:\n  a: {run: x}\n", "p.yaml:2: concurrency: expected a whole number"),
        ("name: p\nconcurrency: true\ntasks:\n  a: {run: x}\n", "p.yaml:2: concurrency: expected a whole number"),
        ("name: p\nconcurrency: 2147483648\ntasks:\n  a: {run: x}\n", "p.yaml:2: concurrency: expected a whole"),
        ("name: p\ntenant: ''\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: tenant: must not be empty (leave the key out to use the submitter's identity)"),
        ("name: p\ntenant: team a\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: tenant: invalid tenant 'team a': use letters, digits, '.', '_', '-', ':', '/' and '@'"),
        ("name: p\ntenant: -x\ntasks:\n  a: {run: x}\n", "p.yaml:2: tenant: invalid tenant '-x'"),
        ("name: p\ntenant: [a]\ntasks:\n  a: {run: x}\n", "p.yaml:2: tenant: expected a string, got a list"),
        ("name: p\ntenant: " + "a" * 254 + "\ntasks:\n  a: {run: x}\n", "p.yaml:2: tenant: invalid tenant"),
        ("name: p\npriorty: 1\ntasks:\n  a: {run: x}\n",
         "p.yaml:2: priorty: unknown key 'priorty' (allowed: name, code, tasks, priority, concurrency, tenant); "
         "did you mean 'priority'?"),
    ],
)
def test_pipeline_level_problems(text: str, expected: str) -> None:
    assert only_problem(text).startswith(expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # gpu_memory, gpu_model
        ("run: x\nrequires: {gpu_memory: lots}\n",
         "p.yaml:5: tasks.a.requires.gpu_memory: expected a size like 512MiB, 4GiB or 1000 (bytes), got 'lots'"),
        ("run: x\nrequires: {gpu_memory: -1}\n", "p.yaml:5: tasks.a.requires.gpu_memory: size must not be negative"),
        ("run: x\nrequires: {gpu_memory: true}\n", "p.yaml:5: tasks.a.requires.gpu_memory: expected a size"),
        ("run: x\nrequires: {gpu_memory: 9EiB}\n", "p.yaml:5: tasks.a.requires.gpu_memory: expected a size"),
        ("run: x\nrequires:\n  gpu_model: ''\n",
         "p.yaml:6: tasks.a.requires.gpu_model: must not be empty (leave the key out to accept any GPU model)"),
        ("run: x\nrequires:\n  gpu_model: [H100]\n", "p.yaml:6: tasks.a.requires.gpu_model: expected a string, got a list"),
        ("run: x\nrequires:\n  gpu_model: \"H\\0\"\n", "p.yaml:6: tasks.a.requires.gpu_model: must not contain NUL"),
        ("run: x\nrequires:\n  gpu_mem: 1GiB\n",
         "p.yaml:6: tasks.a.requires.gpu_mem: unknown key 'gpu_mem' (allowed: cpus, memory, gpus, disk, labels, "
         "match, gpu_memory, gpu_model, residency, max_clock_skew); did you mean 'gpu_memory'?"),
        # match
        ("run: x\nrequires:\n  match:\n    - tier = edge\n    - tier == edge\n",
         "p.yaml:8: tasks.a.requires.match[1]: invalid label expression 'tier == edge': unknown operator '=='"),
        ("run: x\nrequires:\n  match: [cuda >= new]\n",
         "p.yaml:6: tasks.a.requires.match[0]: invalid label expression 'cuda >= new': '>=' compares numbers"),
        ("run: x\nrequires:\n  match: [gpu exists yes]\n",
         "p.yaml:6: tasks.a.requires.match[0]: invalid label expression 'gpu exists yes': 'exists' takes no value"),
        ("run: x\nrequires:\n  match: [site in ()]\n",
         "p.yaml:6: tasks.a.requires.match[0]: invalid label expression 'site in ()': 'in' needs at least one value"),
        ("run: x\nrequires:\n  match: ['ti~er = x']\n",
         "p.yaml:6: tasks.a.requires.match[0]: invalid label expression 'ti~er = x': invalid label key 'ti~er'"),
        ("run: x\nrequires:\n  match: [tier =]\n",
         "p.yaml:6: tasks.a.requires.match[0]: invalid label expression 'tier =': '=' needs a value"),
        ("run: x\nrequires:\n  match: [12]\n",
         "p.yaml:6: tasks.a.requires.match[0]: invalid label expression '12': the key '12' needs an operator"),
        ("run: x\nrequires:\n  match: [~]\n",
         "p.yaml:6: tasks.a.requires.match[0]: expected a label expression such as 'tier = edge', got null"),
        ("run: x\nrequires:\n  match: [{tier: edge}]\n",
         "p.yaml:6: tasks.a.requires.match[0]: expected a label expression such as 'tier = edge', got a mapping"),
        ("run: x\nrequires:\n  match: gpu exists\n",
         "p.yaml:6: tasks.a.requires.match: expected a list of label expressions such as ['tier = edge', "
         "'gpu exists'], got 'gpu exists'"),
        ("run: x\nrequires:\n  labels: [tier = edge]\n",
         "p.yaml:6: tasks.a.requires.labels: expected a mapping of label to value (label expressions such as "
         "'site in (a, b)' go under requires.match), got a list"),
        # residency
        ("run: x\nrequires:\n  residency: []\n",
         "p.yaml:6: tasks.a.requires.residency: must list at least one zone (leave the key out to allow any zone)"),
        ("run: x\nrequires:\n  residency: eu\n",
         "p.yaml:6: tasks.a.requires.residency: expected a list of zone names such as [eu, eu-west], got 'eu'"),
        ("run: x\nrequires:\n  residency: [eu, '']\n", "p.yaml:6: tasks.a.requires.residency[1]: zone names must not be empty"),
        ("run: x\nrequires:\n  residency:\n    - eu\n    - eu west\n",
         "p.yaml:8: tasks.a.requires.residency[1]: invalid zone name 'eu west': use letters, digits, '.', '_' and '-'"),
        ("run: x\nrequires:\n  residency: [eu/west]\n", "p.yaml:6: tasks.a.requires.residency[0]: invalid zone name"),
        ("run: x\nrequires:\n  residency: [eu, eu]\n",
         "p.yaml:6: tasks.a.requires.residency[1]: zone 'eu' is listed twice (also residency[0])"),
        ("run: x\nrequires:\n  residency: [[eu]]\n", "p.yaml:6: tasks.a.requires.residency[0]: expected a string, got a list"),
        # max_clock_skew
        ("run: x\nrequires: {max_clock_skew: soon}\n",
         "p.yaml:5: tasks.a.requires.max_clock_skew: expected a duration like 250ms, 30s, 5m or 1h30m, got 'soon'"),
        ("run: x\nrequires: {max_clock_skew: -1}\n", "p.yaml:5: tasks.a.requires.max_clock_skew: duration must not be negative"),
        ("run: x\nrequires: {max_clock_skew: .inf}\n", "p.yaml:5: tasks.a.requires.max_clock_skew: expected a finite duration"),
        # prefer / avoid
        ("run: x\nprefer: tier = edge\n",
         "p.yaml:5: tasks.a.prefer: expected a list of label expressions (or {match: EXPR, weight: W} mappings), "
         "got 'tier = edge'"),
        ("run: x\navoid: {match: tier = edge}\n", "p.yaml:5: tasks.a.avoid: expected a list of label expressions"),
        ("run: x\nprefer:\n  - tier = edge\n  - tier == lab\n",
         "p.yaml:7: tasks.a.prefer[1]: invalid label expression 'tier == lab': unknown operator '=='"),
        ("run: x\navoid:\n  - match: gpu exists yes\n",
         "p.yaml:6: tasks.a.avoid[0].match: invalid label expression 'gpu exists yes'"),
        ("run: x\nprefer:\n  - {match: tier = edge, weight: 0}\n",
         "p.yaml:6: tasks.a.prefer[0].weight: expected a number greater than 0, got 0 (a number)"),
        ("run: x\nprefer:\n  - {match: tier = edge, weight: -2}\n", "p.yaml:6: tasks.a.prefer[0].weight: expected a number greater than 0"),
        ("run: x\navoid:\n  - {match: tier = edge, weight: .inf}\n", "p.yaml:6: tasks.a.avoid[0].weight: expected a number greater than 0"),
        ("run: x\navoid:\n  - {match: tier = edge, weight: .nan}\n", "p.yaml:6: tasks.a.avoid[0].weight: expected a number greater than 0"),
        ("run: x\nprefer:\n  - {match: tier = edge, weight: '2'}\n",
         "p.yaml:6: tasks.a.prefer[0].weight: expected a number greater than 0, got '2'"),
        ("run: x\nprefer:\n  - {match: tier = edge, weight: yes}\n",
         "p.yaml:6: tasks.a.prefer[0].weight: expected a number greater than 0, got yes (a boolean)"),
        ("run: x\nprefer:\n  - {weight: 2}\n", "p.yaml:6: tasks.a.prefer[0].match: required field is missing"),
        ("run: x\nprefer:\n  - {match: tier = edge, weigth: 2}\n",
         "p.yaml:6: tasks.a.prefer[0].weigth: unknown key 'weigth' (allowed: match, weight); did you mean 'weight'?"),
        ("run: x\nprefer:\n  - ~\n",
         "p.yaml:6: tasks.a.prefer[0]: expected a label expression such as 'tier = edge' or a mapping "
         "{match: EXPR, weight: W}, got null"),
        ("run: x\nprefer:\n  - [tier = edge]\n", "p.yaml:6: tasks.a.prefer[0]: expected a label expression"),
        ("run: x\nprefer:\n  - {match: [a = b]}\n",
         "p.yaml:6: tasks.a.prefer[0].match: expected a label expression such as 'tier = edge', got a list"),
        ("run: x\nprefers: [a = b]\n",
         "p.yaml:5: tasks.a.prefers: unknown key 'prefers' (allowed: run, inputs, outputs, after, requires, retries, "
         "timeout, env, prefer, avoid); did you mean 'prefer'?"),
    ],
)
def test_placement_task_problems(body: str, expected: str) -> None:
    assert only_problem(task_spec(body)).startswith(expected)


def test_placement_problems_are_all_reported_at_once() -> None:
    found = problems("""\
        name: p
        priority: high
        concurrency: 0
        tenant: "has space"
        tasks:
          a:
            run: x
            requires:
              gpu_memory: lots
              gpu_model: ""
              match:
                - tier == edge
                - cuda >= new
              residency: [eu, "", eu]
              max_clock_skew: soon
            prefer:
              - tier = edge
              - {match: "site = x", weight: 0}
              - {weight: 2}
            avoid: power = battery
        """)
    assert [line.split(": ")[0:2] for line in found] == [
        ["p.yaml:2", "priority"],
        ["p.yaml:3", "concurrency"],
        ["p.yaml:4", "tenant"],
        ["p.yaml:9", "tasks.a.requires.gpu_memory"],
        ["p.yaml:10", "tasks.a.requires.gpu_model"],
        ["p.yaml:12", "tasks.a.requires.match[0]"],
        ["p.yaml:13", "tasks.a.requires.match[1]"],
        ["p.yaml:14", "tasks.a.requires.residency[1]"],
        ["p.yaml:14", "tasks.a.requires.residency[2]"],
        ["p.yaml:15", "tasks.a.requires.max_clock_skew"],
        ["p.yaml:18", "tasks.a.prefer[1].weight"],
        ["p.yaml:19", "tasks.a.prefer[2].match"],
        ["p.yaml:20", "tasks.a.avoid"],
    ]


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


# --------------------------------------------------------------------------- placement: proto checks


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
