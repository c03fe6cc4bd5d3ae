"""A task's ``secret_env``: the validator, the YAML and SDK front ends, the scheduler's wire
conversion, and the masking of the stage's forwarded output (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.logtail import LogTail
from outrider.pipeline import Pipeline, SpecError, parse_pipeline
from outrider.spec import MAX_SECRET_BYTES, MAX_SECRETS, check_spec, validate_proto
from outrider.v1 import common_pb2
from scheduler.api.wire import decode_pipeline, pipeline_from_proto, pipeline_to_proto

SECRET = "s3cr3t-Value-9f1c"

YAML = f"""
name: p
tasks:
  a:
    run: echo hi
    env: {{PLAIN: visible}}
    secret_env:
      TOKEN: {SECRET}
      NUMBER: 12345
"""


def _spec(**task: object) -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name="p", tasks=[common_pb2.TaskSpec(name="a", argv=["true"], **task)])


def test_yaml_sdk_and_wire_round_trip() -> None:
    p = parse_pipeline(YAML)
    task = p.tasks["a"]
    assert task.secret_env == {"TOKEN": SECRET, "NUMBER": "12345"}
    assert task.env == {"PLAIN": "visible"}
    assert SECRET not in repr(task)
    wire = p.to_proto()
    assert dict(wire.tasks[0].secret_env) == {"TOKEN": SECRET, "NUMBER": "12345"}
    assert Pipeline.from_proto(wire).tasks["a"].secret_env == task.secret_env
    assert p.to_dict()["tasks"]["a"]["secret_env"] == {"TOKEN": SECRET, "NUMBER": "12345"}

    sdk = Pipeline("p")
    t = sdk.task("a", "echo hi", env={"PLAIN": "visible"}, secret_env={"TOKEN": SECRET})
    assert t.secret_env == {"TOKEN": SECRET}
    assert dict(sdk.to_proto().tasks[0].secret_env) == {"TOKEN": SECRET}


def test_scheduler_keeps_secret_env_but_never_shows_it() -> None:
    wire = parse_pipeline(YAML).to_proto()
    spec = pipeline_from_proto(wire)
    assert dict(spec.tasks[0].secret_env) == {"TOKEN": SECRET, "NUMBER": "12345"}
    assert SECRET not in repr(spec.tasks[0]) and SECRET not in repr(spec)
    assert dict(pipeline_to_proto(spec).tasks[0].secret_env)["TOKEN"] == SECRET
    assert dict(decode_pipeline(wire.SerializeToString()).tasks[0].secret_env)["TOKEN"] == SECRET


@pytest.mark.parametrize(
    ("task", "code", "field"),
    [
        ({"secret_env": {"BAD-NAME": SECRET}}, "invalid-env-name", "tasks[a].secret_env.BAD-NAME"),
        ({"secret_env": {"T": SECRET + "\0"}}, "nul", "tasks[a].secret_env.T"),
        ({"env": {"T": "x"}, "secret_env": {"T": SECRET}}, "duplicate-env", "tasks[a].secret_env.T"),
        ({"secret_env": {"T": SECRET * (MAX_SECRET_BYTES // 8)}}, "out-of-range", "tasks[a].secret_env.T"),
        ({"secret_env": {f"S{i}": SECRET for i in range(MAX_SECRETS + 1)}}, "out-of-range", "tasks[a].secret_env"),
    ],
)
def test_validator_problems_never_quote_the_value(task: dict[str, object], code: str, field: str) -> None:
    spec = _spec(**task)
    problems = check_spec(spec)
    assert [p.code for p in problems] == [code]
    printed = validate_proto(spec)
    assert printed[0].startswith(field + ": ")
    assert all(SECRET not in line for line in printed)


def test_front_ends_report_secret_problems_without_the_value() -> None:
    with pytest.raises(SpecError) as err:
        parse_pipeline(YAML.replace("env: {PLAIN: visible}", f"env: {{TOKEN: {SECRET}}}"))
    assert "secret_env" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(SpecError) as err:
        Pipeline("p").task("a", "true", secret_env={"NO-GOOD": SECRET})
    assert "secret_env" in str(err.value) and SECRET not in str(err.value)


def test_logtail_masks_secret_values(tmp_path: Path) -> None:
    (tmp_path / "stdout").write_bytes(f"token={SECRET}; again {SECRET}; short ab\n".encode())
    (tmp_path / "stderr").write_bytes(f"{SECRET}-suffix\n".encode())
    got: dict[str, bytes] = {}
    lease = common_pb2.LeaseRef(run_id="r", task="a", epoch=1)
    tail = LogTail(lease, tmp_path, lambda _l, s, d: got.__setitem__(s, got.get(s, b"") + d), [SECRET, "ab"])
    tail.finish()
    assert got["stdout"] == b"token=***; again ***; short ab\n"  # "ab": too short to mask
    assert got["stderr"] == b"***-suffix\n"
    assert tail.offsets == {"stdout": len(f"token={SECRET}; again {SECRET}; short ab\n"), "stderr": len(SECRET) + 8}
