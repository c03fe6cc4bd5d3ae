"""Fault 1 of issue 7: no value from the wire reaches the store unchecked.

An agent holding a lease used to end the scheduler with one report whose time was
NaN (the commit failed and the writer ended the process), and again after every
restart, since the lease was still there. Against a real scheduler process: such
reports are refused with INVALID_ARGUMENT naming the field, the scheduler keeps
serving, survives a restart, and the same lease can still be completed properly.
"""
from __future__ import annotations

import math
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline
from outrider.v1 import common_pb2
from tests.helpers.raw_agent import RawAgent, code_of

pytestmark = pytest.mark.timeout(90)


def _one_task(client: object, labels: dict[str, str]) -> str:
    p = Pipeline("poisoned")
    p.task("t", run="true", requires={"labels": labels})
    return client.submit(p).run_id  # type: ignore[attr-defined,no-any-return]


def _serving(cluster: LocalCluster) -> bool:
    assert cluster.scheduler is not None
    if not cluster.scheduler.alive():
        return False
    with cluster.client("prober") as client:
        stub = health_pb2_grpc.HealthStub(client._channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def _restart(cluster: LocalCluster) -> None:
    assert cluster.scheduler is not None
    cluster.scheduler.stop()
    cluster.start_scheduler()


def test_complete_with_nan_started_at_is_refused_and_the_scheduler_survives(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    with RawAgent(cluster, "rogue", labels={"who": "rogue"}) as agent, cluster.client() as client:
        agent.register()
        run_id = _one_task(client, {"who": "rogue"})
        a = agent.take_one()
        alive = agent.keep_alive([a.lease])
        now = time.time()
        for field, value in (("started_at", math.nan), ("finished_at", math.inf), ("started_at", -math.inf)):
            code = agent.complete(a.lease, started_at=value if field == "started_at" else now,
                                  finished_at=value if field == "finished_at" else now)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, value, code)
        assert _serving(cluster)
        # The lease is untouched, and still there after a restart: the scheduler stays up.
        alive.set()
        _restart(cluster)
        assert _serving(cluster)
    with RawAgent(cluster, "rogue", labels={"who": "rogue"}) as agent, cluster.client() as client:
        agent.register(leases=[a.lease])
        agent.keep_alive([a.lease])
        assert agent.complete(a.lease, started_at=math.nan, finished_at=now) == grpc.StatusCode.INVALID_ARGUMENT
        assert _serving(cluster)
        assert agent.complete(a.lease, started_at=now, finished_at=time.time()) == grpc.StatusCode.OK
        status = client.wait(run_id, timeout=30)
        assert status.state == "succeeded", status
        assert math.isfinite(status.tasks[0].started_at) and status.tasks[0].started_at > 0


def test_nan_clock_sample_is_refused_so_a_later_ordinary_completion_is_safe(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    with RawAgent(cluster, "skewed", labels={"who": "skewed"}) as agent, cluster.client() as client:
        good = common_pb2.ClockSample(offset_s=0.001, uncertainty_s=0.002, source="scheduler",
                                      measured_at=time.time())
        agent.register(clock=[good])
        run_id = _one_task(client, {"who": "skewed"})
        a = agent.take_one()
        agent.keep_alive([a.lease])
        for bad in (
            common_pb2.ClockSample(offset_s=math.nan, uncertainty_s=0.001, source="scheduler"),
            common_pb2.ClockSample(offset_s=0.0, uncertainty_s=math.inf, source="ntp:x"),
            common_pb2.ClockSample(offset_s=0.0, uncertainty_s=-1.0, source="ntp:x"),
        ):
            register = code_of(agent.stub.Register, agent.register_request(clock=[bad], leases=[a.lease]))
            assert register == grpc.StatusCode.INVALID_ARGUMENT, bad
            with pytest.raises(grpc.RpcError) as info:
                agent.heartbeat(leases=[a.lease], clock=[bad])
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _serving(cluster)
        now = time.time()
        assert agent.complete(a.lease, started_at=now - 1, finished_at=now) == grpc.StatusCode.OK
        status = client.wait(run_id, timeout=30)
        assert status.state == "succeeded", status
        assert _serving(cluster)
        _restart(cluster)
        assert _serving(cluster)
        assert client.get_run(run_id).state == "succeeded"
