"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a temp dir, a free port.

``PgServer.start()`` runs ``initdb`` and ``pg_ctl start`` (as the ``postgres`` system user when
the tests run as root: initdb refuses root), listening on 127.0.0.1 and ``localhost`` only, with
TLS on (a certificate for ``localhost`` from a throwaway CA made here, ``ca.crt`` beside it) and
password authentication (scram) over TCP: every test connection uses the password, as a
deployment would. ``stop()`` stops it and removes the directory, whatever happened before.

For speed, the server runs with ``fsync=off``: a test never pulls the power. The scheduler's
own setting that matters here, ``synchronous_commit=on``, is set per session by the store.

``postgres_binaries()`` finds ``initdb`` and ``pg_ctl`` under ``/usr/lib/postgresql/*/bin``;
``make sysdeps`` installs the ``postgresql`` package where they are missing.
"""

from __future__ import annotations

import datetime
import glob
import ipaddress
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

PG_USER = "outrider"  # the cluster's superuser (the tests' role)
SYSTEM_USER = "postgres"  # the account the server runs as when the tests run as root


def postgres_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if postgres_binaries() is None:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; `make sysdeps` installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no {SYSTEM_USER!r} user to run PostgreSQL as (initdb refuses root)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(directory: Path) -> None:
    """ca.crt, server.crt (for localhost and 127.0.0.1) and server.key in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outrider test PostgreSQL CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "server.key").write_bytes(key_pem)
    os.chmod(directory / "server.key", 0o600)


class PgServer:
    """One PostgreSQL cluster in a temp dir; ``database()`` makes a fresh, empty database."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = postgres_binaries()
        if bindir is None:
            raise RuntimeError(skip_reason() or "PostgreSQL is not installed")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="outrider-pg-"))
        self.data = self.root / "data"
        self.password = secrets.token_hex(16)
        self.port = 0
        self.ca = self.root / "ca.crt"  # for sslrootcert= (readable by the tests)
        self._count = 0
        self._lock = threading.Lock()
        self._as_root = os.geteuid() == 0
        self.fsync = fsync  # off for tests (never a power cut); on for a benchmark

    def _run(self, *argv: str) -> None:
        user = SYSTEM_USER if self._as_root else None
        out = subprocess.run(argv, user=user, capture_output=True, text=True, timeout=120, cwd=self.root)
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({out.returncode}): {out.stderr[-2000:]}\n{tail}")

    def start(self) -> PgServer:
        make_tls(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self.root, pwfile, self.root / "server.key", self.root / "server.crt"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.root, 0o755)  # the tests read ca.crt; data/ is 0700, the server's own
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "--pwfile",
            str(pwfile),
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        opts = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c ssl=on",
            f"-c ssl_cert_file={self.root / 'server.crt'}",
            f"-c ssl_key_file={self.root / 'server.key'}",
            f"-c fsync={'on' if self.fsync else 'off'}",
            f"-c full_page_writes={'on' if self.fsync else 'off'}",
            "-c max_connections=200",
        ]
        for attempt in range(5):
            self.port = free_port()
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    " ".join([f"-p {self.port}", *opts]),
                    "start",
                )
                return self
            except RuntimeError:
                if attempt == 4:
                    raise
        return self

    def uri(self, dbname: str = "postgres", **params: str) -> str:
        """A libpq URI without the password (it goes separately, as in a deployment)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def database(self) -> str:
        """A fresh, empty database's name (CREATE DATABASE … TEMPLATE template0)."""
        import psycopg

        with self._lock:
            self._count += 1
            name = f"t{self._count}_{secrets.token_hex(3)}"
        with psycopg.connect(self.uri(), password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0'.encode())
        return name

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
