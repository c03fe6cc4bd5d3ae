"""Tests for outrider.pipeline: the YAML parser/validator, the model, the SDK and the proto checks."""
from __future__ import annotations

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
    load_pipeline,
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
         "p.yaml:4: owner: unknown key 'owner' (allowed: name, code, tasks)"),
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
         "retries, timeout, env); did you mean 'retries'?"),
        ("run: x\nrequires:\n  cpu: 2\n", "p.yaml:6: tasks.a.requires.cpu: unknown key 'cpu' "
                                          "(allowed: cpus, memory, gpus, disk, labels); did you mean 'cpus'?"),
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
