"""Tests for outrider.spec_reader: reading spec data into the wire form and reporting every
problem (the reader's and the validator's) at the field and line the user wrote.

The spec data comes from YAML text here, because that is where lines are.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider.spec_reader import TaskOrigin
from tests.helpers.specs import only_problem, problems, task_spec

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
         "retries, timeout, env, secret_env, prefer, avoid); did you mean 'retries'?"),
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
        ("run: x\noutputs:\n  - m\n  - n\n  - m\n",
         "p.yaml:8: tasks.a.outputs[2]: duplicate output 'm' (also outputs[0])"),
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
        ("run: x\noutputs: [o]\ninputs: {i: a.o}\n",
         "p.yaml:6: tasks.a.inputs.i: task 'a' cannot consume its own output 'o'"),
        ("run: x\nafter: [a]\n", "p.yaml:5: tasks.a.after[0]: task 'a' cannot run after itself"),
        # quantities; booleans are not numbers
        ("run: x\nrequires: {memory: 4XB}\n",
         "p.yaml:5: tasks.a.requires.memory: expected a size like 512MiB, 4GiB or 1000 (bytes), got '4XB'"),
        ("run: x\nrequires: {disk: -1}\n", "p.yaml:5: tasks.a.requires.disk: size must not be negative"),
        ("run: x\nrequires: {memory: true}\n",
         "p.yaml:5: tasks.a.requires.memory: expected a size like 4GiB, got True"),
        ("run: x\nrequires: {cpus: -1}\n",
         "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs, got -1"),
        ("run: x\nrequires: {cpus: yes}\n",
         "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs, got yes (a boolean)"),
        ("run: x\nrequires: {cpus: '2'}\n",
         "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs, got '2'"),
        ("run: x\nrequires: {cpus: .nan}\n", "p.yaml:5: tasks.a.requires.cpus: expected a non-negative number of CPUs"),
        ("run: x\nrequires: {gpus: 1.5}\n",
         "p.yaml:5: tasks.a.requires.gpus: expected a non-negative whole number of GPUs"),
        ("run: x\nrequires: {gpus: true}\n",
         "p.yaml:5: tasks.a.requires.gpus: expected a non-negative whole number of GPUs, got true (a boolean)"),
        ("run: x\nrequires: {gpus: -2}\n",
         "p.yaml:5: tasks.a.requires.gpus: expected a non-negative whole number of GPUs"),
        ("run: x\nrequires: 2\n",
         "p.yaml:5: tasks.a.requires: expected a mapping with cpus, memory, gpus, disk, labels"),
        # durations and retries
        ("run: x\ntimeout: soon\n",
         "p.yaml:5: tasks.a.timeout: expected a duration like 250ms, 30s, 5m or 1h30m, got 'soon'"),
        ("run: x\ntimeout: -5\n", "p.yaml:5: tasks.a.timeout: duration must not be negative"),
        ("run: x\ntimeout: .inf\n", "p.yaml:5: tasks.a.timeout: expected a finite duration"),
        ("run: x\nretries: {max: 2, backoff: 5x}\n", "p.yaml:5: tasks.a.retries.backoff: expected a duration like"),
        ("run: x\nretries: -1\n", "p.yaml:5: tasks.a.retries: expected a non-negative whole number of retries, got -1"),
        ("run: x\nretries: true\n", "p.yaml:5: tasks.a.retries: expected a number of retries or a mapping"),
        ("run: x\nretries: three\n", "p.yaml:5: tasks.a.retries: expected a number of retries or a mapping"),
        ("run: x\nretries: {max: 1.5}\n",
         "p.yaml:5: tasks.a.retries.max: expected a non-negative whole number of retries"),
        # env and labels
        ("run: x\nenv:\n  EPOCHS: ~\n", "p.yaml:6: tasks.a.env.EPOCHS: expected a string, got null"),
        ("run: x\nenv:\n  EPOCHS: [1]\n", "p.yaml:6: tasks.a.env.EPOCHS: expected a string, got a list"),
        ("run: x\nenv:\n  MY-VAR: x\n", "p.yaml:6: tasks.a.env.MY-VAR: invalid environment variable name 'MY-VAR'"),
        ("run: x\nenv: [A=1]\n", "p.yaml:5: tasks.a.env: expected a mapping of variable name to value, got a list"),
        ("run: x\nrequires:\n  labels: {zone: {a: b}}\n",
         "p.yaml:6: tasks.a.requires.labels.zone: expected a string, got a mapping"),
        ("run: x\nrequires:\n  labels: {'': b}\n",
         "p.yaml:6: tasks.a.requires.labels.: label names must be non-empty strings"),
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


def test_long_chain_needs_no_recursion() -> None:
    lines = ["name: p", "tasks:"] + [f"  t{i}: {{run: x, after: [t{i + 1}]}}" for i in range(3000)]
    lines.append("  t3000: {run: x, after: [t0]}")
    found = only_problem("\n".join(lines) + "\n")
    assert found.startswith("p.yaml:3: tasks.t0.after[0]: dependency cycle: t0 -> t3000 -> t2999 -> ")
    assert found.endswith(" -> t1 -> t0")


# --------------------------------------------------------------------------- placement


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
        ("run: x\nrequires:\n  gpu_model: [H100]\n",
         "p.yaml:6: tasks.a.requires.gpu_model: expected a string, got a list"),
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
        ("run: x\nrequires:\n  residency: [eu, '']\n",
         "p.yaml:6: tasks.a.requires.residency[1]: zone names must not be empty"),
        ("run: x\nrequires:\n  residency:\n    - eu\n    - eu west\n",
         "p.yaml:8: tasks.a.requires.residency[1]: invalid zone name 'eu west': use letters, digits, '.', '_' and '-'"),
        ("run: x\nrequires:\n  residency: [eu/west]\n", "p.yaml:6: tasks.a.requires.residency[0]: invalid zone name"),
        ("run: x\nrequires:\n  residency: [eu, eu]\n",
         "p.yaml:6: tasks.a.requires.residency[1]: zone 'eu' is listed twice (also residency[0])"),
        ("run: x\nrequires:\n  residency: [[eu]]\n",
         "p.yaml:6: tasks.a.requires.residency[0]: expected a string, got a list"),
        # max_clock_skew
        ("run: x\nrequires: {max_clock_skew: soon}\n",
         "p.yaml:5: tasks.a.requires.max_clock_skew: expected a duration like 250ms, 30s, 5m or 1h30m, got 'soon'"),
        ("run: x\nrequires: {max_clock_skew: -1}\n",
         "p.yaml:5: tasks.a.requires.max_clock_skew: duration must not be negative"),
        ("run: x\nrequires: {max_clock_skew: .inf}\n",
         "p.yaml:5: tasks.a.requires.max_clock_skew: expected a finite duration"),
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
        ("run: x\nprefer:\n  - {match: tier = edge, weight: -2}\n",
         "p.yaml:6: tasks.a.prefer[0].weight: expected a number greater than 0"),
        ("run: x\navoid:\n  - {match: tier = edge, weight: .inf}\n",
         "p.yaml:6: tasks.a.avoid[0].weight: expected a number greater than 0"),
        ("run: x\navoid:\n  - {match: tier = edge, weight: .nan}\n",
         "p.yaml:6: tasks.a.avoid[0].weight: expected a number greater than 0"),
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
         "timeout, env, secret_env, prefer, avoid); did you mean 'prefer'?"),
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


# ---------------------------------------------------------------- the validator's problems, in the user's terms


def test_problems_found_only_by_the_validator_come_back_at_their_yaml_line() -> None:
    # None of these is a parse problem: the front end writes the wire form, the validator
    # refuses it, and the report names the YAML field (run, memory, match, prefer...) and line.
    assert problems("""\
        name: p
        tasks:
          a:
            run: ['   ', x]
            outputs: [m, m]
            requires:
              gpu_model: '  '
              labels:
                zone: "a\\0"
              residency: [eu, eu]
            env:
              MY-VAR: x
          b:
            run: '  '
            inputs:
              i: a.missing
            after: [b]
        """) == [
        "p.yaml:4: tasks.a.run[0]: the program (first element) must not be empty",
        "p.yaml:5: tasks.a.outputs[1]: duplicate output 'm' (also outputs[0])",
        "p.yaml:7: tasks.a.requires.gpu_model: must not be empty (leave the key out to accept any GPU model)",
        "p.yaml:9: tasks.a.requires.labels.zone: must not contain NUL characters",
        "p.yaml:10: tasks.a.requires.residency[1]: zone 'eu' is listed twice (also residency[0])",
        "p.yaml:12: tasks.a.env.MY-VAR: invalid environment variable name 'MY-VAR': use letters, digits and '_', "
        "not starting with a digit",
        "p.yaml:14: tasks.b.run: must not be empty",
        "p.yaml:16: tasks.b.inputs.i: task 'a' has no output 'missing' (declared: m)",
        "p.yaml:17: tasks.b.after[0]: task 'b' cannot run after itself",
    ]


def test_a_field_that_cannot_be_read_draws_one_message() -> None:
    # The unreadable values leave placeholders in the wire form; the validator's word on
    # them is silenced, and later indices keep their place.
    found = problems(task_spec("""\
        run: [x, [y]]
        requires:
          residency: [[eu], eu, eu]
          match: [tier == edge, ok = 1]
        prefer:
          - {weight: 0}
        """))
    assert found == [
        "p.yaml:4: tasks.a.run[1]: expected a string, got a list",
        "p.yaml:6: tasks.a.requires.residency[0]: expected a string, got a list",
        "p.yaml:6: tasks.a.requires.residency[2]: zone 'eu' is listed twice (also residency[1])",
        "p.yaml:7: tasks.a.requires.match[0]: invalid label expression 'tier == edge': unknown operator '==' "
        "(use =, !=, in, not in, exists, not exists, >=, <=); did you mean '='?",
        "p.yaml:9: tasks.a.prefer[0].weight: expected a number greater than 0, got 0 (a number)",
        "p.yaml:9: tasks.a.prefer[0].match: required field is missing",
    ]


def test_a_cycle_is_reported_at_the_first_input_written() -> None:
    found = only_problem("name: p\ntasks:\n  a:\n    run: x\n    inputs: {z: b.o, a: b.p}\n"
                         "  b: {run: y, outputs: [o, p], after: [a]}\n")
    assert found == "p.yaml:5: tasks.a.inputs.z: dependency cycle: a -> b -> a"


@pytest.mark.parametrize(
    ("wire", "origin", "written"),
    [
        (("name",), TaskOrigin("a"), ()),
        (("argv",), TaskOrigin("a"), ("run",)),
        (("argv", 0), TaskOrigin("a", shell=True), ("run",)),
        (("argv", 2), TaskOrigin("a"), ("run", 2)),
        (("requires", "memory_bytes"), TaskOrigin("a"), ("requires", "memory")),
        (("requires", "disk_bytes"), TaskOrigin("a"), ("requires", "disk")),
        (("requires", "gpu_memory_bytes"), TaskOrigin("a"), ("requires", "gpu_memory")),
        (("requires", "expressions", 1), TaskOrigin("a"), ("requires", "match", 1)),
        (("requires", "max_clock_skew_s"), TaskOrigin("a"), ("requires", "max_clock_skew")),
        (("requires", "labels", "zone"), TaskOrigin("a"), ("requires", "labels", "zone")),
        (("max_attempts",), TaskOrigin("a"), ("retries",)),
        (("max_attempts",), TaskOrigin("a", retries=("retries", "max")), ("retries", "max")),
        (("backoff_s",), TaskOrigin("a"), ("retries", "backoff")),
        (("timeout_s",), TaskOrigin("a"), ("timeout",)),
        (("affinities", 1, "expr"), TaskOrigin("a", affinities=[("prefer", 0, False), ("avoid", 0, True)]),
         ("avoid", 0, "match")),
        (("affinities", 1, "weight"), TaskOrigin("a", affinities=[("prefer", 0, False), ("avoid", 0, True)]),
         ("avoid", 0, "weight")),
        (("affinities", 0, "expr"), TaskOrigin("a", affinities=[("prefer", 0, False)]), ("prefer", 0)),
        (("env", "X"), TaskOrigin("a"), ("env", "X")),
        (("inputs", "i"), TaskOrigin("a"), ("inputs", "i")),
    ],
)
def test_wire_paths_map_back_to_the_fields_written(
    wire: tuple[object, ...], origin: TaskOrigin, written: tuple[object, ...]
) -> None:
    assert origin.spec_path(wire) == written  # type: ignore[arg-type]
