"""Residency bound to identity (issue 8), against a real scheduler.

An agent whose certificate says `us` claims `eu` (in a Register, in a heartbeat): refused
PERMISSION_DENIED naming the zone, audited, and nothing changes: it still cannot download an
`eu`-resident artifact (refused, audited), and an `eu`-resident task is never placed on it.
Zones the scheduler's configuration gives an agent (``[agent_zones]``) bind it the same way.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2, artifact_pb2, common_pb2
from tests.helpers.raw_agent import RPC_TIMEOUT, RawAgent

pytestmark = pytest.mark.timeout(120)
LEASE_TTL = "10s"


def _audit(cluster: LocalCluster) -> list[dict[str, Any]]:
    ca, cert, key = cluster.issue("admin", "root")
    env = {**cluster.env, "OUTRIDER_SCHEDULER": cluster.address, "OUTRIDER_CA": str(ca), "OUTRIDER_CERT": str(cert),
           "OUTRIDER_KEY": str(key)}
    res = subprocess.run([sys.executable, "-m", "outrider.cli", "audit", "--json"], env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    out: list[dict[str, Any]] = json.loads(res.stdout)
    return out


def _refused(fn: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        fn(request, timeout=RPC_TIMEOUT)
    return exc.value


def _download_code(agent: RawAgent, digest: str) -> grpc.StatusCode:
    try:
        b"".join(c.data for c in agent.artifacts.Download(artifact_pb2.DownloadRequest(digest=digest), timeout=10))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _checkpoint(agent: RawAgent, lease: common_pb2.LeaseRef, digest: str) -> None:
    cp = common_pb2.Checkpoint(lease=lease, digest=digest, size=10, kind="file", seq=1, created_at=time.time())
    agent.stub.ReportCheckpoint(agent_pb2.ReportCheckpointRequest(checkpoint=cp), timeout=RPC_TIMEOUT)


def _zones_of(cluster: LocalCluster, name: str) -> list[str]:
    with cluster.client() as client:
        (info,) = [a for a in client.list_agents() if a.name == name]
        return list(info.capabilities.zones)


def test_an_agent_cannot_claim_a_zone_its_certificate_does_not_give_it(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.issue("agent", "us-1", zones=["us"])
    cluster.issue("agent", "eu-1", zones=["eu"])
    us = RawAgent(cluster, "us-1", labels={"pool": "r"}, instance_id="us")
    eu = RawAgent(cluster, "eu-1", labels={"pool": "r"}, instance_id="eu")
    try:
        us.register()  # it declares nothing: its certificate's zones
        assert _zones_of(cluster, "us-1") == ["us"]
        eu.register()
        # An eu-resident artifact (a checkpoint of an eu task), made on eu-1.
        p = Pipeline("resident")
        p.task("t", run="true", requires={"labels": {"pool": "r"}, "residency": ["eu"]})
        with cluster.client() as client:
            client.submit(p)
            a = eu.take_one()
            eu.keep_alive([a.lease])
            digest = eu.upload(b"personal data, eu only")
            _checkpoint(eu, a.lease, digest)
        wait_for(lambda: _download_code(us, digest) == grpc.StatusCode.PERMISSION_DENIED, 10, "the fence")

        # The issue: a heartbeat claiming eu. Refused, naming the zone; nothing changes.
        claim = common_pb2.Capabilities(cpu_cores=2, memory_bytes=2**30, slots=1, labels={"pool": "r"}, zones=["eu"])
        err = _refused(us.stub.Heartbeat, agent_pb2.HeartbeatRequest(capabilities=claim, client_time=time.time()))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "eu outside its zones us (from its certificate)" in (err.details() or "")
        # So is a Register claiming it (beside us: a claim may narrow, never widen).
        claim.zones.append("us")
        req = agent_pb2.RegisterRequest(capabilities=claim, client_time=time.time(), instance_id="us")
        assert _refused(us.stub.Register, req).code() == grpc.StatusCode.PERMISSION_DENIED
        assert _zones_of(cluster, "us-1") == ["us"]
        assert _download_code(us, digest) == grpc.StatusCode.PERMISSION_DENIED
        assert _download_code(eu, digest) == grpc.StatusCode.OK

        # An eu-resident task is never placed on it: with eu-1 not asking, us-1 polls for it in vain.
        p2 = Pipeline("resident-2")
        p2.task("t2", run="true", requires={"labels": {"pool": "r"}, "residency": ["eu"]})
        with cluster.client() as client:
            run_id = client.submit(p2).run_id
            assert not us.poll(wait_s=2.0).assignments
            why = client.explain(run_id, "t2")
            assert "outside residency zones" in str(why)
            assert eu.take_one().lease.task == "t2"

        records = _audit(cluster)
        zone = [r for r in records if r["action"] == "zone_refusal"]
        assert [(r["identity"], r["target"], r["outcome"]) for r in zone] == [
            (f"spiffe://{cluster.trust_domain}/agent/us-1", "us-1", "PERMISSION_DENIED")] * 2
        assert all("eu outside its zones us" in r["detail"] for r in zone)
        downloads = [r for r in records if r["action"] == "residency_refusal"]
        assert downloads and all(r["target"] == digest and r["identity"].endswith("/agent/us-1") for r in downloads)
    finally:
        us.close()
        eu.close()


def test_a_real_agent_declaring_a_zone_beyond_its_certificate_is_not_registered(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.add_agent("edge", zones=["us"], extra_args=["--zones", "us,eu"])
    wait_for(lambda: any(r["action"] == "zone_refusal" and r["target"] == "edge" for r in _audit(cluster)), 30,
             "the refused claim to be audited")
    with cluster.client() as client:
        assert "edge" not in [a.name for a in client.list_agents()]


def test_the_configuration_gives_zones_a_claim_cannot_widen(cluster: LocalCluster, tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text('[agent_zones]\ncfg-1 = ["us", "us-east"]\n')
    cluster.start_scheduler(extra_args=["--config", str(config)])
    agent = RawAgent(cluster, "cfg-1", instance_id="c")  # its certificate names no zones
    try:
        agent.caps.zones.append("eu")
        err = _refused(agent.stub.Register, agent.register_request())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "from the scheduler's agent_zones" in (err.details() or "")
        del agent.caps.zones[:]
        agent.caps.zones.append("us-east")  # narrowing is fine
        agent.register()
        assert _zones_of(cluster, "cfg-1") == ["us-east"]
    finally:
        agent.close()
