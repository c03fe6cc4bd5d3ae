"""Tests for outrider.tls against a real gRPC server with real certificates.

These also pin down, empirically, which ``auth_context()`` keys gRPC provides
for an mTLS peer (see the module docstring of outrider.tls).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from outrider import pki, tls
from outrider.errors import ConfigError

DOMAIN = "acme.ml"
WHOAMI = "/outrider.test.Whoami/Who"
RPC_TIMEOUT = 10.0


class _Recorder:
    """Keeps what the handler saw, for assertions in the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.auth_contexts: list[dict[str, list[bytes]]] = []

    def who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        with self.lock:
            self.auth_contexts.append(auth)
        ident = tls.identity_from_auth_context(auth)
        return (ident.spiffe_id if ident else "anonymous").encode()


@pytest.fixture()
def pki_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d, DOMAIN)
    pki.issue(d, "agent", "gpu-1")
    pki.issue(d, "submitter", "alice")
    return d


@pytest.fixture()
def server(pki_dir: Path) -> Iterator[tuple[int, _Recorder]]:
    """A real mTLS server on 127.0.0.1 with the health service and a whoami method."""
    recorder = _Recorder()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=tls.SERVER_OPTIONS)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, srv)
    srv.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "outrider.test.Whoami", {"Who": grpc.unary_unary_rpc_method_handler(recorder.who)}
            ),
        )
    )
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(*tls.pki_paths(pki_dir, "scheduler")))
    assert port > 0
    srv.start()
    try:
        yield port, recorder
    finally:
        srv.stop(grace=None).wait(RPC_TIMEOUT)


def _channel(target: str, creds: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(target, creds, options=tls.DEFAULT_CHANNEL_OPTIONS)


def _check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT).status


def _who(channel: grpc.Channel) -> str:
    return channel.unary_unary(WHOAMI)(b"", timeout=RPC_TIMEOUT).decode()


# ------------------------------------------------------------------ handshakes


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_client_with_cert_from_ca_can_call_health_check(pki_dir: Path, server: tuple[int, _Recorder], host: str) -> None:
    port, _ = server
    with _channel(f"{host}:{port}", tls.channel_credentials(*tls.pki_paths(pki_dir, "gpu-1"))) as ch:
        assert _check(ch) == health_pb2.HealthCheckResponse.SERVING


