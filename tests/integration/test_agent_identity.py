"""Faults 5 and 7 of issue 7 (the scheduler side), and draining, against a real scheduler.

* Fault 5: a second agent under a live name silently replaced the first's capabilities.
  Now a different instance under a connected name is refused with FAILED_PRECONDITION
  naming both instances; the same instance (a restart) takes over its session.
* Fault 7: an agent that reports itself unhealthy gets no work, and ``outrider agents``
  shows why.
* ``outrider drain AGENT`` (admin only) tells the agent down its work stream and gives
  it no new work.
"""
from __future__ import annotations

import json
import subprocess
from typing import Any

import grpc
import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2
from tests.helpers.cli import run_cli
from tests.helpers.raw_agent import RawAgent, Stream, code_of

pytestmark = pytest.mark.timeout(90)


def _cli(cluster: LocalCluster, name: str, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.client_env(name, role), *args)


def _agents(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    res = _cli(cluster, "viewer", "submitter", "agents", "--json")
    assert res.returncode == 0, res.stderr
    return {a["name"]: a for a in json.loads(res.stdout)}


def test_another_instance_under_a_connected_name_is_refused_and_the_same_one_takes_over(
    cluster: LocalCluster,
) -> None:
    cluster.start_scheduler()
    first = RawAgent(cluster, "edge-1", labels={"site": "a"}, instance_id="inst-first")
    intruder = RawAgent(cluster, "edge-1", labels={"site": "b"}, instance_id="inst-second")
    try:
        first.register()
        stream = Stream(first)
        wait_for(lambda: _agents(cluster)["edge-1"]["state"] == "ready", 15, "edge-1 to connect")
        with pytest.raises(grpc.RpcError) as info:
            intruder.register()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "inst-first" in info.value.details() and "inst-second" in info.value.details()
        shown = _agents(cluster)["edge-1"]
        assert shown["instance_id"] == "inst-first"
        assert shown["capabilities"]["labels"] == {"site": "a"}  # not replaced
        assert "inst-second" in (cluster.root / "logs" / "scheduler.log").read_text()
        # The same instance again (its process restarted): its old stream is closed, it takes over.
        first.register()
        assert stream.wait_for(lambda m: m == "ended" or isinstance(m, grpc.StatusCode)) is not None
        stream.close()
        # Now nobody is connected under the name: another instance may take it over.
        intruder.register()
        assert _agents(cluster)["edge-1"]["instance_id"] == "inst-second"
    finally:
        first.close()
        intruder.close()


def test_an_unhealthy_agent_takes_no_work_and_agents_says_why(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    with RawAgent(cluster, "sick", labels={"pool": "p"}, instance_id="i1") as sick, cluster.client() as client:
        sick.register()
        sick.heartbeat(unhealthy="cannot create work dir: No space left on device")
        p = Pipeline("needs-p")
        p.task("t", run="true", requires={"labels": {"pool": "p"}})
        run_id = client.submit(p).run_id
        assert sick.poll(wait_s=1.0).assignments == []
        shown = _agents(cluster)["sick"]
        assert shown["unhealthy"].startswith("cannot create work dir")
        table = _cli(cluster, "viewer", "submitter", "agents").stdout
        assert "unhealthy: cannot create work dir" in table
        assert client.explain(run_id, "t").reason == "no_free_slot"
        sick.heartbeat()  # recovered
        a = sick.take_one()
        assert a.lease.run_id == run_id


def test_drain_is_for_admins_and_reaches_the_agent(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    with RawAgent(cluster, "w1", labels={"pool": "d"}, instance_id="i1") as agent:
        agent.register()
        stream = Stream(agent, credits=1)
        wait_for(lambda: _agents(cluster)["w1"]["state"] == "ready", 15, "w1 to connect")
        denied = _cli(cluster, "alice", "submitter", "drain", "w1")
        assert denied.returncode == 4 and "may not call" in denied.stderr, denied
        missing = _cli(cluster, "root", "admin", "drain", "nope")
        assert missing.returncode == 5 and "no agent" in missing.stderr
        res = _cli(cluster, "root", "admin", "drain", "w1", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["draining"] is True
        stream.wait_for(lambda m: isinstance(m, agent_pb2.SchedulerMessage) and m.drain)
        with cluster.client() as client:
            p = Pipeline("for-w1")
            p.task("t", run="true", requires={"labels": {"pool": "d"}})
            run_id = client.submit(p).run_id
            assert client.explain(run_id, "t").reason == "no_free_slot"  # it has credit, but drains
        assert _agents(cluster)["w1"]["draining"] is True
        assert "draining" in _cli(cluster, "viewer", "submitter", "agents").stdout
        stream.close()
        assert code_of(agent.stub.Heartbeat, agent_pb2.HeartbeatRequest(draining=True)) == grpc.StatusCode.OK


def test_an_instance_taken_over_between_its_register_and_its_stream_cannot_connect(cluster: LocalCluster) -> None:
    """Two agents under one name starting together: A registers, B registers before A's stream
    is open (so B takes the name over), then A opens its stream: refused. Only B works."""
    cluster.start_scheduler()
    a = RawAgent(cluster, "twin", instance_id="inst-a")
    b = RawAgent(cluster, "twin", instance_id="inst-b")
    try:
        a.register()
        b.register()
        late = Stream(a)
        assert late.wait_for(lambda m: m == grpc.StatusCode.FAILED_PRECONDITION) is not None
        assert code_of(a.stub.PollTasks, agent_pb2.PollRequest(free_slots=1)) == grpc.StatusCode.FAILED_PRECONDITION
        ok = Stream(b)
        wait_for(lambda: _agents(cluster)["twin"]["state"] == "ready", 15, "twin (inst-b) to connect")
        assert _agents(cluster)["twin"]["instance_id"] == "inst-b"
        ok.close()
    finally:
        a.close()
        b.close()
