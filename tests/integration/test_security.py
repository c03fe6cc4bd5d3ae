"""mTLS and per-RPC roles against a real scheduler process (invariant 7), plus health and reflection."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from outrider import pki
from outrider.localcluster import LocalCluster
from outrider.tls import channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, common_pb2, control_pb2, control_pb2_grpc

pytestmark = pytest.mark.timeout(60)

RPC_TIMEOUT = 10


@pytest.fixture
def scheduler(cluster: LocalCluster) -> LocalCluster:
    """Just the scheduler: nothing here needs an agent."""
    cluster.start_scheduler()
    return cluster


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    """Channels a test opens, all closed at the end."""
    opened: list[grpc.Channel] = []
    yield opened
    for ch in opened:
        ch.close()


def _open(channels: list[grpc.Channel], address: str, creds: grpc.ChannelCredentials | None) -> grpc.Channel:
    ch = grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    channels.append(ch)
    return ch


def _code(call: object, *args: object) -> grpc.StatusCode:
    try:
        call(*args, timeout=RPC_TIMEOUT)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _identity_channel(cluster: LocalCluster, channels: list[grpc.Channel], role: str, name: str) -> grpc.Channel:
    ca, cert, key = cluster.issue(role, name)
    return _open(channels, cluster.address, channel_credentials(ca, cert, key))


def _runs(cluster: LocalCluster) -> list[str]:
    """Every run (an admin sees them all; a submitter would see only its own)."""
    with cluster.client("auditor", role="admin") as client:
        return [r.run_id for r in client.list_runs()]


def _spec() -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name="sneaky", tasks=[common_pb2.TaskSpec(name="t", argv=["true"])])


def test_client_without_certificate_cannot_connect(scheduler: LocalCluster, channels: list[grpc.Channel]) -> None:
    ca = (scheduler.pki / "ca.crt").read_bytes()
    # TLS that trusts the scheduler but presents no client certificate: the handshake fails.
    no_cert = _open(channels, scheduler.address, grpc.ssl_channel_credentials(root_certificates=ca))
    assert _code(control_pb2_grpc.ControlServiceStub(no_cert).ListRuns,
                 control_pb2.ListRunsRequest()) == grpc.StatusCode.UNAVAILABLE
    assert _code(control_pb2_grpc.ControlServiceStub(no_cert).Submit,
                 control_pb2.SubmitRequest(pipeline=_spec())) == grpc.StatusCode.UNAVAILABLE
    # Plaintext HTTP/2 to a TLS port gets nowhere either.
    plain = _open(channels, scheduler.address, None)
    assert _code(control_pb2_grpc.ControlServiceStub(plain).ListRuns,
                 control_pb2.ListRunsRequest()) == grpc.StatusCode.UNAVAILABLE
    assert _runs(scheduler) == []


def test_certificate_from_another_ca_is_refused(
    scheduler: LocalCluster, channels: list[grpc.Channel], tmp_path: Path
) -> None:
    # Same trust domain, same role and name layout: only the issuing CA differs.
    other = tmp_path / "other-pki"
    pki.init_ca(other, scheduler.trust_domain)
    pki.issue(other, "submitter", "mallory")
    pki.issue(other, "agent", "rogue")
    ours = scheduler.pki / "ca.crt"
    forged_submitter = _open(channels, scheduler.address,
                             channel_credentials(ours, other / "mallory.crt", other / "mallory.key"))
    assert _code(control_pb2_grpc.ControlServiceStub(forged_submitter).Submit,
                 control_pb2.SubmitRequest(pipeline=_spec())) == grpc.StatusCode.UNAVAILABLE
    forged_agent = _open(channels, scheduler.address,
                         channel_credentials(ours, other / "rogue.crt", other / "rogue.key"))
    assert _code(agent_pb2_grpc.AgentServiceStub(forged_agent).Register,
                 agent_pb2.RegisterRequest(capabilities=common_pb2.Capabilities(slots=1))) == grpc.StatusCode.UNAVAILABLE
    # The other way round: a client that trusts only the other CA does not accept our scheduler.
    wrong_trust = _open(channels, scheduler.address,
                        channel_credentials(other / "ca.crt", other / "mallory.crt", other / "mallory.key"))
    assert _code(control_pb2_grpc.ControlServiceStub(wrong_trust).ListRuns,
                 control_pb2.ListRunsRequest()) == grpc.StatusCode.UNAVAILABLE
    # Nothing got in.
    assert _runs(scheduler) == []
    with scheduler.client("auditor") as client:
        assert client.list_agents() == []


def test_agent_certificate_cannot_use_control_service(scheduler: LocalCluster, channels: list[grpc.Channel]) -> None:
    control = control_pb2_grpc.ControlServiceStub(_identity_channel(scheduler, channels, "agent", "edge-1"))
    assert _code(control.ListRuns, control_pb2.ListRunsRequest()) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(control.ListAgents, control_pb2.ListAgentsRequest()) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(control.Submit, control_pb2.SubmitRequest(pipeline=_spec())) == grpc.StatusCode.PERMISSION_DENIED
    try:
        control.ListRuns(control_pb2.ListRunsRequest(), timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        assert "role agent" in exc.details() and "ControlService" in exc.details(), exc.details()
    assert _runs(scheduler) == []


@pytest.mark.parametrize(("role", "expected"), [("submitter", grpc.StatusCode.PERMISSION_DENIED),
                                               ("agent", grpc.StatusCode.PERMISSION_DENIED),
                                               ("admin", grpc.StatusCode.NOT_FOUND)])
def test_only_an_admin_may_drain_an_agent(
    scheduler: LocalCluster, channels: list[grpc.Channel], role: str, expected: grpc.StatusCode
) -> None:
    """DrainAgent has a rule of its own, stricter than its service's (admin only)."""
    control = control_pb2_grpc.ControlServiceStub(_identity_channel(scheduler, channels, role, f"who-{role}"))
    assert _code(control.DrainAgent, control_pb2.DrainAgentRequest(agent="nope")) == expected
    if role == "submitter":
        try:
            control.DrainAgent(control_pb2.DrainAgentRequest(agent="nope"), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            assert "role submitter" in exc.details() and "DrainAgent" in exc.details(), exc.details()
        assert _code(control.ListAgents, control_pb2.ListAgentsRequest()) == grpc.StatusCode.OK  # the rest as before


@pytest.mark.parametrize("role", ["submitter", "admin"])
def test_user_certificate_cannot_act_as_agent(
    scheduler: LocalCluster, channels: list[grpc.Channel], role: str
) -> None:
    agent = agent_pb2_grpc.AgentServiceStub(_identity_channel(scheduler, channels, role, f"user-{role}"))
    caps = common_pb2.Capabilities(cpu_cores=64, slots=8, labels={"tier": "gpu"})
    assert _code(agent.Register, agent_pb2.RegisterRequest(capabilities=caps)) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(agent.Heartbeat, agent_pb2.HeartbeatRequest()) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(agent.PollTasks, agent_pb2.PollRequest(free_slots=1)) == grpc.StatusCode.PERMISSION_DENIED
    completion = agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id="r", task="t", epoch=1), outcome="succeeded")
    assert _code(agent.Complete, agent_pb2.CompleteRequest(completion=completion)) == grpc.StatusCode.PERMISSION_DENIED
    # The refused Register registered nothing.
    with scheduler.client("auditor") as client:
        assert client.list_agents() == []


