"""The ``outrider`` CLI as a user runs it: a real process against a real cluster."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import load_pipeline
from outrider.v1 import common_pb2

pytestmark = pytest.mark.timeout(90)

RUN_ID = re.compile(r"run-[0-9a-f]+-[0-9a-f]{6}")
HEX64 = re.compile(r"[0-9a-f]{64}")


def cli(cluster: LocalCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``outrider ARGS`` against the cluster; never raises on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "outrider.cli", *args], env=cluster.client_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(cluster: LocalCluster, *args: str, timeout: float = 60) -> str:
    """Run a command that must succeed; return its stdout."""
    res = cli(cluster, *args, timeout=timeout)
    assert res.returncode == 0, f"outrider {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def status_json(cluster: LocalCluster, run_id: str) -> dict[str, Any]:
    return json.loads(ok(cluster, "status", run_id, "--json"))


def submit(cluster: LocalCluster, spec: Path) -> str:
    out = ok(cluster, "submit", str(spec))
    lines = out.splitlines()
    assert len(lines) == 1 and RUN_ID.fullmatch(lines[0]), out
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- submit, watch, status, logs, artifact


def test_submit_watch_status_logs_and_artifact_get(two_agents: LocalCluster, tmp_path: Path) -> None:
    spec = write(tmp_path / "demo.yaml", """\
name: cli-demo
tasks:
  make:
    run: 'echo "hello from make"; printf "payload-%s\\n" 42 > "$OUTRIDER_OUTPUTS/data"'
    outputs: [data]
  use:
    run: 'cat "$OUTRIDER_INPUTS/data"'
    inputs: {data: make.data}
""")
    run_id = submit(two_agents, spec)

    watched = cli(two_agents, "watch", run_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "run succeeded" in watched.stdout

    st = status_json(two_agents, run_id)
    assert {"run_id", "state", "tasks"} <= set(st)
    assert st["run_id"] == run_id and st["state"] == "succeeded" and st["pipeline"] == "cli-demo"
    assert set(st["tasks"]) == {"make", "use"}
    for name, t in st["tasks"].items():
        assert {"state", "attempts", "agent", "outputs"} <= set(t), t
        assert t["state"] == "succeeded" and t["attempts"] == 1 and t["agent"] in ("a", "b"), (name, t)
    digest = st["tasks"]["make"]["outputs"]["data"]
    assert set(st["tasks"]["make"]["outputs"]) == {"data"} and HEX64.fullmatch(digest)
    assert digest == hashlib.sha256(b"payload-42\n").hexdigest()
    assert st["tasks"]["use"]["outputs"] == {}

    text = ok(two_agents, "status", run_id)  # the human table names every task
    assert run_id in text and "SUCCEEDED" in text and "make" in text and "use" in text

    assert "hello from make\n" in ok(two_agents, "logs", run_id, "make")
    assert ok(two_agents, "logs", run_id, "use") == "payload-42\n"

    dest = tmp_path / "got" / "data.bin"
    dest.parent.mkdir()
    out = ok(two_agents, "artifact", "get", digest, "-o", str(dest))
    assert "verified" in out
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest

    # An artifact the store does not have: a clear error, exit 5 (not found), and no file left behind.
    missing = tmp_path / "got" / "missing.bin"
    res = cli(two_agents, "artifact", "get", "0" * 64, "-o", str(missing))
    assert res.returncode == 5 and res.stderr.startswith("outrider: error:"), res.stderr
    assert not missing.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.bin"]

    runs = json.loads(ok(two_agents, "runs", "--json"))
    assert [(r["run_id"], r["state"]) for r in runs] == [(run_id, "succeeded")]


# --------------------------------------------------------------------------- failure, watch exit code, retry


def test_watch_fails_then_retry_reruns_only_what_failed(two_agents: LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = write(tmp_path / "flaky.yaml", f"""\
name: flaky-once
x-env: &env {{MARKS: "{marks}"}}
tasks:
  good:
    run: 'echo ran >> "$MARKS/good"; echo stable > "$OUTRIDER_OUTPUTS/out"'
    outputs: [out]
    env: *env
  flaky:   # fails the first time it ever runs, then works
    run: 'if [ ! -e "$MARKS/flaky-failed" ]; then touch "$MARKS/flaky-failed"; echo failing >&2; exit 4; fi; echo recovered'
    env: *env
  down:
    run: 'cat "$OUTRIDER_INPUTS/g"'
    inputs: {{g: good.out}}
    after: [flaky]
    env: *env
