"""``outrider-agent join``: enrol this machine with a join token, pinning the scheduler's CA.

Steps, and what each one guards against::

    1. refuse a state dir that already holds an enrolment (unless --force)
    2. open TLS to the enrolment port WITHOUT verification, read the server's chain, and find
       the certificate whose sha256(DER) is the pin; it must be a CA and must have signed the
       server's leaf. A mismatch aborts here: the token has not been sent anywhere.
    3. make a key here (EC P-256; written 0600, never sent) and a CSR for it
    4. Enroll over gRPC whose only root is the pinned CA (so the scheduler's certificate is
       checked, host name included, against the CA the pin names), sending the token
    5. check the answer (the certificate is for our key, signed by the pinned CA, names the
       agent we asked for), then write STATE/pki/{ca.crt,agent.crt,agent.key} and
       STATE/agent.toml (the scheduler's mTLS address, the paths, the token's labels)

Python's ``ssl`` module is needed for step 2 only (gRPC does not show a peer's chain); the
agent that serves later (``outrider-agent --config STATE/agent.toml``) does not load it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outrider.errors import FailedPrecondition, InvalidArgument, OutriderError
from outrider.pki import parse_fingerprint, validate_name
from outrider.statedir import StateDirLock

#: How long the pinning handshake and the Enroll call may take.
CONNECT_TIMEOUT_S = 15.0
ENROLL_TIMEOUT_S = 30.0
CONFIG_NAME = "agent.toml"


class PinMismatch(OutriderError):
    """Raised when the enrolment port does not show the CA the pin names (the token is not sent)."""

    code = "PERMISSION_DENIED"


@dataclass(frozen=True)
class Enrolled:
    config: Path  # STATE/agent.toml
    spiffe_id: str
    scheduler: str  # the mTLS address written into the config
    not_after: float
    labels: dict[str, str]
    zones: list[str]


def paths(state_dir: Path) -> dict[str, Path]:
    pki = state_dir / "pki"
    return {
        "ca": pki / "ca.crt",
        "cert": pki / "agent.crt",
        "key": pki / "agent.key",
        "config": state_dir / CONFIG_NAME,
    }


def server_chain(address: str, timeout: float = CONNECT_TIMEOUT_S) -> list[bytes]:
    """The DER certificates the TLS server at ``address`` (HOST:PORT) sends, leaf first, unverified."""
    import ssl

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted yet: the pin decides, below
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            # Python 3.13 makes it public; 3.11 and 3.12 have it on the SSLObject
            getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]
            chain = getter() or []
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise FailedPrecondition(f"cannot open TLS to the enrolment port {address}: {exc}") from None
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]


def pinned_ca(chain: list[bytes], pin: str, address: str) -> bytes:
    """The PEM of the CA in ``chain`` whose fingerprint is ``pin``, checked to be a CA that signed
    the leaf; PinMismatch (expected vs got) otherwise."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    got = ["sha256:" + hashlib.sha256(der).hexdigest() for der in chain]
    if pin not in got:
        raise PinMismatch(
            f"the enrolment port {address} does not show the pinned CA: expected {pin}, got "
            f"{', '.join(got) or 'no certificates'} (check --ca-fingerprint against `outrider pki fingerprint DIR` "
            "on the CA's machine); the token was not sent"
        )
    ca = x509.load_der_x509_certificate(chain[got.index(pin)])
    leaf = x509.load_der_x509_certificate(chain[0])
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PinMismatch(
            f"the pinned certificate {pin} is not a CA (no BasicConstraints CA:TRUE); the token was not sent"
        )
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as exc:
        raise PinMismatch(
            f"the enrolment port's certificate was not signed by the pinned CA {pin} ({exc}); the token was not sent"
        ) from None
    return ca.public_bytes(serialization.Encoding.PEM)


