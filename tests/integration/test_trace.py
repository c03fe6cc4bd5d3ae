"""Traces: one per run; every stage's TRACEPARENT belongs to its run's trace, under its
attempt's span; `outrider trace RUN [--json]` shows the timeline, also after a restart.
And the daemons' structured logs (--log-format json): what a line is about, with the trace."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.timeout(120)

WRITE_TP = 'printf %s "$TRACEPARENT" > $OUTRIDER_OUTPUTS/tp'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("trace") / "cluster"
    c = LocalCluster(root, lease_ttl="3s", heartbeat_interval="0.5s", log_format="json")
    try:
        c.start_scheduler()
        c.add_agent("a", labels={"tier": "a"}, slots=2)
        c.add_agent("b", labels={"tier": "b"}, slots=2)
        c.wait_agents(["a", "b"])
        yield c
    finally:
        c.stop()


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.client_env(), *args)


def _trace(cluster: LocalCluster, run_id: str) -> dict:
    out = _cli(cluster, "trace", run_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_stage_traceparent_belongs_to_its_runs_trace(cluster: LocalCluster, tmp_path: Path) -> None:
    p = Pipeline("traced")
    p.task(
        "first",
        run=WRITE_TP + "; echo 1 > $OUTRIDER_OUTPUTS/n",
        outputs=["tp", "n"],
        requires={"labels": {"tier": "a"}},
    )
    p.task("second", run=WRITE_TP, inputs={"n": "first.n"}, outputs=["tp"], requires={"labels": {"tier": "b"}})
    # Fails on its first attempt: each attempt gets its own span, under the same trace.
    p.task(
        "flaky",
        run=WRITE_TP + '; test "$OUTRIDER_ATTEMPT" -ge 2',
        outputs=["tp"],
        retries={"max": 2, "backoff": "100ms"},
    )
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        seen = {}
        for t in status.tasks:
            digest = {o.name: o for o in t.outputs}["tp"].digest
            seen[t.name] = client.download(digest, tmp_path / f"{t.name}.tp").read_text()

    doc = _trace(cluster, run_id)
    trace_id = doc["trace_id"]
    assert doc["run_id"] == run_id and len(trace_id) == 32
    spans = doc["spans"]
    by_id = {s["span_id"]: s for s in spans}
    assert all(s["trace_id"] == trace_id for s in spans)
    (root,) = [s for s in spans if s["parent_span_id"] is None]
    assert root["name"] == "run" and root["end"] and root["attributes"]["state"] == "succeeded"
    for task, tp in seen.items():
        version, tid, parent, flags = tp.split("-")
        assert (version, tid, flags) == ("00", trace_id, "01"), tp
        attempt = by_id[parent]  # the stage's parent: its attempt's span, under the run's root
        assert attempt["name"] == "attempt" and attempt["task"] == task and attempt["parent_span_id"] == root["span_id"]
    # The flaky task: two attempts, the second one's span is what its last TRACEPARENT names.
    flaky = sorted((s for s in spans if s["name"] == "attempt" and s["task"] == "flaky"), key=lambda s: s["attempt"])
    assert [s["attempt"] for s in flaky] == [1, 2]
    assert flaky[0]["attributes"]["state"] == "failed" and seen["flaky"].split("-")[2] == flaky[1]["span_id"]
    # Each finished attempt has its queueing, transfer, execution and commit spans, inside it,
    # in order, on the scheduler's clock, and on the agent that ran it.
    second = by_id[seen["second"].split("-")[2]]
    kids = {s["name"]: s for s in spans if s["parent_span_id"] == second["span_id"]}
    assert {"queue", "transfer.fetch", "execute", "transfer.upload", "commit"} <= set(kids), kids
    assert all(k["agent"] == "b" and k["end"] and k["start"] <= k["end"] for k in kids.values())
    assert kids["queue"]["end"] <= kids["transfer.fetch"]["start"] + 1e-6
    assert kids["transfer.fetch"]["end"] <= kids["execute"]["start"] + 1e-6
    assert kids["execute"]["end"] <= kids["transfer.upload"]["start"] + 1e-6
    assert kids["transfer.upload"]["end"] <= kids["commit"]["start"] + 1e-6
    assert second["start"] <= kids["queue"]["start"] and kids["commit"]["end"] <= second["end"]
    assert root["start"] <= second["start"] and second["end"] <= root["end"]

    text = _cli(cluster, "trace", run_id)
    assert text.returncode == 0, text.stderr
    assert f"trace {trace_id}" in text.stdout and "second#1" in text.stdout and "transfer.fetch" in text.stdout

    # Durable: the same spans after the scheduler restarts (the commit ends written too).
    cluster.scheduler.stop()
    cluster.start_scheduler()
    again = _trace(cluster, run_id)
    assert again == doc


def test_trace_of_unknown_run_is_not_found(cluster: LocalCluster) -> None:
    out = _cli(cluster, "trace", "run-nope")
    assert out.returncode != 0 and "run-nope" in out.stderr


def _records(path: Path) -> list[dict]:
    """The daemon's JSON log records (lines gRPC's C core prints itself are not ours)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_daemons_log_json_lines_about_runs_tasks_attempts_and_traces(cluster: LocalCluster) -> None:
    p = Pipeline("logged")
    p.task("only", run="true")
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        assert client.wait(run_id, timeout=60).state == "succeeded"
    trace_id = _trace(cluster, run_id)["trace_id"]
    sched = _records(cluster.root / "logs" / "scheduler.log")
    assert sched and all({"ts", "level", "logger", "msg"} <= set(r) for r in sched)
    assert any(r["logger"].startswith("scheduler") and r["level"] == "info" for r in sched)

    def about_it() -> list[dict]:
        agents = [r for name in ("a", "b") for r in _records(cluster.root / "logs" / f"agent-{name}.log")]
        return [r for r in agents if r.get("run_id") == run_id]

    # (the agent logs the end after it reported it: the run may end first)
    lines = wait_for(lambda: len(about_it()) >= 2 and about_it(), 20, "the agent's lines about the attempt")
    assert {r["msg"].split()[0] for r in lines} >= {"started", f"{run_id}/only"}, lines
    assert all(r["task"] == "only" and r["attempt"] == 1 and r["trace_id"] == trace_id for r in lines), lines


def test_the_scheduler_logs_a_failed_attempt_with_its_run_task_attempt_and_trace(cluster: LocalCluster) -> None:
    p = Pipeline("fails")
    p.task("broken", run="exit 3")
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        assert client.wait(run_id, timeout=60).state == "failed"
    trace_id = _trace(cluster, run_id)["trace_id"]
    lines = [r for r in _records(cluster.root / "logs" / "scheduler.log") if r.get("run_id") == run_id]
    failed = [r for r in lines if r["level"] == "warning" and "failed" in r["msg"]]
    assert failed, lines
    assert all((r["task"], r["attempt"], r["trace_id"]) == ("broken", 1, trace_id) for r in failed), failed
    assert "exit code 3" in failed[0]["msg"], failed