@pytest.mark.parametrize("role", ["submitter", "agent"])
def test_health_service_reports_serving(scheduler: LocalCluster, channels: list[grpc.Channel], role: str) -> None:
    health = health_pb2_grpc.HealthStub(_identity_channel(scheduler, channels, role, f"probe-{role}"))
    for service in ("", "outrider.v1.ControlService", "outrider.v1.AgentService", "outrider.v1.ArtifactService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    assert _code(health.Check, health_pb2.HealthCheckRequest(service="no.such.Service")) == grpc.StatusCode.NOT_FOUND


def test_health_service_requires_a_certificate(scheduler: LocalCluster, channels: list[grpc.Channel]) -> None:
    ca = (scheduler.pki / "ca.crt").read_bytes()
    no_cert = _open(channels, scheduler.address, grpc.ssl_channel_credentials(root_certificates=ca))
    assert _code(health_pb2_grpc.HealthStub(no_cert).Check,
                 health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAVAILABLE


def test_server_reflection_lists_services(scheduler: LocalCluster, channels: list[grpc.Channel]) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(_identity_channel(scheduler, channels, "submitter", "grpcurl"))
    responses = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=RPC_TIMEOUT))
    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"outrider.v1.ControlService", "outrider.v1.AgentService", "outrider.v1.ArtifactService",
            "grpc.health.v1.Health"} <= names, names
    # And the descriptors are there, so grpcurl can describe the API.
    (resp,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="outrider.v1.ControlService")]),
        timeout=RPC_TIMEOUT)
    assert resp.file_descriptor_response.file_descriptor_proto, resp
