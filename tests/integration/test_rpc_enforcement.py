"""Every RPC × every kind of caller, against a real scheduler (after Nomad's TestRPC_TLS_Enforcement_RPC).

One table (``EXPECTED``) says the status code each identity gets from each RPC. The valid
identities differ by role and by ownership: "submitter" owns the target run (and its code
bundle), "other submitter" does not and is answered as if the run did not exist. The
broken certificates are all signed by the scheduler's CA (tests/helpers/badcerts.py) and
each breaks one X.509-SVID rule; those the TLS handshake refuses fail as UNAVAILABLE, the
rest are refused by the interceptor, on every call, with UNAUTHENTICATED.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.enroll import new_key_and_csr
from outrider import pki
from outrider.localcluster import LocalCluster
from outrider.protocol import REVOKED_METADATA_KEY
from outrider.tls import channel_credentials
from outrider.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    artifact_pb2,
    artifact_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
)
from scheduler.auth import RULES
from tests.helpers import badcerts

pytestmark = pytest.mark.timeout(120)

RPC_TIMEOUT = 10
OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

_A, _C, _F = "/outrider.v1.AgentService/", "/outrider.v1.ControlService/", "/outrider.v1.ArtifactService/"
_H, _R = "/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/"
_L = "/outrider.v1.AuditService/"
_I, _E = "/outrider.v1.IdentityService/", "/outrider.v1.EnrollService/"
# Served only on the enrolment port (tests/integration/test_enrolment.py), never on the mTLS port.
_NOT_HERE = {_E + "Enroll": grpc.StatusCode.UNIMPLEMENTED}

# What a valid caller of each role gets from each RPC (with the minimal requests below).
_AGENT = {
    _A + "Register": OK, _A + "Heartbeat": OK, _A + "Connect": OK, _A + "PollTasks": OK, _A + "ReportLogs": OK,
    # Reports on a lease this agent does not hold: a stale epoch.
    _A + "Complete": grpc.StatusCode.ABORTED, _A + "ReportCheckpoint": grpc.StatusCode.ABORTED,
    **{_C + m: DENIED for m in ("Plan", "Submit", "SubmitAndWatch", "GetRun", "ListRuns", "WatchRun", "CancelRun",
                                "RetryRun", "ListAgents", "GetLogs", "Explain", "DrainAgent", "RevokeAgent",
                                "GetStageMetrics", "GetTrace", "WatchEvents", "Lineage", "Resolve")},
    _L + "ListAudit": DENIED, _L + "VerifyAudit": DENIED,
    _F + "Upload": OK, _F + "Download": OK, _F + "Stat": OK, _F + "Probe": OK,
    _H + "Check": OK, _H + "Watch": OK, _H + "List": OK, _R + "ServerReflectionInfo": OK,
    # Join tokens are an admin's; an agent renews its own certificate (a real CSR below).
    _I + "CreateToken": DENIED, _I + "ListTokens": DENIED, _I + "RevokeToken": DENIED, _I + "RenewCertificate": OK,
    **_NOT_HERE,
}
_OWNER = {
    **{m: DENIED for m in _AGENT if m.startswith(_A)},
    **{_C + m: OK for m in ("Plan", "Submit", "SubmitAndWatch", "GetRun", "ListRuns", "WatchRun", "CancelRun",
                            "RetryRun", "ListAgents", "GetLogs", "Explain", "GetStageMetrics", "GetTrace",
                            "WatchEvents", "Lineage", "Resolve")},
    _C + "DrainAgent": DENIED, _C + "RevokeAgent": DENIED,
    **{m: code for m, code in _AGENT.items() if not m.startswith((_A, _C, _L))},
    _L + "ListAudit": DENIED, _L + "VerifyAudit": DENIED,  # artifacts, health, reflection
    _I + "RenewCertificate": DENIED,
}
# Another submitter: the target run and its code bundle do not exist, as far as it can tell.
_OTHER = {**_OWNER, **{_C + m: NOT_FOUND for m in ("GetRun", "WatchRun", "CancelRun", "RetryRun", "GetLogs",
                                                   "Explain", "GetStageMetrics", "GetTrace", "WatchEvents",
                                                   "Lineage", "Resolve")},
          _F + "Download": NOT_FOUND}
# Everything (there is no agent "nope" to drain; a name never seen may be revoked).
_ADMIN = {**_OWNER, _C + "DrainAgent": NOT_FOUND, _C + "RevokeAgent": OK, _L + "ListAudit": OK, _L + "VerifyAudit": OK,
          _I + "CreateToken": OK, _I + "ListTokens": OK, _I + "RevokeToken": NOT_FOUND}  # no token "nope"

EXPECTED: dict[str, dict[str, grpc.StatusCode]] = {
    "agent": _AGENT,
    "other agent": _AGENT,
    "submitter": _OWNER,
    "other submitter": _OTHER,
    "admin": _ADMIN,
    # Refused by the TLS handshake: no call gets through.
    "no cert": dict.fromkeys(_AGENT, UNAVAILABLE),
    "other CA": dict.fromkeys(_AGENT, UNAVAILABLE),
    "expired": dict.fromkeys(_AGENT, UNAVAILABLE),
    "not yet valid": dict.fromkeys(_AGENT, UNAVAILABLE),
    "no clientAuth EKU": dict.fromkeys(_AGENT, UNAVAILABLE),
    # Through the handshake, refused by the interceptor on every call.
    # (An RPC this port does not serve is UNIMPLEMENTED before any identity is looked at.)
    "wrong trust domain": {**dict.fromkeys(_AGENT, UNAUTHENTICATED), **_NOT_HERE},
    "two URI SANs": {**dict.fromkeys(_AGENT, UNAUTHENTICATED), **_NOT_HERE},
    "CA:TRUE leaf": {**dict.fromkeys(_AGENT, UNAUTHENTICATED), **_NOT_HERE},
    "chain through an intermediate": {**dict.fromkeys(_AGENT, UNAUTHENTICATED), **_NOT_HERE},
    # A valid agent certificate whose name an admin revoked (through RevokeAgent): refused on every call.
    "revoked": {**dict.fromkeys(_AGENT, UNAUTHENTICATED), **_NOT_HERE},
}
IDENTITIES = list(EXPECTED)


@dataclass
class Target:
    """What the RPCs name: the owner's run (its task waits for a label no agent has) and code."""

    run_id: str
    code: str