def test_client_without_cert_is_refused(pki_dir: Path, server: tuple[int, _Recorder]) -> None:
    port, _ = server
    creds = grpc.ssl_channel_credentials(root_certificates=(pki_dir / "ca.crt").read_bytes())
    with _channel(f"localhost:{port}", creds) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _check(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_with_cert_from_another_ca_is_refused(tmp_path: Path, pki_dir: Path, server: tuple[int, _Recorder]) -> None:
    port, _ = server
    other = tmp_path / "other"
    pki.init_ca(other, DOMAIN)  # same trust domain, different CA: the name alone must not be enough
    pki.issue(other, "admin", "mallory")
    # Trusts the real CA (so it would accept the server) but presents a foreign cert.
    ca_pem = (pki_dir / "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=(other / "mallory.key").read_bytes(),
        certificate_chain=(other / "mallory.crt").read_bytes(),
    )
    with _channel(f"localhost:{port}", creds) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _check(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_from_another_ca(tmp_path: Path, pki_dir: Path, server: tuple[int, _Recorder]) -> None:
    port, _ = server
    other = tmp_path / "other"
    pki.init_ca(other, DOMAIN)
    pki.issue(other, "agent", "gpu-1")
    with _channel(f"localhost:{port}", tls.channel_credentials(*tls.pki_paths(other, "gpu-1"))) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _check(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_host_name_not_in_the_server_cert(pki_dir: Path, server: tuple[int, _Recorder]) -> None:
    port, _ = server
    creds = tls.channel_credentials(*tls.pki_paths(pki_dir, "gpu-1"))
    # Connect to 127.0.0.1 but verify the certificate against a name it lacks.
    ch = grpc.secure_channel(
        f"127.0.0.1:{port}", creds,
        options=tls.DEFAULT_CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", "sched.example")],
    )
    with ch:
        with pytest.raises(grpc.RpcError) as info:
            _check(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------ identity


@pytest.mark.parametrize(
    "name, expected",
    [("gpu-1", f"spiffe://{DOMAIN}/agent/gpu-1"), ("alice", f"spiffe://{DOMAIN}/submitter/alice"),
     ("scheduler", f"spiffe://{DOMAIN}/scheduler/scheduler")],
)
def test_identity_from_auth_context_inside_a_handler(
    pki_dir: Path, server: tuple[int, _Recorder], name: str, expected: str
) -> None:
    port, recorder = server
    with _channel(f"localhost:{port}", tls.channel_credentials(*tls.pki_paths(pki_dir, name))) as ch:
        assert _who(ch) == expected
    auth = recorder.auth_contexts[-1]
    # What gRPC 1.85 provides, verified here so a gRPC upgrade that changes it is noticed.
    assert auth["transport_security_type"] == [b"ssl"]
    assert auth["peer_uri"] == [expected.encode()]
    assert expected.encode() in auth["x509_subject_alternative_name"]
    assert auth["x509_pem_cert"][0].startswith(b"-----BEGIN CERTIFICATE-----")
    assert pki.identity_from_pem(auth["x509_pem_cert"][0]).spiffe_id == expected
    if name != "scheduler":
        # Issued certs carry exactly one URI SAN, so gRPC also sets peer_spiffe_id.
        assert auth["x509_subject_alternative_name"] == [expected.encode()]
        assert auth["peer_spiffe_id"] == [expected.encode()]


def test_identity_from_auth_context_with_grpc_aio(pki_dir: Path) -> None:
    """The same through grpc.aio, which the daemons may use."""

    async def main() -> tuple[str, str]:
        seen: list[Any] = []

        async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            ident = tls.identity_from_auth_context(context.auth_context())
            seen.append(ident)
            return (ident.spiffe_id if ident else "anonymous").encode()

        srv = grpc.aio.server(options=tls.SERVER_OPTIONS)
        srv.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("outrider.test.Whoami", {"Who": grpc.unary_unary_rpc_method_handler(who)}),)
        )
        port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(*tls.pki_paths(pki_dir, "scheduler")))
        await srv.start()
        try:
            creds = tls.channel_credentials(*tls.pki_paths(pki_dir, "gpu-1"))
            async with grpc.aio.secure_channel(f"localhost:{port}", creds, options=tls.DEFAULT_CHANNEL_OPTIONS) as ch:
                reply = await ch.unary_unary(WHOAMI)(b"", timeout=RPC_TIMEOUT)
        finally:
            await srv.stop(None)
        return reply.decode(), seen[0].role

    assert asyncio.run(main()) == (f"spiffe://{DOMAIN}/agent/gpu-1", "agent")


def test_identity_from_auth_context_without_tls_is_none() -> None:
    assert tls.identity_from_auth_context({}) is None
    assert tls.identity_from_auth_context(None) is None
    assert tls.identity_from_auth_context({"transport_security_type": [b"insecure"]}) is None


def test_identity_from_auth_context_falls_back_to_the_pem(pki_dir: Path) -> None:
    pem = (pki_dir / "gpu-1.crt").read_bytes()
    ident = tls.identity_from_auth_context({"x509_pem_cert": [pem]})
    assert ident == pki.Identity(DOMAIN, "agent", "gpu-1")
    # The mixed SAN list is used when peer_uri is absent.
    sched = tls.identity_from_auth_context(
        {"x509_subject_alternative_name": [b"localhost", b"127.0.0.1", b"spiffe://acme.ml/scheduler/scheduler"]}
    )
    assert sched == pki.Identity(DOMAIN, "scheduler", "scheduler")


def test_identity_from_auth_context_rejects_bad_identities(pki_dir: Path) -> None:
    pem = (pki_dir / "gpu-1.crt").read_bytes()
    two = {"x509_pem_cert": [pem], "peer_uri": [b"spiffe://acme.ml/agent/a", b"spiffe://acme.ml/admin/b"]}
    assert tls.identity_from_auth_context(two) is None
    assert tls.identity_from_auth_context({"peer_uri": [b"spiffe://acme.ml/wizard/a"]}) is None
    assert tls.identity_from_auth_context({"peer_uri": [b"spiffe://acme.ml/agent/a/b"]}) is None
    assert tls.identity_from_auth_context({"x509_pem_cert": [b"not a cert"]}) is None
    # A cert whose URI SAN is not ours: gRPC lists the URI but it is not spiffe://.
    assert tls.identity_from_auth_context({"peer_uri": [b"https://example.com/x"]}) is None


def test_identity_from_auth_context_is_cached(pki_dir: Path) -> None:
    pem = (pki_dir / "alice.crt").read_bytes()
    ctx = {"x509_pem_cert": [pem], "peer_uri": [b"spiffe://acme.ml/submitter/alice"]}
    tls.identity_from_auth_context(ctx)
    hits = tls._identity_cached.cache_info().hits
    # A new dict with equal but distinct bytes objects, as gRPC builds per call.
    again = {k: [bytes(bytearray(v)) for v in vs] for k, vs in ctx.items()}
    assert tls.identity_from_auth_context(again) == pki.Identity(DOMAIN, "submitter", "alice")
    assert tls._identity_cached.cache_info().hits == hits + 1


# ------------------------------------------------------------------ files, options, imports


def test_pki_paths(tmp_path: Path) -> None:
    assert tls.pki_paths(tmp_path, "gpu-1") == (tmp_path / "ca.crt", tmp_path / "gpu-1.crt", tmp_path / "gpu-1.key")
    assert tls.pki_paths(str(tmp_path), "x")[0] == tmp_path / "ca.crt"


def test_read_pem_files(pki_dir: Path) -> None:
    ca, crt, key = tls.read_pem_files(*tls.pki_paths(pki_dir, "gpu-1"))
    assert ca.startswith(b"-----BEGIN CERTIFICATE")
    assert crt.startswith(b"-----BEGIN CERTIFICATE")
    assert key.startswith(b"-----BEGIN PRIVATE KEY")


def test_read_pem_files_names_the_missing_file(pki_dir: Path) -> None:
    ca, crt, key = tls.pki_paths(pki_dir, "gpu-1")
    with pytest.raises(ConfigError, match=rf"{pki_dir / 'nope.key'}: private key not found"):
        tls.read_pem_files(ca, crt, pki_dir / "nope.key")
    with pytest.raises(ConfigError, match=r"nope\.crt: certificate not found"):
        tls.read_pem_files(ca, pki_dir / "nope.crt", key)
    with pytest.raises(ConfigError, match=r"CA certificate not found"):
        tls.server_credentials(pki_dir / "none.crt", crt, key)
    with pytest.raises(ConfigError, match=r"private key not found"):
        tls.channel_credentials(ca, crt, pki_dir / "nope.key")


def test_read_pem_files_other_errors(pki_dir: Path) -> None:
    ca, crt, key = tls.pki_paths(pki_dir, "gpu-1")
    with pytest.raises(ConfigError, match=rf"{pki_dir}: CA certificate is a directory"):
        tls.read_pem_files(pki_dir, crt, key)
    (pki_dir / "junk.crt").write_bytes(b"\x00\x01binary")
    with pytest.raises(ConfigError, match=r"junk\.crt: certificate is not a PEM file"):
        tls.read_pem_files(ca, pki_dir / "junk.crt", key)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a mode-000 file")
def test_read_pem_files_unreadable(pki_dir: Path) -> None:
    ca, crt, key = tls.pki_paths(pki_dir, "gpu-1")
    os.chmod(key, 0)
    with pytest.raises(ConfigError, match=r"gpu-1\.key: private key is not readable"):
        tls.read_pem_files(ca, crt, key)


def test_read_pem_files_permission_error_is_a_config_error(pki_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too (where a real mode-000 file stays readable): simulate EACCES.
    ca, crt, key = tls.pki_paths(pki_dir, "gpu-1")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == key:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ConfigError, match=r"gpu-1\.key: private key is not readable by this user"):
        tls.read_pem_files(ca, crt, key)


def test_keepalive_options_are_consistent() -> None:
    client = dict(tls.DEFAULT_CHANNEL_OPTIONS)
    server = dict(tls.SERVER_OPTIONS)
    assert 15_000 <= client["grpc.keepalive_time_ms"] <= 30_000
    assert client["grpc.keepalive_timeout_ms"] <= 10_000
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0
    # The server must tolerate the client's pings, or it sends GOAWAY too_many_pings.
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
    for opts in (client, server):
        assert opts["grpc.max_send_message_length"] == opts["grpc.max_receive_message_length"] == 64 * 1024 * 1024


def test_tls_module_does_not_import_cryptography() -> None:
    # A fresh interpreter: the agent imports outrider.tls and must stay small.
    code = (
        "import sys, outrider.tls\n"
        "bad = sorted(m for m in sys.modules if m == 'outrider.pki' or m.split('.')[0] == 'cryptography')\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