""")
    run_id = submit(two_agents, spec)
    watched = cli(two_agents, "watch", run_id)
    assert watched.returncode == 1, watched.stdout + watched.stderr  # the run failed: 1, not an error code
    assert "run failed" in watched.stdout

    st = status_json(two_agents, run_id)
    assert st["state"] == "failed"
    tasks = st["tasks"]
    assert tasks["good"]["state"] == "succeeded" and tasks["good"]["attempts"] == 1
    assert tasks["flaky"]["state"] == "failed" and tasks["flaky"]["exit_code"] == 4
    assert tasks["down"]["state"] == "upstream_failed" and tasks["down"]["attempts"] == 0
    good_digest = tasks["good"]["outputs"]["out"]

    out = ok(two_agents, "retry", run_id)
    rerun = out.split("rerunning", 1)[1]
    assert "flaky" in rerun and "down" in rerun and "good" not in rerun, out
    assert cli(two_agents, "watch", run_id).returncode == 0

    st = status_json(two_agents, run_id)
    assert st["state"] == "succeeded"
    tasks = st["tasks"]
    assert tasks["good"]["attempts"] == 1 and tasks["good"]["outputs"]["out"] == good_digest
    assert (marks / "good").read_text() == "ran\n"  # never ran again
    assert tasks["flaky"]["state"] == "succeeded" and tasks["flaky"]["attempts"] == 2
    assert tasks["down"]["state"] == "succeeded" and tasks["down"]["attempts"] == 1

    logs = cli(two_agents, "logs", run_id, "flaky")
    assert logs.returncode == 0 and "recovered" in logs.stdout and "failing" in logs.stderr, logs
    assert ok(two_agents, "logs", run_id, "down") == "stable\n"

    # A succeeded run has nothing to retry: refused, clearly, and nothing changes.
    again = cli(two_agents, "retry", run_id)
    assert again.returncode == 3 and "nothing to retry" in again.stderr, again.stderr
    assert status_json(two_agents, run_id) == st


# --------------------------------------------------------------------------- logs -f


def test_logs_follow_streams_until_the_task_ends(two_agents: LocalCluster, tmp_path: Path) -> None:
    go = tmp_path / "go"
    spec = write(tmp_path / "talk.yaml", f"""\
name: talker
tasks:
  talk:
    run: 'echo line-1; while [ ! -e "$GO" ]; do sleep 0.05; done; for i in 2 3 4 5; do echo line-$i; sleep 0.25; done'
    env: {{GO: "{go}"}}
    timeout: 60s
""")
    with two_agents.client() as client:
        run_id = client.submit(load_pipeline(spec)).run_id
        wait_for(lambda: client.get_run(run_id).tasks[0].state == "running", 30, "the stage to start")
    lines: list[str] = []
    errors = (tmp_path / "follow.err").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "outrider.cli", "logs", "-f", run_id, "talk"],
                            env=two_agents.client_env(), stdout=subprocess.PIPE, stderr=errors, text=True,
                            stdin=subprocess.DEVNULL)
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: "line-1\n" in lines, 30, "the first line to be printed")
        assert proc.poll() is None, "logs -f ended while the task was still running"
        go.touch()  # the stage now prints four more lines over about a second, then ends
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=10)
        assert lines == [f"line-{i}\n" for i in range(1, 6)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.close()
    # Following a task that already ended prints its whole log and returns at once.
    assert ok(two_agents, "logs", "-f", run_id, "talk") == "".join(f"line-{i}\n" for i in range(1, 6))


# --------------------------------------------------------------------------- cancel


def test_cancel_stops_the_run(two_agents: LocalCluster, tmp_path: Path) -> None:
    pid_file = tmp_path / "long.pid"
    spec = write(tmp_path / "long.yaml", f"""\
name: long
tasks:
  long:
    run: 'echo $$ > "{pid_file}"; exec sleep 60'
  after_long:
    run: 'true'
    after: [long]
