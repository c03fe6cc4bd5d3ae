"""Placement with real agents: delay scheduling for data locality, residency, clock_suspect
agents, priorities, fair share, admission control, infeasible tasks, and ``explain``.

Stages coordinate with the test through marker files under tmp_path (a stage may wait
for a file the test or another stage writes); the test itself only polls, with
``wait_for`` and a deadline, never sleeps.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from outrider.errors import FailedPrecondition, PermissionDenied, ResourceExhausted
from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from tests.helpers.ntp_responder import NtpResponder

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

BIG = 200_000_000
WAIT_S = 3.0


def tasks_of(client: Any, run_id: str) -> dict[str, Any]:
    return {t.name: t for t in client.get_run(run_id).tasks}


def wait_file(var: str, limit: int = 40) -> str:
    """Shell that waits (inside a stage) for the file named by $VAR, at most ``limit`` s."""
    return (f'i=0; while [ ! -e "${var}" ]; do i=$((i+1)); [ $i -gt {limit * 20} ] && exit 9; '
            f'sleep 0.05; done')


def wait_state(client: Any, run_id: str, task: str, states: set[str], timeout: float = 30) -> Any:
    def check() -> Any:
        t = tasks_of(client, run_id)[task]
        return t if t.state in states else None
    return wait_for(check, timeout, f"{task} to be {sorted(states)}", interval=0.05)


def cli_json(cluster: LocalCluster, *args: str) -> Any:
    res = subprocess.run([sys.executable, "-m", "outrider.cli", *args, "--json"], env=cluster.client_env(),
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"outrider {' '.join(args)}: {res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


# --------------------------------------------------------------------------- delay scheduling


def test_task_follows_its_data_then_goes_elsewhere_once_the_wait_bound_passes(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """A task whose 200 MB input sits on agent alpha runs on alpha even when beta polls
    first, and runs on beta once the wait bound passes while alpha stays busy.

    make (alpha) ─big─▶ near (pool=x): alpha is busy with bridge, beta has a free slot and
                 │       asks first: near waits for alpha, and runs there once bridge ends
                 ├────▶ bridge (alpha): holds alpha's only slot until the test lets it go
                 ├────▶ gate (beta): ends once near has started, i.e. alpha is busy again
                 └─big─▶ far (pool=x, after gate): alpha busy → waits 3 s → beta
    """
    cluster.start_scheduler(extra_args=["--placement-wait", f"{WAIT_S:g}s"])
    cluster.add_agent("alpha", labels={"pool": "x", "owner": "a"}, slots=1)
    cluster.add_agent("beta", labels={"pool": "x", "owner": "b"}, slots=2)
    cluster.wait_agents(["alpha", "beta"])
    marks = {k: tmp_path / k.lower() for k in ("BRIDGE_GO", "STARTED", "RELEASE")}
    env = {k: str(v) for k, v in marks.items()}
    p = Pipeline("locality")
    p.task("make", run=f"head -c {BIG} /dev/zero > $OUTRIDER_OUTPUTS/big", outputs=["big"],
           requires={"labels": {"owner": "a"}})
    p.task("bridge", run=wait_file("BRIDGE_GO"), after=["make"], requires={"labels": {"owner": "a"}}, env=env)
    p.task("near", run=f'test "$(wc -c < $OUTRIDER_INPUTS/big)" -eq {BIG} && touch "$STARTED" && '
                       + wait_file("RELEASE"),
           inputs={"big": "make.big"}, requires={"labels": {"pool": "x"}}, env=env)
    p.task("gate", run=wait_file("STARTED"), after=["make"], requires={"labels": {"owner": "b"}}, env=env)
    p.task("far", run=f'test "$(wc -c < $OUTRIDER_INPUTS/big)" -eq {BIG}', inputs={"big": "make.big"},
           after=["gate"], requires={"labels": {"pool": "x"}})

    def waiting(task: str) -> Any:
        def check() -> Any:
            e = client.explain(run_id, task)
            if e.state not in ("pending", "ready"):
                raise AssertionError(f"{task} left the queue before it was seen waiting: {e}")
            return e if e.reason == "waiting_for_better_agent" else None
        return wait_for(check, 30, f"{task} to wait for alpha", interval=0.02)

    with cluster.client() as client:
        run_id = client.submit(p).run_id
        # Part 1: near is ready, alpha (which holds its input) is busy, beta has a free slot
        # and has asked for work: near waits for alpha rather than taking beta.
        ex = waiting("near")
        assert "waiting for alpha" in ex.message and ex.until > 0, ex
        beta = {a.name: a for a in client.list_agents()}["beta"]
        assert beta.free_slots >= 1 and beta.running <= 1, beta
        assert tasks_of(client, run_id)["bridge"].agent == "alpha"
        marks["BRIDGE_GO"].touch()
        near = wait_state(client, run_id, "near", {"running", "succeeded", "failed"})
        assert near.state == "running" and near.agent == "alpha", near
        tasks = tasks_of(client, run_id)
        assert near.started_at - tasks["make"].finished_at < WAIT_S, (near, tasks["make"])  # not a fallback
        ex = client.explain(run_id, "near")
        assert ex.reason == "placed" and ex.agent == "alpha" and "running on alpha" in ex.message, ex
        ex = client.explain(run_id, "far")
        assert ex.reason == "upstream" and "gate" in ex.message, ex

        # Part 2: far becomes ready while alpha is busy with near: it waits for alpha...
        ex = waiting("far")
        assert "waiting for alpha" in ex.message and ex.until > 0, ex
        # ...then runs on beta once the bound passes, alpha still busy.
        far = wait_state(client, run_id, "far", {"running", "succeeded", "failed"})
        tasks = tasks_of(client, run_id)
        assert tasks["near"].state == "running", tasks["near"]
        assert far.agent == "beta", far
        ready_since = tasks["gate"].finished_at
        assert far.started_at - ready_since >= WAIT_S - 0.3, (far.started_at, ready_since)
        assert far.started_at - ready_since <= WAIT_S + 5, (far.started_at, ready_since)
        assert ex.until == pytest.approx(ready_since + WAIT_S, abs=1.0)
        marks["RELEASE"].touch()
        status = client.wait(run_id, timeout=30)
        assert status.state == "succeeded", status
        assert {t.name: t.agent for t in status.tasks} == {
            "make": "alpha", "bridge": "alpha", "near": "alpha", "gate": "beta", "far": "beta"}


# --------------------------------------------------------------------------- residency


def test_residency_is_enforced_end_to_end(cluster: LocalCluster, tmp_path: Path) -> None:
    # No delay scheduling: only residency, not data locality, may keep consumers on eu1,
    # which has one slot while us1 has two, idle throughout.
    cluster.start_scheduler(extra_args=["--placement-wait", "0s"])
    cluster.add_agent("eu1", slots=1, extra_args=["--zones", "eu"])
    cluster.add_agent("us1", slots=2, extra_args=["--zones", "us"])
    cluster.wait_agents(["eu1", "us1"])
    p = Pipeline("resident")
    p.task("ingest", run="echo personal > $OUTRIDER_OUTPUTS/rows", outputs=["rows"],
           requires={"residency": ["eu"]})
    for i in range(3):  # consumers with no residency of their own; us1 is idle all along
        p.task(f"use{i}", run="cat $OUTRIDER_INPUTS/rows > $OUTRIDER_OUTPUTS/out", inputs={"rows": "ingest.rows"},
               outputs=["out"])
    p.task("report", run="cat $OUTRIDER_INPUTS/a $OUTRIDER_INPUTS/b", inputs={"a": "use0.out", "b": "use1.out"})
    with cluster.client() as client:
        plan = {tp.task: tp for tp in client.plan(p).tasks}
        assert list(plan["use0"].feasible_agents) == ["eu1"], plan["use0"]
        assert list(plan["use0"].residency) == ["eu"]
        assert "outside residency zones" in plan["use0"].rejections["us1"]
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=40)
        assert status.state == "succeeded", status
        tasks = {t.name: t for t in status.tasks}
        assert {t.agent for t in tasks.values()} == {"eu1"}, {n: t.agent for n, t in tasks.items()}
        rows = {o.name: o for o in tasks["ingest"].outputs}["rows"]

        # A consumer that must run in us, of eu-derived data: infeasible, and said so.
        bad = Pipeline("resident-conflict")
        bad.task("ingest", run="echo personal > $OUTRIDER_OUTPUTS/rows", outputs=["rows"],
                 requires={"residency": ["eu"]})
        bad.task("export", run="cat $OUTRIDER_INPUTS/rows", inputs={"rows": "ingest.rows"},
                 requires={"residency": ["us"]})
        plan = {tp.task: tp for tp in client.plan(bad).tasks}
        conflicts = list(plan["export"].residency_conflicts)
        assert conflicts and "input rows from ingest" in conflicts[0], plan["export"]
        assert not list(plan["export"].feasible_agents)
        before = {r.run_id for r in client.list_runs()}
        with pytest.raises(FailedPrecondition, match="residency conflict"):
            client.submit(bad, strict=True)
        assert {r.run_id for r in client.list_runs()} == before
        res = client.submit(bad)
        assert any("'export'" in w and "residency conflict" in w for w in res.warnings), res.warnings
        client.cancel(res.run_id)

    # The us agent's own certificate cannot fetch the eu artifact's bytes.
    from outrider.client import Client

    ca, cert, key = cluster.issue("agent", "us1")
    with Client(cluster.address, str(ca), str(cert), str(key)) as as_us:
        with pytest.raises(PermissionDenied, match="zones eu"):
            as_us.download(rows.digest, tmp_path / "stolen")
    assert not (tmp_path / "stolen").exists()
    ca, cert, key = cluster.issue("agent", "eu1")
    with Client(cluster.address, str(ca), str(cert), str(key)) as as_eu:
        assert as_eu.download(rows.digest, tmp_path / "rows").read_text() == "personal\n"


# --------------------------------------------------------------------------- clocks


def test_clock_suspect_agent_is_marked_and_avoided(cluster: LocalCluster) -> None:
    with NtpResponder(offset=5.0) as liar, NtpResponder(offset=0.0) as honest:
        cluster.start_scheduler(extra_args=["--max-clock-offset", "1s"])
        cluster.add_agent("skewed", slots=2, extra_args=["--ntp-servers", liar.address])
        cluster.add_agent("steady", slots=2, extra_args=["--ntp-servers", honest.address])
        cluster.wait_agents(["skewed", "steady"])
        with cluster.client() as client:
            def suspect() -> bool:
                agents = {a.name: a for a in client.list_agents()}
                return agents["skewed"].clock_suspect and any(
                    s.source.startswith("ntp") for s in agents["steady"].clock)
            wait_for(suspect, 20, "skewed to become clock_suspect", interval=0.1)
            agents = {a["name"]: a for a in cli_json(cluster, "agents")}
            assert agents["skewed"]["clock_suspect"] is True
            assert agents["skewed"]["clock_skew_s"] > 4.5
            assert agents["steady"]["clock_suspect"] is False

            p = Pipeline("stamped")
            for i in range(4):
                p.task(f"stamp{i}", run="date +%s.%N", requires={"max_clock_skew": "500ms"})
            p.task("loose", run="true", after=[f"stamp{i}" for i in range(4)])
            plan = {tp.task: tp for tp in client.plan(p).tasks}
            assert list(plan["stamp0"].feasible_agents) == ["steady"]
            assert "clock suspect" in plan["stamp0"].rejections["skewed"]
            assert plan["stamp0"].rejection_counts["clock suspect"] == 1
            assert sorted(plan["loose"].feasible_agents) == ["skewed", "steady"]
            status = client.wait(client.submit(p).run_id, timeout=40)
            assert status.state == "succeeded", status
            assert {t.agent for t in status.tasks if t.name.startswith("stamp")} == {"steady"}


# --------------------------------------------------------------------------- priority and fair share


def test_high_priority_run_goes_first_when_the_slot_frees(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.add_agent("solo", slots=1)
    cluster.wait_agents(["solo"])
    go = tmp_path / "go"
    busy = Pipeline("busy")
    busy.task("hold", run=wait_file("GO"), env={"GO": str(go)})
    with cluster.client() as client:
        busy_id = client.submit(busy).run_id
        wait_state(client, busy_id, "hold", {"running"})
        low, high = Pipeline("low", priority=-1), Pipeline("high", priority=10)
        low.task("t", run="true")
        high.task("t", run="true")
        low_id = client.submit(low).run_id
        high_id = client.submit(high).run_id
        ex = client.explain(low_id, "t")
        assert ex.reason == "no_free_slot", ex
        go.touch()
        lo, hi = client.wait(low_id, timeout=30), client.wait(high_id, timeout=30)
        assert lo.state == hi.state == "succeeded"
        assert hi.tasks[0].started_at < lo.tasks[0].started_at, (hi.tasks[0], lo.tasks[0])
        assert hi.tasks[0].finished_at <= lo.tasks[0].started_at + 0.05


@pytest.mark.parametrize("slots", [2, 1])
def test_fair_share_does_not_starve_a_small_tenant(cluster: LocalCluster, tmp_path: Path, slots: int) -> None:
    """Tenant a submits 50 tasks, then tenant b 3: b's start within the first few placements."""
    cluster.start_scheduler()
    cluster.add_agent("solo", slots=slots)
    cluster.wait_agents(["solo"])
    go = tmp_path / "go"
    big = Pipeline("big", tenant="team-a")
    big.task("t00", run=wait_file("GO"), env={"GO": str(go)})  # holds a slot until b has submitted
    for i in range(1, 50):
        big.task(f"t{i:02d}", run="true")
    small = Pipeline("small", tenant="team-b")
    for i in range(3):
        small.task(f"s{i}", run="true")
    with cluster.client() as client:
        big_id = client.submit(big).run_id
        wait_state(client, big_id, "t00", {"running"})
        small_id = client.submit(small).run_id
        go.touch()
        sb, sa = client.wait(small_id, timeout=50), client.wait(big_id, timeout=50)
        assert sb.state == sa.state == "succeeded"
        starts = sorted([(t.started_at, "b") for t in sb.tasks] + [(t.started_at, "a") for t in sa.tasks])
        # The placements made after b's submission: b's 3 tasks come within the first few. The
        # tenants alternate once their shares are equal (t00 ends when GO is touched), and a
        # task already in flight may start just after b's submission (one per slot): so b's
        # three come within the first 3 × 2 + slots ("ababab" after an "a" in flight, seen
        # under load with one slot), never after a's 46 remaining tasks.
        order = "".join(who for ts, who in starts if ts >= sb.created_at)
        within = 3 * 2 + slots
        assert order[:within].count("b") == 3, order


