"""Looking at the scheduler's TLS from outside: the certificate a new connection gets, ``openssl
s_client`` runs, a new scheduler certificate from a CA directory, the scheduler log's lines.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import select
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from outrider import pki
from outrider.localcluster import LocalCluster, wait_for
from tests.helpers.badcerts import _write


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def peer_certificate(address: str, ca: Path, cert: Path, key: Path) -> x509.Certificate:
    """The certificate the scheduler presents to a new TLS connection (ours: ``cert``, ``key``),
    verified against ``ca``, after the server accepted us (it answered the HTTP/2 preface)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    host, port = host_port(address)
    with socket.create_connection((host, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        # A client certificate the server refuses shows after the handshake under TLS 1.3: one round trip.
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        if not tls.recv(9):
            raise ConnectionError("the scheduler closed the connection after the handshake")
    assert der is not None
    return x509.load_der_x509_certificate(der)


def serial_of(cert_path: Path) -> int:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


def scheduler_cert(ca_dir: Path, out: Path, *, not_before: datetime.datetime | None = None,
                   not_after: datetime.datetime | None = None, name: str = "scheduler") -> tuple[Path, Path]:
    """A scheduler certificate (localhost, 127.0.0.1; server and client auth) from the CA in ``ca_dir``,
    written to ``out/NAME.crt`` and ``out/NAME.key``."""
    ca_cert, ca_key, domain = pki.load_ca(ca_dir)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki._leaf_builder(
        subject_cn="scheduler",
        public_key=key.public_key(),
        issuer=ca_cert,
        not_before=not_before or now - datetime.timedelta(minutes=5),
        not_after=not_after or now + datetime.timedelta(days=30),
        sans=[
            x509.UniformResourceIdentifier(f"spiffe://{domain}/scheduler/scheduler"),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    ).sign(ca_key, hashes.SHA256())
    return _write(out, name, key, cert)


def install(src: Path, dst: Path) -> None:
    """Replace ``dst`` by a copy of ``src`` atomically (as an operator's ``install``/``mv`` would)."""
    tmp = dst.with_name(f".{dst.name}.new")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def log_count(cluster: LocalCluster, text: str) -> int:
    return (cluster.root / "logs" / "scheduler.log").read_text(errors="replace").count(text)


def sighup_and_wait(cluster: LocalCluster, text: str, timeout: float = 30.0) -> str:
    """SIGHUP the scheduler and wait for one more log line containing ``text``; returns that line."""
    import signal

    assert cluster.scheduler is not None
    before = log_count(cluster, text)
    cluster.scheduler.signal(signal.SIGHUP)
    wait_for(lambda: log_count(cluster, text) > before, timeout, f"the scheduler to log {text!r}", interval=0.05)
    assert cluster.scheduler.alive()
    lines = [ln for ln in (cluster.root / "logs" / "scheduler.log").read_text().splitlines() if text in ln]
    return lines[-1]


#: What an HTTP/2 client sends first: the preface and an empty SETTINGS frame (RFC 9113 3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def s_client(address: str, *args: str, timeout: float = 20.0) -> tuple[bytes, str, int | None]:
    """``openssl s_client -brief -connect ADDRESS ARGS`` sending the HTTP/2 preface once connected.

    Returns (the first bytes the scheduler sent back over TLS, at most one frame header's worth:
    b"" if it closed the connection first; s_client's report on stderr; its exit code, None when
    it was still connected and was ended here). ``-brief`` prints the protocol version, cipher
    and verification result to stderr, and keeps the connection open past the end of our input.
    """
    openssl = shutil.which("openssl")
    assert openssl, "the openssl binary is needed (make sysdeps installs it)"
    proc = subprocess.Popen(
        [openssl, "s_client", "-brief", "-connect", address, "-servername", "localhost", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    answer = b""
    try:
        proc.stdin.write(H2_PREFACE)
        proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while len(answer) < 9:
            left = deadline - time.monotonic()
            assert left > 0, f"s_client: no answer and no close within {timeout}s"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        rc = proc.poll() if not answer else None
        if rc is None and not answer:
            rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
    return answer, proc.stderr.read().decode(errors="replace"), rc


def is_settings_frame(header: bytes) -> bool:
    """Whether ``header`` is an HTTP/2 frame header of a SETTINGS frame (type 4): the server's
    first words once it accepted the connection."""
    return len(header) == 9 and header[3] == 0x04
