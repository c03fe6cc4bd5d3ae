"""The scheduler's TLS material (its CA bundle, certificate and key), reloadable on SIGHUP.

One :class:`TlsMaterial` is shared by the gRPC server and the auth interceptor:

- the server's credentials (:meth:`TlsMaterial.server_credentials`) are gRPC's *dynamic* SSL
  credentials, whose fetcher gRPC calls before every new handshake: after a reload, new
  connections get the new certificate and are verified against the new bundle, without a
  restart; connections already open keep the session they have;
- the interceptor (``scheduler/auth.py``) reads :attr:`TlsMaterial.ca_pem` on every call, so the
  SPIFFE checks (``scheduler/svid.py``: a leaf signed directly by a CA of the bundle) follow the
  reload too, for calls on connections opened before it as well.

``ca.crt`` may hold several CA certificates (a bundle): during a CA rotation the old CA and the
new one (docs/cli.md, Rotating the CA). Every one must be a CA (``CA:TRUE``) within its dates; a leaf is
accepted when one of them signed it directly (each is ``pathlen:0``: no intermediates).

:meth:`TlsMaterial.reload` checks the new files before taking them: all three present and
parsable, the key matching the certificate, the certificate signed by a CA of the bundle and
within its dates. Bad files leave the material as it was (an ERROR names the problem; the
scheduler serves on); good ones are taken at once (an INFO line names the new certificate's
serial and expiry). The same checks run at start, where a problem is a ConfigError.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from outrider.errors import ConfigError

log = logging.getLogger(__name__)

CA_FILE = "ca.crt"
CERT_FILE = "scheduler.crt"
KEY_FILE = "scheduler.key"


@dataclass(frozen=True)
class Material:
    """One checked set of the three files, as read."""

    ca_pem: bytes  #: the bundle: one or more CA certificates, PEM
    cert_pem: bytes  #: the scheduler's certificate (its chain, if the file holds one)
    key_pem: bytes
    serial: int  #: the scheduler certificate's serial number
    not_after: datetime.datetime  #: its expiry
    cas: tuple[x509.Certificate, ...]  #: the bundle, parsed
    generation: int  #: 1 at start, one more on each successful reload


def _utc(t: datetime.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}Z"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def parse_bundle(ca_pem: bytes, path: Path | str, now: datetime.datetime) -> tuple[x509.Certificate, ...]:
    """The CA certificates in ``ca_pem`` (``path`` names it in errors): at least one, each a CA
    within its dates; ConfigError naming the problem otherwise."""
    try:
        cas = tuple(x509.load_pem_x509_certificates(ca_pem))
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM bundle of CA certificates ({exc})") from None
    for i, ca in enumerate(cas, 1):
        which = f"{path}: certificate {i} of {len(cas)} ({ca.subject.rfc4514_string()}, serial {ca.serial_number:x})"
        try:
            basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = None
        if basic is None or not basic.ca:
            raise ConfigError(f"{which} is not a CA certificate (no BasicConstraints CA:TRUE)")
        if now > ca.not_valid_after_utc:
            raise ConfigError(f"{which} expired at {_utc(ca.not_valid_after_utc)}")
        if now < ca.not_valid_before_utc:
            raise ConfigError(f"{which} is not valid until {_utc(ca.not_valid_before_utc)}")
    return cas


def signed_by_one_of(leaf: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    """Whether one of ``cas`` signed ``leaf`` directly."""
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except Exception:  # InvalidSignature, or an issuer name or key type that does not match
            continue
        return True
    return False


def load(pki_dir: Path, generation: int, now: datetime.datetime | None = None) -> Material:
    """Read and check ``ca.crt``, ``scheduler.crt`` and ``scheduler.key`` in ``pki_dir``.

    Raises ConfigError naming the file and the problem.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca_path, cert_path, key_path = pki_dir / CA_FILE, pki_dir / CERT_FILE, pki_dir / KEY_FILE
    ca_pem, cert_pem, key_pem = _read(ca_path), _read(cert_path), _read(key_path)
    cas = parse_bundle(ca_pem, ca_path, now)
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{cert_path}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, pub) != cert.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise ConfigError(f"{key_path}: this key does not belong to the certificate {cert_path}")
    if not signed_by_one_of(cert, cas):
        issuer = cert.issuer.rfc4514_string()
        raise ConfigError(f"{cert_path}: not signed by a CA in {ca_path} (its issuer is {issuer})")
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{cert_path}: expired at {_utc(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{cert_path}: not valid until {_utc(cert.not_valid_before_utc)}")
    return Material(ca_pem, cert_pem, key_pem, cert.serial_number, cert.not_valid_after_utc, cas, generation)


class TlsMaterial:
    """The scheduler's current TLS material; :meth:`reload` swaps it when the new files are good.

    Raises ConfigError at construction when the files are not good (the scheduler does not start).
    """

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = Path(pki_dir)
        # Swapped whole (one attribute store): gRPC's fetcher, on a core thread, reads one or the other.
        self._material = load(self.pki_dir, 1)
        #: Called with the new material after each successful reload.
        self.listeners: list[Callable[[Material], object]] = []

    @property
    def current(self) -> Material:
        return self._material

    @property
    def ca_pem(self) -> bytes:
        """The CA bundle peers are checked against now."""
        return self._material.ca_pem

    def reload(self) -> bool:
        """Read the files again; take them if good (True), else keep the old ones and log why (False)."""
        old = self._material
        try:
            new = load(self.pki_dir, old.generation + 1)
        except ConfigError as exc:
            log.error(
                "TLS reload refused, still serving with certificate serial %x (expires %s): %s",
                old.serial,
                _utc(old.not_after),
                exc,
            )
            return False
        self._material = new
        log.info(
            "TLS reloaded from %s: certificate serial %x, expires %s; %d CA certificate(s) trusted",
            self.pki_dir,
            new.serial,
            _utc(new.not_after),
            len(new.cas),
        )
        for listener in self.listeners:
            try:
                listener(new)
            except Exception:
                log.exception("a TLS reload listener failed")
        return True

    def server_credentials(
        self, *, require_client_auth: bool = True, chain_with_ca: bool = False
    ) -> grpc.ServerCredentials:
        """Credentials for one listener that follow :meth:`reload` on every new handshake.

        ``require_client_auth=False`` is for a listener whose callers have no certificate yet (the
        enrolment port: no CertificateRequest at all); ``chain_with_ca`` sends the CA bundle after
        the certificate (a joining agent picks the CA it pinned from it).
        """
        served = [self._material.generation]

        def _configuration(m: Material) -> grpc.ServerCertificateConfiguration:
            chain = m.cert_pem + m.ca_pem if chain_with_ca else m.cert_pem
            roots = m.ca_pem if require_client_auth else None
            return grpc.ssl_server_certificate_configuration([(m.key_pem, chain)], root_certificates=roots)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC before every new handshake, on one of its threads: cheap, never raises.
            try:
                m = self._material
                if m.generation == served[0]:
                    return None
                served[0] = m.generation
                return _configuration(m)
            except Exception:
                log.exception("TLS certificate fetcher failed; keeping the current certificate")
                return None

        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._material), fetch, require_client_authentication=require_client_auth
        )