def new_key_and_csr(name: str) -> tuple[Any, bytes, bytes]:
    """(key, key PEM, CSR PEM): an EC P-256 key made here, and a CSR for it (the scheduler uses only its key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, key_pem, csr.public_bytes(serialization.Encoding.PEM)


def check_issued(cert_pem: bytes, key: Any, ca_pem: bytes) -> Any:
    """The certificate, if it is for ``key`` and signed by the CA; else FailedPrecondition."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cas = x509.load_pem_x509_certificates(ca_pem)  # a bundle during a CA rotation: one of them signed it
        for i, ca in enumerate(cas):
            try:
                cert.verify_directly_issued_by(ca)
                break
            except Exception:
                if i == len(cas) - 1:
                    raise
    except Exception as exc:
        raise FailedPrecondition(f"the scheduler's certificate for this agent does not check out: {exc}") from None
    fmt, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(fmt, spki) != key.public_key().public_bytes(fmt, spki):
        raise FailedPrecondition("the scheduler's certificate is not for this agent's key")
    return cert


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (a fresh temporary file with ``mode``, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _toml(value: str) -> str:
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def config_text(scheduler: str, files: dict[str, Path], name: str, state_dir: Path, labels: dict[str, str]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# written by `outrider-agent join` at {when}; the certificate is renewed in place",
        f"scheduler = {_toml(scheduler)}",
        f"ca = {_toml(str(files['ca']))}",
        f"cert = {_toml(str(files['cert']))}",
        f"key = {_toml(str(files['key']))}",
        f"name = {_toml(name)}",
        f"state_dir = {_toml(str(state_dir))}",
        "",
        "[labels]  # from the join token",
        *(f"{_toml(k)} = {_toml(v)}" for k, v in sorted(labels.items())),
    ]
    return "\n".join(lines) + "\n"


def join(scheduler: str, token: str, fingerprint: str, name: str, state_dir: Path, force: bool = False) -> Enrolled:
    """Enrol this machine (see the module docstring); returns what was written."""
    from outrider.config import parse_address

    pin = parse_fingerprint(fingerprint)
    validate_name(name)
    try:
        host, _ = parse_address(scheduler)
    except ValueError as exc:
        raise InvalidArgument(f"--scheduler: {exc}") from None
    state_dir = state_dir.absolute()
    files = paths(state_dir)
    # Nothing else may use the state dir meanwhile (a running agent would be left with files it did not expect).
    lock = StateDirLock(state_dir).acquire("agent (or join)")
    try:
        return _enrol(scheduler, host, token, pin, name, state_dir, files, force)
    finally:
        lock.release()


def _enrol(
    scheduler: str, host: str, token: str, pin: str, name: str, state_dir: Path, files: dict[str, Path], force: bool
) -> Enrolled:
    import grpc

    from outrider.v1 import identity_pb2, identity_pb2_grpc

    held = [p for p in (files["config"], files["cert"], files["key"]) if p.exists()]
    if held and not force:
        raise FailedPrecondition(
            f"{state_dir} already holds an enrolment ({', '.join(str(p) for p in held)}); "
            "join with --force to replace it, or use another --state-dir"
        )
    ca_pem = pinned_ca(server_chain(scheduler), pin, scheduler)
    key, key_pem, csr_pem = new_key_and_csr(name)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(scheduler, creds) as channel:
        stub = identity_pb2_grpc.EnrollServiceStub(channel)
        try:
            resp = stub.Enroll(
                identity_pb2.EnrollRequest(token=token, name=name, csr_pem=csr_pem), timeout=ENROLL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            hint = ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE:  # the pin passed: likely a name the certificate lacks
                hint = f" (is {host} among the scheduler certificate's names? `outrider pki init --san`)"
            err = OutriderError(f"enrolment at {scheduler} failed: {exc.code().name}: {exc.details()}{hint}")
            err.code = exc.code().name
            raise err from None
    check_issued(resp.certificate_pem, key, ca_pem)
    address = f"{host}:{resp.scheduler_port}"
    (state_dir / "pki").mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(files["key"], key_pem)
    write_private(files["cert"], resp.certificate_pem, 0o644)
    write_private(files["ca"], ca_pem, 0o644)
    labels = dict(resp.labels)
    write_private(files["config"], config_text(address, files, name, state_dir, labels).encode(), 0o644)
    return Enrolled(files["config"], resp.spiffe_id, address, resp.not_after, labels, list(resp.zones))
