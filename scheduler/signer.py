"""The scheduler's signer: agent certificates for enrolment and renewal, from CSRs.

It signs with the CA key in ``pki_dir/ca.key``; a scheduler without that file serves as
before but cannot enrol or renew (``enroll_listen`` is then refused at start, and
``RenewCertificate`` answers ``FAILED_PRECONDITION`` naming the missing file). Every
certificate is an X.509-SVID made by :func:`outrider.pki.sign_leaf` (one URI SAN,
``CA:FALSE``, KeyUsage digitalSignature, EKU clientAuth, the zones extension when the
agent has zones), valid for ``agent_cert_ttl`` (default 24 h).

A CSR is read only for its public key, after its self-signature is checked: its subject
and any extensions it asks for are ignored (the scheduler decides the identity and the
zones). Keys accepted: EC P-256 or P-384, RSA of 2048 bits or more.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outrider import pki
from outrider.cabundle import certificate_of
from outrider.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

#: A CSR is refused past this many bytes (a P-384 or RSA-4096 CSR in PEM is under 2 KiB).
MAX_CSR_BYTES = 16 * 1024
#: Certificates are valid from a little before they are signed (a slow clock on the agent),
#: a tenth of their lifetime at most, so a short-lived one is not half spent at birth.
MAX_BACKDATE_S = 300.0
DEFAULT_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class Issued:
    """A certificate just signed."""

    cert_pem: bytes
    ca_pem: bytes
    spiffe_id: str
    serial: int
    not_after: float  # seconds since the epoch


class Signer:
    """Signs agent certificates with the CA in ``pki_dir`` (see the module docstring)."""

    def __init__(self, pki_dir: Path, trust_domain: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self.pki_dir, self.trust_domain, self.ttl_s = pki_dir, trust_domain, ttl_s
        self.key_path = pki_dir / pki.CA_KEY
        self.ca_pem = (pki_dir / pki.CA_CERT).read_bytes()
        self.ca_cert = x509.load_pem_x509_certificate(self.ca_pem)
        self.ca_key: Any = None
        if self.key_path.is_file():
            try:
                self.ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            except (ValueError, TypeError, OSError) as exc:
                raise InvalidArgument(f"{self.key_path}: cannot read the CA key ({exc})") from None
            # ca.crt may be a bundle (a CA rotation): sign as the CA whose key this is.
            mine = certificate_of(self.ca_key, x509.load_pem_x509_certificates(self.ca_pem))
            if mine is None:
                raise InvalidArgument(
                    f"{self.key_path}: the CA key belongs to no certificate in {pki_dir / pki.CA_CERT}"
                )
            self.ca_cert = mine

    @property
    def available(self) -> bool:
        """Whether the CA key is here (enrolment and renewal need it)."""
        return self.ca_key is not None

    def require(self) -> None:
        if self.ca_key is None:
            raise FailedPrecondition(
                f"this scheduler cannot sign certificates: the CA key {self.key_path} is missing "
                "(enrolment and certificate renewal need it beside ca.crt)"
            )

    def public_key(self, csr_pem: bytes) -> Any:
        """The public key of a PEM CSR whose signature is valid, of an accepted type; else InvalidArgument."""
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if not csr_pem:
            raise InvalidArgument("csr_pem: no certificate signing request (PEM PKCS#10) given")
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument(f"csr_pem: {len(csr_pem)} bytes, over the limit of {MAX_CSR_BYTES}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            valid = csr.is_signature_valid
            key = csr.public_key()
        except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
            raise InvalidArgument(
                f"csr_pem: not a PEM PKCS#10 certificate signing request ({str(exc)[:120]})"
            ) from None
        except Exception:  # an unsupported key algorithm, say
            raise InvalidArgument("csr_pem: a certificate signing request this scheduler cannot read") from None
        if not valid:
            raise InvalidArgument("csr_pem: its signature does not verify (it was not signed with its own key)")
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise InvalidArgument(f"csr_pem: EC curve {key.curve.name} not accepted (use P-256 or P-384)")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise InvalidArgument(f"csr_pem: RSA key of {key.key_size} bits; at least 2048 needed")
        else:
            raise InvalidArgument(f"csr_pem: {type(key).__name__} keys not accepted (use EC P-256/P-384 or RSA)")
        return key

    def sign(self, name: str, public_key: Any, zones: frozenset[str] | None) -> Issued:
        """A certificate for ``spiffe://<domain>/agent/<name>`` and ``public_key``, with ``zones``."""
        from cryptography.hazmat.primitives import serialization

        self.require()
        identity = pki.Identity(self.trust_domain, "agent", pki.validate_name(name), zones)
        now = datetime.datetime.now(datetime.timezone.utc)
        back = datetime.timedelta(seconds=min(MAX_BACKDATE_S, self.ttl_s / 10))
        ttl = datetime.timedelta(seconds=self.ttl_s)
        cert: x509.Certificate = pki.sign_leaf(
            self.ca_cert, self.ca_key, identity, public_key, now - back, now + ttl, zones
        )
        return Issued(
            cert.public_bytes(serialization.Encoding.PEM),
            self.ca_pem,
            identity.spiffe_id,
            cert.serial_number,
            cert.not_valid_after_utc.timestamp(),
        )
