"""The audit log (issue 8) against a real scheduler and real agents.

* running a pipeline, cancelling and retrying a run, draining an agent and a lease that
  expires are all listed by ``outrider audit --json`` with who did them;
* the log is for admins: a submitter is PERMISSION_DENIED;
* a record changed in the database while the scheduler is stopped: it starts, serves,
  logs the break, its audit health entry is NOT_SERVING, and ``outrider audit verify``
  exits 1 naming that record.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider import errors
from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from tests.helpers.cli import run_cli
from tests.helpers.raw_agent import RawAgent

pytestmark = pytest.mark.timeout(120)


def _cli(cluster: LocalCluster, name: str, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.client_env(name, role), *args)


def _audit(cluster: LocalCluster, *args: str) -> list[dict[str, Any]]:
    res = _cli(cluster, "root", "admin", "audit", "--json", *args)
    assert res.returncode == 0, res.stderr
    out: list[dict[str, Any]] = json.loads(res.stdout)
    return out


def _health(cluster: LocalCluster, service: str) -> int:
    with cluster.client("root", "admin") as client:
        stub = health_pb2_grpc.HealthStub(client._channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)


def test_actions_are_audited_with_identities_and_a_tampered_record_is_named(two_agents: LocalCluster) -> None:
    cluster = two_agents
    with cluster.client() as client:
        p = Pipeline("audited")
        p.task("make", run="echo hi > $OUTRIDER_OUTPUTS/out", outputs=["out"])
        p.task("use", run="cat $OUTRIDER_INPUTS/x", inputs={"x": "make.out"})
        done = client.submit(p).run_id
        assert client.wait(done, timeout=60).state == "succeeded"
        slow = Pipeline("slow")
        slow.task("s", run="sleep 60")
        slow_id = client.submit(slow).run_id
        wait_for(lambda: client.get_run(slow_id).tasks[0].state == "running", 30, "s to run")
        client.cancel(slow_id)
        client.retry(slow_id)
        client.cancel(slow_id)
        # A lease nobody renews expires: the scheduler's own action.
        with RawAgent(cluster, "raw", labels={"pool": "raw"}, instance_id="raw-1") as raw:
            raw.register()
            lost = Pipeline("lost")
            lost.task("t", run="true", requires={"labels": {"pool": "raw"}})
            lost_id = client.submit(lost).run_id
            raw.take_one()
            wait_for(lambda: any(r["action"] == "lease_expiry" for r in _audit(cluster)), 30, "the lease to expire")
            client.cancel(lost_id)
    drained = _cli(cluster, "root", "admin", "drain", "b")
    assert drained.returncode == 0, drained.stderr

    records = _audit(cluster)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    got = {(r["action"], r["target"]): r for r in records}
    submitter = got[("submit", done)]["identity"]
    assert submitter.startswith("spiffe://") and submitter.endswith("/submitter/submitter")
    assert got[("submit", slow_id)]["identity"] == submitter
    acts = [(r["action"], r["identity"]) for r in records if r["target"] == slow_id]
    assert acts == [("submit", submitter), ("cancel", submitter), ("retry", submitter), ("cancel", submitter)]
    assert got[("drain", "b")]["identity"].endswith("/admin/root")
    assert got[("lease_grant", f"{done}/make#1")]["identity"] == "scheduler"
    expiry = got[("lease_expiry", f"{lost_id}/t#1")]
    assert expiry["identity"] == "scheduler" and "stopped renewing" in expiry["detail"]
    commits = [r for r in records if r["action"] == "artifact_commit"]
    assert commits and all("/agent/" in r["identity"] for r in commits)
    assert all(r["outcome"] == "ok" for r in records)
    assert records[0]["prev_hash"] == "0" * 64

    # Filters: by identity, from a seq.
    mine = _audit(cluster, "--identity", submitter)
    assert mine and {r["identity"] for r in mine} == {submitter}
    assert [r["seq"] for r in _audit(cluster, "--since", "3")][0] == 3
    table = _cli(cluster, "root", "admin", "audit").stdout
    assert "lease_expiry" in table and "SEQ" in table

    # Admins only.
    denied = _cli(cluster, "alice", "submitter", "audit")
    assert denied.returncode == 4 and "may not call" in denied.stderr, denied
    with cluster.client("alice", "submitter") as client, pytest.raises(errors.PermissionDenied):
        list(client.list_audit())
    with cluster.client("alice", "submitter") as client, pytest.raises(errors.PermissionDenied):
        client.verify_audit()

    ok = _cli(cluster, "root", "admin", "audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok
    assert _health(cluster, "outrider.v1.AuditService") == health_pb2.HealthCheckResponse.SERVING

    # Tamper with one record while the scheduler is stopped.
    assert cluster.scheduler is not None
    cluster.scheduler.stop()
    db = sqlite3.connect(cluster.root / "scheduler" / "outrider.db")
    db.execute("UPDATE audit SET identity='spiffe://nobody/admin/eve' WHERE seq=4")
    db.commit()
    db.close()
    cluster.start_scheduler()
    log = (cluster.root / "logs" / "scheduler.log").read_text()
    assert "AUDIT LOG CHAIN BROKEN at record 4" in log
    assert _health(cluster, "") == health_pb2.HealthCheckResponse.SERVING  # it serves on
    assert _health(cluster, "outrider.v1.AuditService") == health_pb2.HealthCheckResponse.NOT_SERVING
    with cluster.client() as client:
        again = client.submit(p).run_id
        assert client.wait(again, timeout=60).state == "succeeded"
    broken = _cli(cluster, "root", "admin", "audit", "verify")
    assert broken.returncode == 1, broken
    assert "BROKEN at record 4" in broken.stdout
    verdict = json.loads(_cli(cluster, "root", "admin", "audit", "verify", "--json").stdout)
    assert verdict["ok"] is False and verdict["first_broken_seq"] == 4 and verdict["head_seq"] == 3
    assert "changed" in verdict["reason"]
    assert any(r["target"] == again for r in _audit(cluster))  # still recorded after the break


def test_an_agent_may_not_list_the_audit_log(two_agents: LocalCluster) -> None:
    """The audit service is for admins: an agent is PERMISSION_DENIED too."""
    with RawAgent(two_agents, "x", instance_id="x-1") as agent:
        from outrider.v1 import audit_pb2, audit_pb2_grpc

        stub = audit_pb2_grpc.AuditServiceStub(agent.channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListAudit(audit_pb2.ListAuditRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