class Matrix:
    """A scheduler with no agents, the target run, and one channel per identity, reused."""

    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        self.cluster = cluster
        cluster.start_scheduler()
        self.channels: dict[str, grpc.Channel] = {}
        ca = cluster.pki / "ca.crt"
        for name, (role, who) in {"agent": ("agent", "edge-1"), "other agent": ("agent", "edge-2"),
                                  "submitter": ("submitter", "alice"), "other submitter": ("submitter", "mallory"),
                                  "admin": ("admin", "root")}.items():
            _, cert, key = cluster.issue(role, who)
            self._open(name, channel_credentials(ca, cert, key))
        self._open("no cert", grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
        other = tmp / "other-pki"
        pki.init_ca(other, cluster.trust_domain)
        pki.issue(other, "admin", "root")
        self._open("other CA", channel_credentials(ca, other / "root.crt", other / "root.key"))
        for name, (cert, key) in badcerts.bad_identities(cluster.pki, tmp / "bad", cluster.trust_domain).items():
            self._open(name, channel_credentials(ca, cert, key))
        _, cert, key = cluster.issue("agent", "edge-revoked")
        self._open("revoked", channel_credentials(ca, cert, key))
        revoked = control_pb2_grpc.ControlServiceStub(self.channels["admin"]).RevokeAgent(
            control_pb2.RevokeAgentRequest(agent="edge-revoked", reason="the matrix"), timeout=RPC_TIMEOUT)
        assert not revoked.already_revoked and not revoked.known
        owner = self.channels["submitter"]
        blob = b"code bundle of alice\n"
        digest = hashlib.sha256(blob).hexdigest()
        artifact_pb2_grpc.ArtifactServiceStub(owner).Upload(iter([artifact_pb2.UploadChunk(
            header=artifact_pb2.ArtifactHeader(digest=digest, size=len(blob), kind="file"), data=blob)]),
            timeout=RPC_TIMEOUT)
        run = control_pb2_grpc.ControlServiceStub(owner).Submit(
            control_pb2.SubmitRequest(pipeline=_spec("target", digest)), timeout=RPC_TIMEOUT)
        self.target = Target(run.run_id, digest)

    def _open(self, name: str, creds: grpc.ChannelCredentials) -> None:
        self.channels[name] = grpc.secure_channel(self.cluster.address, creds)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


def _spec(name: str, code: str = "") -> common_pb2.PipelineSpec:
    task = common_pb2.TaskSpec(name="t", argv=["true"], requires=common_pb2.Requirements(labels={"nowhere": "x"}))
    return common_pb2.PipelineSpec(name=name, code_digest=code, tasks=[task])


def _calls(target: Target) -> dict[str, tuple[Callable[[grpc.Channel], Any], Any]]:
    """Each RPC: (its stub method on a channel, a minimal valid request)."""
    agent, control = agent_pb2_grpc.AgentServiceStub, control_pb2_grpc.ControlServiceStub
    art, health = artifact_pb2_grpc.ArtifactServiceStub, health_pb2_grpc.HealthStub
    ident = identity_pb2_grpc.IdentityServiceStub
    run = target.run_id
    blob = b"x"
    header = artifact_pb2.ArtifactHeader(digest=hashlib.sha256(blob).hexdigest(), size=1, kind="file")
    lease = common_pb2.LeaseRef(run_id=run, task="t", epoch=1)
    return {
        _A + "Register": (lambda c: agent(c).Register,
                          agent_pb2.RegisterRequest(capabilities=common_pb2.Capabilities(slots=1))),
        _A + "Heartbeat": (lambda c: agent(c).Heartbeat, agent_pb2.HeartbeatRequest()),
        _A + "Connect": (lambda c: agent(c).Connect, iter([agent_pb2.AgentMessage()])),
        _A + "PollTasks": (lambda c: agent(c).PollTasks, agent_pb2.PollRequest(free_slots=0)),
        _A + "ReportLogs": (lambda c: agent(c).ReportLogs, agent_pb2.ReportLogsRequest()),
        _A + "Complete": (lambda c: agent(c).Complete, agent_pb2.CompleteRequest(
            completion=agent_pb2.Completion(lease=lease, outcome="succeeded"))),
        _A + "ReportCheckpoint": (lambda c: agent(c).ReportCheckpoint, agent_pb2.ReportCheckpointRequest(
            checkpoint=common_pb2.Checkpoint(lease=lease, digest=target.code, size=1, kind="file", seq=1))),
        _C + "Plan": (lambda c: control(c).Plan, control_pb2.PlanRequest(pipeline=_spec("plan"))),
        _C + "Submit": (lambda c: control(c).Submit, control_pb2.SubmitRequest(pipeline=_spec("more"))),
        _C + "SubmitAndWatch": (lambda c: control(c).SubmitAndWatch,
                                control_pb2.SubmitAndWatchRequest(pipeline=_spec("watched"))),
        _C + "GetRun": (lambda c: control(c).GetRun, control_pb2.GetRunRequest(run_id=run)),
        _C + "ListRuns": (lambda c: control(c).ListRuns, control_pb2.ListRunsRequest()),
        _C + "WatchRun": (lambda c: control(c).WatchRun, control_pb2.WatchRunRequest(run_id=run)),
        _C + "CancelRun": (lambda c: control(c).CancelRun, control_pb2.CancelRunRequest(run_id=run)),
        _C + "RetryRun": (lambda c: control(c).RetryRun, control_pb2.RetryRunRequest(run_id=run)),
        _C + "ListAgents": (lambda c: control(c).ListAgents, control_pb2.ListAgentsRequest()),
        _C + "GetLogs": (lambda c: control(c).GetLogs, control_pb2.GetLogsRequest(run_id=run, task="t")),
        _C + "Explain": (lambda c: control(c).Explain, control_pb2.ExplainRequest(run_id=run, task="t")),
        _C + "GetStageMetrics": (lambda c: control(c).GetStageMetrics,
                                 control_pb2.GetStageMetricsRequest(run_ids=[run])),
        _C + "GetTrace": (lambda c: control(c).GetTrace, control_pb2.GetTraceRequest(run_id=run)),
        _C + "WatchEvents": (lambda c: control(c).WatchEvents, control_pb2.WatchEventsRequest(run_id=run)),
        _C + "Lineage": (lambda c: control(c).Lineage, control_pb2.LineageRequest(digest=target.code)),
        _C + "Resolve": (lambda c: control(c).Resolve, control_pb2.ResolveRequest(prefix=run[:-2], kind="run")),
        _C + "DrainAgent": (lambda c: control(c).DrainAgent, control_pb2.DrainAgentRequest(agent="nope")),
        _C + "RevokeAgent": (lambda c: control(c).RevokeAgent, control_pb2.RevokeAgentRequest(agent="nope")),
        _L + "ListAudit": (lambda c: audit_pb2_grpc.AuditServiceStub(c).ListAudit, audit_pb2.ListAuditRequest()),
        _L + "VerifyAudit": (lambda c: audit_pb2_grpc.AuditServiceStub(c).VerifyAudit, audit_pb2.VerifyAuditRequest()),
        _I + "CreateToken": (lambda c: ident(c).CreateToken, identity_pb2.CreateTokenRequest()),
        _I + "ListTokens": (lambda c: ident(c).ListTokens, identity_pb2.ListTokensRequest()),
        _I + "RevokeToken": (lambda c: ident(c).RevokeToken, identity_pb2.RevokeTokenRequest(token_id="nope")),
        _I + "RenewCertificate": (lambda c: ident(c).RenewCertificate,
                                  identity_pb2.RenewCertificateRequest(csr_pem=new_key_and_csr("x")[2])),
        _E + "Enroll": (lambda c: identity_pb2_grpc.EnrollServiceStub(c).Enroll, identity_pb2.EnrollRequest()),
        _F + "Upload": (lambda c: art(c).Upload, iter([artifact_pb2.UploadChunk(header=header, data=blob)])),
        _F + "Download": (lambda c: art(c).Download, artifact_pb2.DownloadRequest(digest=target.code)),
        _F + "Stat": (lambda c: art(c).Stat, artifact_pb2.StatRequest(digest=target.code)),
        _F + "Probe": (lambda c: art(c).Probe, artifact_pb2.ProbeRequest(size=16)),
        _H + "Check": (lambda c: health(c).Check, health_pb2.HealthCheckRequest()),
        _H + "Watch": (lambda c: health(c).Watch, health_pb2.HealthCheckRequest()),
        _H + "List": (lambda c: health(c).List, health_pb2.HealthListRequest()),
        _R + "ServerReflectionInfo": (
            lambda c: reflection_pb2_grpc.ServerReflectionStub(c).ServerReflectionInfo,
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])),
    }