# --------------------------------------------------------------------------- admission control


def test_admission_control_refuses_past_max_queue_depth(cluster: LocalCluster) -> None:
    cluster.start_scheduler(extra_args=["--max-queue-depth", "5"])  # no agents: nothing drains
    two = Pipeline("two")
    two.task("a", run="true")
    two.task("b", run="true", after=["a"])
    with cluster.client() as client:
        first = client.submit(two).run_id
        client.submit(two)
        before = [r.run_id for r in client.list_runs()]
        assert len(before) == 2
        with pytest.raises(ResourceExhausted, match="max_queue_depth") as err:
            client.submit(two)
        assert "4 tasks" in str(err.value) and "adds 2" in str(err.value), err.value
        assert [r.run_id for r in client.list_runs()] == before
        one = Pipeline("one")
        one.task("a", run="true")
        client.submit(one)  # exactly at the limit
        with pytest.raises(ResourceExhausted):
            client.submit(one)
        assert len(client.list_runs()) == 3
        client.cancel(first)  # cancelled tasks are no longer open: room again
        client.submit(two)
        assert len(client.list_runs()) == 4


# --------------------------------------------------------------------------- infeasible tasks


def test_infeasible_task_is_refused_warned_explained_and_failed(cluster: LocalCluster) -> None:
    cluster.start_scheduler(extra_args=["--infeasible-timeout", "2s"])
    cluster.add_agent("cpu1", labels={"tier": "cpu"}, slots=1)
    cluster.wait_agents(["cpu1"])
    p = Pipeline("needs-gpu")
    p.task("train", run="true", requires={"labels": {"tier": "gpu"}})
    p.task("eval", run="true", after=["train"])
    with cluster.client() as client:
        with pytest.raises(FailedPrecondition, match="tier=gpu"):
            client.submit(p, strict=True)
        assert client.list_runs() == []
        res = client.submit(p)
        assert len(res.warnings) == 1 and "'train'" in res.warnings[0] and "tier=gpu" in res.warnings[0], res
        ex = client.explain(res.run_id, "train")
        assert ex.reason == "no_feasible_agent", ex
        assert list(ex.plan.suggestions) and "tier=gpu" in ex.message, ex
        assert ex.until > 0
        status = client.wait(res.run_id, timeout=20)
        assert status.state == "failed", status
        tasks = {t.name: t for t in status.tasks}
        assert tasks["train"].state == "failed"
        assert "no agent could run this task for 2s" in tasks["train"].error, tasks["train"].error
        assert "tier=gpu" in tasks["train"].error
        assert tasks["eval"].state == "upstream_failed"
        assert tasks["train"].finished_at - status.created_at < 10
