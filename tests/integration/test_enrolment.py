"""Join tokens, zero-touch enrolment with CA pinning, and certificate renewal, against real processes.

A real scheduler with an enrolment port (``--enroll-listen``), the real ``outrider token`` CLI,
and real ``outrider-agent join`` processes: what they write, what they are refused (and that
the refusals are audited), that a wrong pin stops before the token is spent, and that an agent
whose certificate lives a few seconds renews it under a running stage without losing its lease.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.enroll import new_key_and_csr
from outrider import pki
from outrider.certdates import read_dates
from outrider.localcluster import Daemon, LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2, agent_pb2_grpc, identity_pb2, identity_pb2_grpc

pytestmark = pytest.mark.timeout(150)


def start(cluster: LocalCluster, *extra: str) -> str:
    """Start the scheduler with an enrolment port; returns that port's address."""
    cluster.start_scheduler(["--enroll-listen", "127.0.0.1:0", *extra])
    log = cluster.root / "logs" / "scheduler.log"

    def address() -> str | None:
        found = re.findall(r"enrolment serving on (\S+)", log.read_text())
        return found[-1] if found else None

    return wait_for(address, 20, "the enrolment port")


def cli(cluster: LocalCluster, role: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    ca, cert, key = cluster.issue(role, name)
    env = {**cluster.env, "OUTRIDER_SCHEDULER": cluster.address, "OUTRIDER_CA": str(ca), "OUTRIDER_CERT": str(cert),
           "OUTRIDER_KEY": str(key)}
    return subprocess.run([sys.executable, "-m", "outrider.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def create_token(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    res = cli(cluster, "admin", "root", "token", "create", "--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def fingerprint(cluster: LocalCluster) -> str:
    res = subprocess.run([sys.executable, "-m", "outrider.cli", "pki", "fingerprint", str(cluster.pki)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def join_argv(enroll: str, token: str, pin: str, name: str, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agent.main", "join", "--scheduler", enroll, "--token", token,
            "--ca-fingerprint", pin, "--name", name, "--state-dir", str(state), *extra]


def join(cluster: LocalCluster, enroll: str, token: str, name: str, *extra: str,
         pin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = join_argv(enroll, token, pin or fingerprint(cluster), name, cluster.root / "joined" / name,
                     "--enroll-only", *extra)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=cluster.env)


def tokens(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    res = cli(cluster, "admin", "root", "token", "list", "--json")
    assert res.returncode == 0, res.stderr
    return {t["token_id"]: t for t in json.loads(res.stdout)}


def enrol_records(cluster: LocalCluster) -> list[dict[str, Any]]:
    res = cli(cluster, "admin", "root", "audit", "--json")
    assert res.returncode == 0, res.stderr
    return [r for r in json.loads(res.stdout) if r["action"] == "enrol"]


def test_only_an_admin_makes_tokens_and_it_is_audited(cluster: LocalCluster) -> None:
    start(cluster)
    refused = cli(cluster, "submitter", "alice", "token", "create")
    assert refused.returncode == 4, refused
    assert "may not call /outrider.v1.IdentityService/CreateToken" in refused.stderr, refused
    made = create_token(cluster, "--labels", "site=lab,gpu=a100", "--zones", "eu,eu-west", "--ttl", "10m",
                        "--uses", "3")
    token_id, _, secret = made["token"].partition(".")
    assert token_id == made["token_id"] and len(secret) == 43
    assert made["labels"] == {"site": "lab", "gpu": "a100"} and made["zones"] == ["eu", "eu-west"]
    assert made["uses_left"] == 3
    listed = tokens(cluster)[token_id]
    assert "token" not in listed and secret not in json.dumps(listed)  # the secret is shown once
    res = cli(cluster, "admin", "root", "audit", "--json")
    created = [r for r in json.loads(res.stdout) if r["action"] == "token_create"]
    assert [r["target"] for r in created] == [token_id]
    assert created[0]["identity"].endswith("/admin/root") and secret not in res.stdout
    # Bad values are refused with the reason.
    bad = cli(cluster, "admin", "root", "token", "create", "--zones", "eu west")
    assert bad.returncode != 0 and "zone" in bad.stderr, bad


def test_join_enroll_only_writes_a_key_of_its_own_and_a_certificate_from_the_token(cluster: LocalCluster) -> None:
    enroll = start(cluster)
    made = create_token(cluster, "--labels", "site=lab", "--zones", "eu")
    res = join(cluster, enroll, made["token"], "edge-7")
    assert res.returncode == 0, res.stderr
    assert "spiffe://outrider.local/agent/edge-7" in res.stdout
    state = cluster.root / "joined" / "edge-7"
    key = state / "pki" / "agent.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ident = pki.identity_from_pem((state / "pki" / "agent.crt").read_bytes())
    assert ident.spiffe_id == "spiffe://outrider.local/agent/edge-7" and ident.zones == frozenset({"eu"})
    assert (state / "pki" / "ca.crt").read_bytes() == (cluster.pki / "ca.crt").read_bytes()
    config = (state / "agent.toml").read_text()
    assert f'scheduler = "{cluster.address}"' in config and '"site" = "lab"' in config
    # The key never left the box: the scheduler's state holds no private key.
    for path in (cluster.root / "scheduler").rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert tokens(cluster)[made["token_id"]]["uses_left"] == 0
    (ok,) = enrol_records(cluster)
    assert (ok["identity"], ok["target"], ok["outcome"]) == (f"token:{made['token_id']}", "edge-7", "ok")
    # The state dir now holds an enrolment: joining it again is refused unless --force.
    again = join(cluster, enroll, create_token(cluster)["token"], "edge-7")
    assert again.returncode == 2 and "already holds an enrolment" in again.stderr and "--force" in again.stderr


def test_reused_expired_and_wrong_tokens_are_refused_and_audited(cluster: LocalCluster) -> None:
    enroll = start(cluster)
    once = create_token(cluster)
    assert join(cluster, enroll, once["token"], "first").returncode == 0
    reused = join(cluster, enroll, once["token"], "second")
    assert reused.returncode == 2 and "PERMISSION_DENIED" in reused.stderr and "used up" in reused.stderr
    short = create_token(cluster, "--ttl", "1s")
    wait_for(lambda: time.time() > short["expires_at"] + 0.2, 10, "the token to expire")
    expired = join(cluster, enroll, short["token"], "third")
    assert expired.returncode == 2 and "expired" in expired.stderr
    wrong_secret = once["token_id"] + "." + "A" * 43
    wrong = join(cluster, enroll, wrong_secret, "fourth")
    unknown = join(cluster, enroll, "0123456789abcdef." + "B" * 43, "fifth")
    assert wrong.returncode == unknown.returncode == 2
    # A wrong secret and an unknown id read the same: no oracle for which ids exist.
    assert "invalid join token" in wrong.stderr and "invalid join token" in unknown.stderr
    assert wrong.stderr.splitlines()[-1] == unknown.stderr.splitlines()[-1]
    malformed = join(cluster, enroll, "not-a-token", "sixth")
    assert malformed.returncode == 2 and "malformed join token" in malformed.stderr
    for name in ("second", "third", "fourth", "fifth", "sixth"):
        assert not (cluster.root / "joined" / name / "pki" / "agent.crt").exists()
    records = {r["target"]: r for r in enrol_records(cluster)}
    assert records["first"]["outcome"] == "ok"
    for name, words in {"second": "used up", "third": "expired", "fourth": "invalid", "fifth": "invalid",
                        "sixth": "malformed"}.items():
        assert records[name]["outcome"] == "PERMISSION_DENIED" and words in records[name]["detail"], records[name]


def test_a_wrong_fingerprint_aborts_before_the_token_is_sent(cluster: LocalCluster, tmp_path: Path) -> None:
    enroll = start(cluster)
    made = create_token(cluster)
    other = tmp_path / "other-ca"
    pki.init_ca(other, "outrider.local")
    wrong_pin = pki.fingerprint((other / "ca.crt").read_bytes())
    res = join(cluster, enroll, made["token"], "edge-x", pin=wrong_pin)
    assert res.returncode == 2, res
    assert f"expected {wrong_pin}" in res.stderr and fingerprint(cluster) in res.stderr
    assert "the token was not sent" in res.stderr
    assert tokens(cluster)[made["token_id"]]["uses_left"] == 1  # still unused
    assert enrol_records(cluster) == []  # the scheduler never heard of it
    # The pin's forms: bare and colon-separated hex work as well.
    pin = fingerprint(cluster).removeprefix("sha256:")
    colons = ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()
    assert join(cluster, enroll, made["token"], "edge-y", pin=colons).returncode == 0


def test_the_enrolment_port_serves_enrolment_only(cluster: LocalCluster) -> None:
    enroll = start(cluster)
    creds = grpc.ssl_channel_credentials(root_certificates=(cluster.pki / "ca.crt").read_bytes())
    with grpc.secure_channel(enroll, creds) as channel:
        with pytest.raises(grpc.RpcError) as info:
            agent_pb2_grpc.AgentServiceStub(channel).Register(agent_pb2.RegisterRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as info:
            identity_pb2_grpc.IdentityServiceStub(channel).CreateToken(identity_pb2.CreateTokenRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # bytes that are no EnrollRequest
            channel.unary_unary("/outrider.v1.EnrollService/Enroll")(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:  # a bad CSR is refused before the token is looked at
            identity_pb2_grpc.EnrollServiceStub(channel).Enroll(
                identity_pb2.EnrollRequest(token="x", name="n", csr_pem=b"junk"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "csr_pem" in info.value.details()


def test_enrolment_needs_the_ca_key(cluster: LocalCluster) -> None:
    cluster.init_pki()
    (cluster.pki / "ca.key").rename(cluster.root / "ca.key.away")
    with pytest.raises(Exception, match="exited"):
        cluster.start_scheduler(["--enroll-listen", "127.0.0.1:0"], timeout=20)
    assert "ca.key" in cluster.scheduler.tail() and "missing" in cluster.scheduler.tail()  # type: ignore[union-attr]


def test_a_joined_agent_serves_and_renews_its_short_lived_certificate_under_a_running_stage(
    cluster: LocalCluster,
) -> None:
    enroll = start(cluster, "--agent-cert-ttl", "6s")
    made = create_token(cluster, "--labels", "pool=joined", "--zones", "eu")
    state = cluster.root / "joined" / "edge-r"
    argv = join_argv(enroll, made["token"], fingerprint(cluster), "edge-r", state, "--slots", "2")
    agent = Daemon("edge-r", argv, cluster.root / "logs" / "agent-edge-r.log", cluster.env)
    agent.start()
    cluster.agents["edge-r"] = agent
    cluster.wait_agents(["edge-r"], timeout=60)
    cert = state / "pki" / "agent.crt"
    with cluster.client() as client:
        p = Pipeline("across-renewal")
        p.task("long", run="sleep 9 && echo done", requires={"labels": {"pool": "joined"}})
        run_id = client.submit(p).run_id
        wait_for(lambda: client.get_run(run_id).tasks[0].state == "running", 30, "the stage to start")
        first = read_dates(cert).serial  # the certificate the stage started under
        status = client.wait(run_id, timeout=90)
    assert status.state == "succeeded", status
    (task,) = status.tasks
    assert task.agent == "edge-r" and task.attempts == 1 and len(task.history) == 1  # the lease was kept
    assert agent.alive() and agent.pid == cluster.agents["edge-r"].pid  # no restart
    assert read_dates(cert).serial != first
    log = agent.log_path.read_text()
    assert "certificate renewed" in log and "valid until" in log
    assert pki.identity_from_pem(cert.read_bytes()).zones == frozenset({"eu"})  # renewed with its zones
    assert stat.S_IMODE((state / "pki" / "agent.key").stat().st_mode) == 0o600
    res = cli(cluster, "admin", "root", "audit", "--json")
    renewals = [r for r in json.loads(res.stdout) if r["action"] == "cert_renew"]
    assert renewals and all(r["identity"].endswith("/agent/edge-r") and r["target"] == "edge-r" for r in renewals)
    assert os.path.exists(state / "agent.toml")


def test_a_revoked_name_and_a_connected_agent_name_are_refused(cluster: LocalCluster) -> None:
    enroll = start(cluster)
    cluster.add_agent("busy", labels={"pool": "p"})
    cluster.wait_agents(["busy"])
    assert cli(cluster, "admin", "root", "revoke", "agent", "gone", "--reason", "stolen").returncode == 0
    made = create_token(cluster, "--uses", "3")
    revoked = join(cluster, enroll, made["token"], "gone")
    assert revoked.returncode == 2 and "'gone' may not enrol: it is revoked" in revoked.stderr, revoked
    live = join(cluster, enroll, made["token"], "busy")
    assert live.returncode == 2 and "connected now" in live.stderr, live
    assert tokens(cluster)[made["token_id"]]["uses_left"] == 3  # a refusal spends nothing
    records = {r["target"]: r for r in enrol_records(cluster)}
    assert records["gone"]["outcome"] == records["busy"]["outcome"] == "PERMISSION_DENIED"
    assert join(cluster, enroll, made["token"], "fresh").returncode == 0
    assert tokens(cluster)[made["token_id"]]["uses_left"] == 2


def test_renewal_without_the_ca_key_is_a_failed_precondition_naming_it(cluster: LocalCluster) -> None:
    ca, cert, key = cluster.issue("agent", "edge-k")
    (cluster.pki / "ca.key").rename(cluster.root / "ca.key.away")  # an offline CA: no enrolment port either
    cluster.start_scheduler()
    from outrider.tls import channel_credentials

    request = identity_pb2.RenewCertificateRequest(csr_pem=new_key_and_csr("edge-k")[2])
    channel = grpc.secure_channel(cluster.address, channel_credentials(ca, cert, key))
    with channel, pytest.raises(grpc.RpcError) as info:
        identity_pb2_grpc.IdentityServiceStub(channel).RenewCertificate(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ca.key" in info.value.details() and "missing" in info.value.details()