def _code(method: Any, request: Any) -> grpc.StatusCode:
    """The call's status; a stream counts as OK once its first message arrives (then it is cancelled)."""
    try:
        result = method(request, timeout=RPC_TIMEOUT)
        if isinstance(result, grpc.Call) and isinstance(result, Iterator):
            try:
                next(result)
            except StopIteration:
                pass
            finally:
                result.cancel()
    except grpc.RpcError as exc:
        return exc.code()
    return OK


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("enforcement")
    cluster = LocalCluster(tmp / "cluster", lease_ttl="3s", heartbeat_interval="0.5s")
    try:
        m = Matrix(cluster, tmp)
        yield m
        m.close()
    finally:
        cluster.stop()


def test_the_matrix_covers_every_rpc_in_the_table() -> None:
    assert {m for row in EXPECTED.values() for m in row} == set(RULES)
    assert all(set(row) == set(RULES) for row in EXPECTED.values())


@pytest.mark.parametrize("identity", IDENTITIES)
def test_every_rpc_answers_each_identity_as_the_table_says(matrix: Matrix, identity: str) -> None:
    channel = matrix.channels[identity]
    got = {}
    for method, (stub, request) in _calls(matrix.target).items():
        got[method] = _code(stub(channel), request)
    wrong = {m: f"{got[m].name} (expected {EXPECTED[identity][m].name})"
             for m in got if got[m] != EXPECTED[identity][m]}
    assert not wrong, wrong


