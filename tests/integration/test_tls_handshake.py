"""``openssl s_client`` (and a plain socket) against the running scheduler: what its TLS refuses.

Each refusal is asserted as it really happens, seen from both ends: the client's (``s_client
-brief`` reports; the HTTP/2 preface we send is answered with a SETTINGS frame only once the
scheduler accepted the connection) and the scheduler's (gRPC logs why the handshake failed;
GRPC_VERBOSITY=info makes sure it does). gRPC's BoringSSL sends no TLS alert: it closes the
connection. So:

* plaintext (HTTP/2 without TLS, gRPC's ``insecure_channel``): closed, nothing answered;
* TLS 1.1 (offered with ``-cipher DEFAULT@SECLEVEL=0``, else OpenSSL 3 will not even try it):
  the handshake fails, UNSUPPORTED_PROTOCOL;
* no client certificate: under TLS 1.2 the handshake fails; under TLS 1.3 the client finishes
  its side of the handshake ("CONNECTION ESTABLISHED": in 1.3 the client's certificate comes
  after the server's Finished), then the scheduler refuses it (PEER_DID_NOT_RETURN_A_CERTIFICATE)
  and closes before any request is read: no call is ever made;
* a certificate from another CA (same trust domain, same names): CERTIFICATE_VERIFY_FAILED;
* the control case, a valid agent certificate, TLS 1.2 and 1.3: verified, answered.
"""
from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider import pki
from outrider.localcluster import LocalCluster, wait_for
from tests.helpers.tlsprobe import H2_PREFACE, host_port, is_settings_frame, s_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sched(cluster: LocalCluster) -> LocalCluster:
    cluster.env["GRPC_VERBOSITY"] = "info"  # gRPC's log says why a handshake failed
    cluster.start_scheduler()
    return cluster


def _logged(cluster: LocalCluster, reason: str) -> bool:
    log = (cluster.root / "logs" / "scheduler.log").read_text(errors="replace")
    return any("Handshake failed" in line and reason in line for line in log.splitlines())


def _refused_for(cluster: LocalCluster, reason: str) -> None:
    wait_for(lambda: _logged(cluster, reason), 10, f"the scheduler to log a handshake failed with {reason}")


def _agent(cluster: LocalCluster) -> list[str]:
    ca, cert, key = cluster.issue("agent", "edge-1")
    return ["-CAfile", str(ca), "-cert", str(cert), "-key", str(key)]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_a_valid_agent_certificate_is_accepted(sched: LocalCluster, version: str) -> None:
    answer, report, rc = s_client(sched.address, version, "-alpn", "h2", *_agent(sched))
    assert is_settings_frame(answer), (answer, report)
    assert rc is None  # still connected when we ended it
    assert f"Protocol version: TLSv1.{version[-1]}" in report and "Verification: OK" in report


def test_plaintext_http2_is_refused(sched: LocalCluster) -> None:
    with socket.create_connection(host_port(sched.address), timeout=10) as raw:
        raw.sendall(H2_PREFACE)
        try:
            answer = raw.recv(64)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or not is_settings_frame(answer[:9]), answer
    with grpc.insecure_channel(sched.address) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_1_1_is_refused(sched: LocalCluster) -> None:
    answer, report, rc = s_client(sched.address, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-alpn", "h2",
                                  *_agent(sched))
    assert answer == b"" and rc != 0
    assert "CONNECTION ESTABLISHED" not in report, report
    _refused_for(sched, "UNSUPPORTED_PROTOCOL")


def test_no_client_certificate_is_refused(sched: LocalCluster) -> None:
    ca = _agent(sched)[:2]
    answer, report, rc = s_client(sched.address, "-tls1_2", "-alpn", "h2", *ca)
    assert answer == b"" and rc != 0 and "CONNECTION ESTABLISHED" not in report, report
    # TLS 1.3: the client's side completes, then the scheduler refuses and closes, before any request.
    answer, report, rc = s_client(sched.address, "-tls1_3", "-alpn", "h2", *ca)
    assert "CONNECTION ESTABLISHED" in report and "Protocol version: TLSv1.3" in report, report
    assert answer == b"" and rc != 0
    _refused_for(sched, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_a_certificate_from_another_ca_is_refused(sched: LocalCluster, tmp_path: Path, version: str) -> None:
    other = tmp_path / "other-ca"
    pki.init_ca(other, sched.trust_domain)  # same trust domain, same names: only the CA differs
    cert, key = pki.issue(other, "agent", "edge-1")
    answer, report, rc = s_client(sched.address, version, "-alpn", "h2", "-CAfile", str(sched.pki / "ca.crt"),
                                  "-cert", str(cert), "-key", str(key))
    assert answer == b"" and rc != 0, report
    _refused_for(sched, "CERTIFICATE_VERIFY_FAILED")
