"""Fault 8 of issue 7: a watch replays the run's history, then follows; it survives a restart.

``outrider watch`` used to show only what happened after it connected (attaching 1.5 s
late hid two failed attempts) and died with the scheduler. Against real processes: a
late watch prints the whole history; a watch across a scheduler SIGKILL and restart
reconnects and resumes after the last event it showed, and the events it printed are
exactly the run's durable history (compared with the events table): no duplicate, no gap.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline

pytestmark = pytest.mark.timeout(120)


def _watch(cluster: LocalCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "outrider.cli", *args, "--json"], env=cluster.client_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _events(out: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The one-line event objects a ``--json`` watch printed, and the final run object."""
    lines = out.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    start = next(i for i, line in enumerate(lines) if line == "{")
    return events, json.loads("\n".join(lines[start:]))


def _recorded(cluster: LocalCluster, run_id: str) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(cluster.root / "scheduler" / "outrider.db")
    try:
        return conn.execute("SELECT seq, task, state FROM events WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
    finally:
        conn.close()


def _marked(marks: Path) -> Pipeline:
    """Three steps in a row; each leaves a mark when it starts and waits for its go file."""
    p = Pipeline("steps")
    for i, name in enumerate(("one", "two", "three")):
        p.task(name, run=f'touch "$MARKS/{name}.started"; while [ ! -e "$MARKS/{name}.go" ]; do sleep 0.05; done',
               env={"MARKS": str(marks)}, after=[("one", "two")[i - 1]] if i else [])
    return p


def test_a_late_watch_shows_the_failed_attempts_it_missed(two_agents: LocalCluster, tmp_path: Path) -> None:
    p = Pipeline("flaky")
    p.task("t", run='test "$OUTRIDER_ATTEMPT" -ge 3 || exit 7', retries={"max": 2, "backoff": "50ms"})
    with two_agents.client() as client:
        run_id = client.submit(p).run_id
        assert client.wait(run_id, timeout=30).state == "succeeded"
    proc = _watch(two_agents, "watch", run_id)  # attached only after the run ended
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events, final = _events(out)
    assert [e["state"] for e in events if e["task"] == "t"].count("retrying") == 2, events
    assert [e["seq"] for e in events] == [seq for seq, _, _ in _recorded(two_agents, run_id)]
    assert [a["state"] for a in final["tasks"]["t"]["history"]] == ["failed", "failed", "succeeded"]


@pytest.mark.slow
def test_a_watch_survives_a_scheduler_restart_without_duplicates_or_gaps(two_agents: LocalCluster,
                                                                          tmp_path: Path) -> None:
    cluster = two_agents
    marks = tmp_path / "marks"
    marks.mkdir()
    with cluster.client() as client:
        run_id = client.submit(_marked(marks)).run_id
    watch = _watch(cluster, "watch", run_id)
    try:
        wait_for(lambda: (marks / "one.started").exists(), 30, "step one to start")
        (marks / "one.go").touch()
        wait_for(lambda: (marks / "two.started").exists(), 30, "step two to start")
        assert cluster.scheduler is not None
        cluster.scheduler.kill()  # SIGKILL, mid-watch
        (marks / "two.go").touch()  # step two ends while the scheduler is down
        cluster.start_scheduler()
        cluster.wait_agents(["a", "b"], timeout=45)
        wait_for(lambda: (marks / "three.started").exists(), 45, "step three to start")
        (marks / "three.go").touch()
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, f"{out}\n{err}"
    assert "reconnecting" in err
    events, final = _events(out)
    assert final["state"] == "succeeded"
    seqs = [e["seq"] for e in events]
    assert len(seqs) == len(set(seqs)), "an event was shown twice"
    recorded = _recorded(cluster, run_id)
    assert seqs == [seq for seq, _, _ in recorded], "the events shown are not the run's history"
    assert (events[-1]["task"], events[-1]["state"]) == ("", "succeeded")


@pytest.mark.slow
def test_submit_watch_resumes_across_a_restart(two_agents: LocalCluster, tmp_path: Path) -> None:
    cluster = two_agents
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = tmp_path / "steps.yaml"
    spec.write_text(f"""\
name: steps
tasks:
  one:
    run: 'touch "{marks}/one.started"; while [ ! -e "{marks}/one.go" ]; do sleep 0.05; done'
  two:
    after: [one]
    run: 'true'
""")
    proc = _watch(cluster, "submit", str(spec), "--watch")
    try:
        wait_for(lambda: (marks / "one.started").exists(), 30, "step one to start")
        assert cluster.scheduler is not None
        cluster.scheduler.kill()
        (marks / "one.go").touch()
        cluster.start_scheduler()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"{out}\n{err}"
    first = json.loads(out.splitlines()[0])
    assert first["run_id"] and "reconnecting" in err
    _, final = _events(out)
    assert final["state"] == "succeeded" and final["run_id"] == first["run_id"]