def test_refusals_name_the_rule(matrix: Matrix) -> None:
    """An interceptor refusal says which SVID rule the certificate breaks, in a bounded message."""
    rules = {"two URI SANs": "2 URI SANs", "CA:TRUE leaf": "is a CA",
             "chain through an intermediate": "not signed by the scheduler's CA itself",
             "wrong trust domain": "not in trust domain"}
    for identity, words in rules.items():
        stub = control_pb2_grpc.ControlServiceStub(matrix.channels[identity])
        with pytest.raises(grpc.RpcError) as info:
            stub.ListRuns(control_pb2.ListRunsRequest(), timeout=RPC_TIMEOUT)
        assert info.value.code() == UNAUTHENTICATED
        assert words in info.value.details() and len(info.value.details()) < 300, info.value.details()


def test_a_revoked_agent_is_told_who_revoked_it_when(matrix: Matrix) -> None:
    """The refusal names the agent, the time and the admin (and the reason), and carries the
    metadata key the agent recognises it by."""
    stub = agent_pb2_grpc.AgentServiceStub(matrix.channels["revoked"])
    with pytest.raises(grpc.RpcError) as info:
        stub.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=RPC_TIMEOUT)
    assert info.value.code() == UNAUTHENTICATED
    details = info.value.details()
    assert details.startswith("agent edge-revoked was revoked at ") and " by spiffe://" in details, details
    assert "/admin/root (the matrix)" in details, details
    assert (REVOKED_METADATA_KEY, "edge-revoked") in tuple(info.value.trailing_metadata() or ())


