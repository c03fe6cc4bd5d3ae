"""``outrider events``, ``lineage``, unique prefixes, ``--version`` and the live ``watch`` view,
as a person and a script run them: real CLI processes against one real cluster (shared by the
module's tests). Alice and bob are submitters; root is an admin."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outrider.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)

PIPELINE = """\
name: lineage-demo
tasks:
  make:
    run: 'printf "raw-%s\\n" {n} > "$OUTRIDER_OUTPUTS/data"'
    outputs: [data]
  use:
    run: 'sleep {sleep}; wc -c < "$OUTRIDER_INPUTS/data" > "$OUTRIDER_OUTPUTS/result"'
    inputs: {{data: make.data}}
    outputs: [result]
"""


def env_for(cluster: LocalCluster, name: str, role: str = "submitter") -> dict[str, str]:
    ca, cert, key = cluster.issue(role, name)
    return {**cluster.env, "OUTRIDER_SCHEDULER": cluster.address, "OUTRIDER_CA": str(ca),
            "OUTRIDER_CERT": str(cert), "OUTRIDER_KEY": str(key)}


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outrider.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ok(env: dict[str, str], *args: str) -> str:
    res = cli(env, *args)
    assert res.returncode == 0, f"outrider {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


class Setup:
    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        self.cluster, self.tmp = cluster, tmp
        self.alice, self.bob = env_for(cluster, "alice"), env_for(cluster, "bob")
        self.root = env_for(cluster, "root", "admin")
        self.runs: list[str] = []

    def submit(self, n: int, sleep: float = 0, env: dict[str, str] | None = None) -> str:
        spec = self.tmp / f"p{n}.yaml"
        spec.write_text(PIPELINE.format(n=n, sleep=sleep))
        run_id = ok(env or self.alice, "submit", str(spec)).strip()
        self.runs.append(run_id)
        return run_id

    def finish(self, run_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        cli(env or self.alice, "watch", run_id, "--json", timeout=90)  # piped: one line per event, then the run
        st: dict[str, Any] = json.loads(ok(env or self.alice, "status", run_id, "--json"))
        assert st["state"] == "succeeded", st
        return st


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("observe")
    cluster = LocalCluster(tmp / "cluster", lease_ttl="3s", heartbeat_interval="0.5s")
    try:
        cluster.start_scheduler()
        cluster.add_agent("a", slots=2)
        cluster.wait_agents(["a"])
        s = Setup(cluster, tmp)
        s.first = s.submit(1)  # type: ignore[attr-defined]
        s.status = s.finish(s.first)  # type: ignore[attr-defined]
        yield s
    finally:
        cluster.stop()


def test_version(setup: Setup) -> None:
    out = ok(setup.alice, "--version")
    assert re.fullmatch(r"outrider \d+\.\d+\.\d+\S* \(wire protocol outrider\.v1\)\n", out), out


def test_events_replay_placements_with_scores_and_owner_scope(setup: Setup) -> None:
    lines = ok(setup.alice, "events", "--json").splitlines()
    evs = [json.loads(line) for line in lines]
    mine = [e for e in evs if e["run_id"] == setup.first]  # type: ignore[attr-defined]
    assert mine, lines
    assert all(set(e) == {"seq", "time", "run_id", "task", "attempt", "kind", "agent", "message", "score"} for e in evs)
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    placed = [e for e in mine if e["kind"] == "running" and e["task"]]
    assert {e["task"] for e in placed} == {"make", "use"}
    for e in placed:
        assert e["agent"] == "a" and e["attempt"] == 1 and isinstance(e["score"], float) and e["score"] > 0, e
        assert e["message"].startswith("placed with score"), e
    kinds = [(e["task"], e["kind"]) for e in mine]
    assert ("", "succeeded") in kinds and ("use", "succeeded") in kinds
    # For a person: one line per event, with the placement's score.
    text = ok(setup.alice, "events", "--run", setup.first)  # type: ignore[attr-defined]
    assert re.search(r"make\s+running attempt 1 on a: placed with score", text), text
    # --since: only what came after.
    later = [json.loads(x) for x in ok(setup.alice, "events", "--json", "--since", str(seqs[-2])).splitlines()]
    assert [e["seq"] for e in later] == [seqs[-1]]
    # Bob sees none of alice's events (and her run, by id, does not exist for him); root sees them.
    assert setup.first not in ok(setup.bob, "events", "--json")  # type: ignore[attr-defined]
    res = cli(setup.bob, "events", "--run", setup.first)  # type: ignore[attr-defined]
    assert res.returncode == 5 and "no run" in res.stderr, res
    assert setup.first in ok(setup.root, "events", "--json")  # type: ignore[attr-defined]


def test_events_follow_sees_a_new_run_live(setup: Setup) -> None:
    last = json.loads(ok(setup.alice, "events", "--json").splitlines()[-1])["seq"]
    argv = [sys.executable, "-m", "outrider.cli", "events", "--follow", "--json", "--since", str(last)]
    proc = subprocess.Popen(argv, env=setup.alice, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        run_id = setup.submit(2)
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not any(e["run_id"] == run_id and not e["task"] and e["kind"] == "succeeded" for e in seen):
            assert time.monotonic() < deadline, seen
            seen.append(json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic()))))
        assert all(e["seq"] > last for e in seen)
        assert [e["seq"] for e in seen] == sorted({e["seq"] for e in seen})
        assert {e["task"] for e in seen if e["run_id"] == run_id} == {"", "make", "use"}
    finally:
        proc.kill()
        proc.wait(10)


def test_lineage_up_down_dot_and_owner_scope(setup: Setup) -> None:
    tasks = setup.status["tasks"]  # type: ignore[attr-defined]
    data, result = tasks["make"]["outputs"]["data"], tasks["use"]["outputs"]["result"]
    up = json.loads(ok(setup.alice, "lineage", result, "--json"))
    assert up["direction"] == "up" and up["digest"] == result and up["truncated"] is None
    by_task = {s["task"]: s for s in up["steps"] if s["run_id"] == setup.first}  # type: ignore[attr-defined]
    assert by_task["use"]["depth"] == 1 and by_task["make"]["depth"] == 2
    assert by_task["use"]["agent"] == "a" and by_task["use"]["attempt"] == 1 and by_task["use"]["state"] == "succeeded"
    assert by_task["use"]["inputs"] == [{"name": "data", "digest": data, "size": 6, "kind": "file"}]
    assert "sleep" in " ".join(by_task["use"]["command"])
    down = json.loads(ok(setup.alice, "lineage", data, "--down", "--json"))
    assert {(s["task"], s["depth"]) for s in down["steps"] if s["run_id"] == setup.first} == {("use", 1)}  # type: ignore[attr-defined]
    assert result in {o["digest"] for s in down["steps"] for o in s["outputs"]}
    # A person's view, by a unique prefix; DOT for Graphviz.
    text = ok(setup.alice, "lineage", result[:10])
    assert f"artifact {result}" in text and "<- use (succeeded)" in text and "<- make" in text, text
    dot = ok(setup.alice, "lineage", result, "--dot")
    assert dot.startswith("digraph lineage {") and f'"{data}" -> "{setup.first}/use"' in dot, dot  # type: ignore[attr-defined]
    res = cli(setup.alice, "lineage", result, "--json", "--dot")
    assert res.returncode == 3 and "exclusive" in res.stderr
    res = cli(setup.bob, "lineage", result)  # not his: as if it did not exist
    assert res.returncode == 5 and "no artifact" in res.stderr, res


def test_unique_prefixes_for_runs_and_digests(setup: Setup) -> None:
    first: str = setup.first  # type: ignore[attr-defined]
    other = setup.submit(3)
    setup.finish(other)
    st = json.loads(ok(setup.alice, "status", first[:-2], "--json"))
    assert st["run_id"] == first
    assert json.loads(ok(setup.alice, "status", first[4:-2], "--json"))["run_id"] == first  # without "run-"
    # Shared by both runs: ambiguous, an invalid request naming them.
    common = first[: next(i for i, (x, y) in enumerate(zip(first, other, strict=False)) if x != y)]
    assert len(common) >= 8, (first, other)
    res = cli(setup.alice, "status", common[:8], "--json")
    assert res.returncode == 3, res
    err = json.loads(res.stdout)["error"]
    assert err["code"] == "INVALID_ARGUMENT" and "ambiguous" in err["message"]
    assert first in err["message"] and other in err["message"]
    res = cli(setup.alice, "status", "run-1")
    assert res.returncode == 3 and "too short" in res.stderr
    # Bob's view: alice's runs do not exist, so her prefix matches nothing.
    res = cli(setup.bob, "status", first[:-2])
    assert res.returncode == 5 and "no run" in res.stderr
    # A digest by prefix: artifact get verifies the whole digest it was resolved to.
    digest = setup.status["tasks"]["make"]["outputs"]["data"]  # type: ignore[attr-defined]
    out = ok(setup.alice, "artifact", "get", digest[:8], "-o", str(setup.tmp / "data"))
    assert digest in out and (setup.tmp / "data").read_text() == "raw-1\n"
    res = cli(setup.bob, "artifact", "get", digest[:8], "-o", str(setup.tmp / "nope"))
    assert res.returncode == 5 and not (setup.tmp / "nope").exists()


def test_watch_on_a_terminal_draws_the_live_view(setup: Setup) -> None:
    run_id = setup.submit(4, sleep=1.5)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "outrider.cli", "watch", run_id[:-1]], env=setup.alice,
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # the other side closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(leader)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert out.count("\x1b[?25l") == 1 and out.rstrip().count("\x1b[?25h") == 1, out  # cursor hidden, then restored
    frames = out.split("\x1b[J")
    assert len(frames) >= 2, out  # drawn, then redrawn in place
    assert any(re.search(r"use\s+running\s+a\s+1\s+\d", f) for f in frames), out  # live: use running on a, attempt 1
    last = frames[-1]
    assert re.search(r"make\s+succeeded\s+a\s+1", last) and re.search(r"use\s+succeeded\s+a\s+1", last), last
    assert re.search(r"transfers: 2 fetch\(es\) [0-9.]+s, 2 upload\(s\) [0-9.]+s done; ", last), last  # the trace's
    assert "2/2 tasks done" in last
    assert f"run {run_id}  pipeline lineage-demo  SUCCEEDED" in last  # the summary, as when piped


def test_a_retry_is_an_event_with_its_reason(setup: Setup) -> None:
    spec = setup.tmp / "flaky.yaml"
    spec.write_text("""\
name: flaky
tasks:
  once:
    run: 'test "$OUTRIDER_ATTEMPT" -gt 1 || exit 7'
    retries: {max: 1, backoff: 0.1s}
""")
    run_id = ok(setup.alice, "submit", str(spec)).strip()
    cli(setup.alice, "watch", run_id, "--json", timeout=90)
    evs = [json.loads(x) for x in ok(setup.alice, "events", "--run", run_id[:-1], "--json").splitlines()]
    kinds = [(e["task"], e["kind"], e["attempt"]) for e in evs]
    assert kinds == [("", "running", 0), ("once", "ready", 0), ("once", "running", 1), ("once", "retrying", 1),
                     ("once", "running", 2), ("once", "succeeded", 2), ("", "succeeded", 0)], kinds
    retry = evs[3]
    assert "exit" in retry["message"] and "attempt 2 of 2" in retry["message"], retry
    assert [e["score"] is not None for e in evs] == [False, False, True, False, True, False, False]