""")
    run_id = submit(two_agents, spec)
    pid = wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the stage to start")
    proc = psutil.Process(int(pid))
    try:
        assert ok(two_agents, "cancel", run_id).strip() == f"run {run_id} cancelled"
        st = status_json(two_agents, run_id)
        assert st["state"] == "cancelled"
        assert {n: t["state"] for n, t in st["tasks"].items()} == {"long": "cancelled", "after_long": "cancelled"}

        def gone() -> bool:
            try:
                return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_for(gone, 10, "the cancelled stage to die")
        assert json.loads(ok(two_agents, "cancel", run_id, "--json"))["state"] == "cancelled"  # idempotent
        watched = cli(two_agents, "watch", run_id)
        assert watched.returncode == 1 and "CANCELLED" in watched.stdout, watched.stdout + watched.stderr
    finally:
        try:
            proc.kill()
        except psutil.Error:
            pass


# --------------------------------------------------------------------------- agents and plan


def test_agents_and_plan(two_agents: LocalCluster, tmp_path: Path) -> None:
    agents = json.loads(ok(two_agents, "agents", "--json"))
    assert {a["name"]: a["capabilities"]["labels"] for a in agents} == {"a": {"tier": "a"}, "b": {"tier": "b"}}
    for a in agents:
        assert a["state"] == "ready" and a["capabilities"]["slots"] == 2, a
        assert a["identity"] == f"spiffe://outrider.local/agent/{a['name']}"
    table = ok(two_agents, "agents")
    assert "tier=a" in table and "tier=b" in table

    spec = write(tmp_path / "placement.yaml", """\
name: placement
tasks:
  anywhere:
    run: 'true'
  on_a:
    run: 'true'
    requires: {labels: {tier: a}}
  on_gpu:
    run: 'true'
    requires: {labels: {accel: gpu}}
""")
    text = ok(two_agents, "plan", str(spec))
    assert "ok anywhere: 2 of 2 agents fit (a, b)" in text, text
    assert "ok on_a: 1 of 2 agents fit (a)" in text, text
    assert "b: label mismatch: label tier=a required, agent has tier=b" in text, text
    assert "!! on_gpu: 0 of 2 agents fit" in text, text
    for name in ("a", "b"):
        assert f"{name}: missing label: label accel=gpu required, agent has no accel" in text, text

    plan = json.loads(ok(two_agents, "plan", str(spec), "--json"))["tasks"]
    assert plan["anywhere"]["feasible"] == ["a", "b"] and plan["anywhere"]["rejections"] == {}
    assert plan["on_a"]["feasible"] == ["a"] and set(plan["on_a"]["rejections"]) == {"b"}
    assert plan["on_gpu"]["feasible"] == [] and set(plan["on_gpu"]["rejections"]) == {"a", "b"}
    assert all(p["agents_considered"] == 2 for p in plan.values())
    # Planning submits nothing.
    assert json.loads(ok(two_agents, "runs", "--json")) == []


# --------------------------------------------------------------------------- bad specs


BAD_SPECS = {
    "unknown-key.yaml": ("""\
name: bad
tasks:
  a:
    run: 'true'
    retry: 2
""", 5, "tasks.a.retry", "unknown key 'retry'", "did you mean 'retries'?"),
    "cycle.yaml": ("""\
name: bad
tasks:
  a:
    run: 'true'
    after: [b]
  b:
    run: 'true'
    after: [a]
""", 5, "tasks.a.after[0]", "dependency cycle: a -> b -> a", ""),
    "unknown-input.yaml": ("""\
name: bad
tasks:
  a:
    run: 'true'
    outputs: [x]
  b:
    run: 'cat $OUTRIDER_INPUTS/y'
    inputs: {y: ghost.x}
""", 8, "tasks.b.inputs.y", "no task named 'ghost'", ""),
}


def test_bad_specs_are_refused_with_file_line_field_and_nothing_is_submitted(
    two_agents: LocalCluster, tmp_path: Path
) -> None:
    for name, (text, line, field, message, hint) in BAD_SPECS.items():
        spec = write(tmp_path / name, text)
        for verb in ("submit", "plan"):
            res = cli(two_agents, verb, str(spec))
            assert res.returncode == 3, (verb, name, res.stdout, res.stderr)  # an invalid request
            assert res.stdout == "", (verb, name, res.stdout)
            assert res.stderr.startswith(f"outrider: error: {spec}:{line}: {field}: {message}"), (verb, res.stderr)
            assert hint in res.stderr
    assert json.loads(ok(two_agents, "runs", "--json")) == []

    # The scheduler checks what arrives on the wire too, whatever the client skipped.
    from outrider.errors import InvalidArgument

    cycle = common_pb2.PipelineSpec(name="bad", tasks=[
        common_pb2.TaskSpec(name="a", argv=["true"], after=["b"]),
        common_pb2.TaskSpec(name="b", argv=["true"], after=["a"]),
    ])
    with two_agents.client() as client:
        with pytest.raises(InvalidArgument, match="cycle"):
            client.submit(cycle)
        assert client.list_runs() == []