def test_others_see_counts_not_contents(matrix: Matrix) -> None:
    run, code = matrix.target.run_id, matrix.target.code
    mine = control_pb2_grpc.ControlServiceStub(matrix.channels["submitter"]).ListRuns(
        control_pb2.ListRunsRequest(limit=1000), timeout=RPC_TIMEOUT)
    theirs = control_pb2_grpc.ControlServiceStub(matrix.channels["other submitter"]).ListRuns(
        control_pb2.ListRunsRequest(limit=1000), timeout=RPC_TIMEOUT)
    everyone = control_pb2_grpc.ControlServiceStub(matrix.channels["admin"]).ListRuns(
        control_pb2.ListRunsRequest(limit=1000), timeout=RPC_TIMEOUT)
    assert run in {r.run_id for r in mine.runs} and run not in {r.run_id for r in theirs.runs}
    assert all(r.submitter.endswith("/submitter/alice") for r in mine.runs)
    assert all(r.submitter.endswith("/submitter/mallory") for r in theirs.runs)
    assert everyone.others == 0 and len(everyone.runs) == len(mine.runs) + mine.others
    assert theirs.others == len(everyone.runs) - len(theirs.runs) > 0
    # Another's run reads exactly like a run that does not exist.
    stub = control_pb2_grpc.ControlServiceStub(matrix.channels["other submitter"])
    with pytest.raises(grpc.RpcError) as hidden:
        stub.GetRun(control_pb2.GetRunRequest(run_id=run), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetRun(control_pb2.GetRunRequest(run_id="r-nosuch"), timeout=RPC_TIMEOUT)
    assert hidden.value.details().replace(run, "X") == missing.value.details().replace("r-nosuch", "X")
    # And another's artifact is "absent" to Stat, like one never uploaded; the owner sees it.
    stat = artifact_pb2.StatRequest(digest=code)
    assert not artifact_pb2_grpc.ArtifactServiceStub(matrix.channels["other submitter"]).Stat(
        stat, timeout=RPC_TIMEOUT).exists
    assert artifact_pb2_grpc.ArtifactServiceStub(matrix.channels["submitter"]).Stat(stat, timeout=RPC_TIMEOUT).exists


def test_cli_runs_shows_how_many_runs_of_others_were_not_shown(matrix: Matrix) -> None:
    env = matrix.cluster.client_env("mallory")
    out = subprocess.run([sys.executable, "-m", "outrider.cli", "runs"], env=env, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "of other submitters not shown" in out.stdout, out.stdout
    out = subprocess.run([sys.executable, "-m", "outrider.cli", "runs", "--json"], env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and out.stdout.lstrip().startswith("["), out
    assert "of other submitters not shown" in out.stderr
