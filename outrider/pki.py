"""A small private CA for Outrider's mutual TLS, with SPIFFE-style identities.

Every party (scheduler, agents, submitters, admins) holds a certificate issued by
one private CA. A certificate names exactly one identity, carried as exactly one
URI subject alternative name of the form ``spiffe://<trust-domain>/<role>/<name>``
(as in the SPIFFE X.509-SVID spec). The scheduler authorises each RPC from the
role in that URI, so the URI, not the CN, is what matters; the CN only helps
humans reading ``openssl x509 -text``.

Layout of a PKI directory (what ``outrider pki init`` / ``issue`` write)::

    DIR/ca.crt  DIR/ca.key               the CA (ca.key never leaves this box)
    DIR/scheduler.crt DIR/scheduler.key  the scheduler's server+client cert
    DIR/trust_domain                     the trust domain, one line
    DIR/NAME.crt DIR/NAME.key            one pair per issued identity

An agent's certificate may also say which data-residency zones the agent sits in
(``issue(..., zones=...)``, ``outrider pki issue DIR agent NAME --zones eu,eu-west``):
a non-critical extension, :data:`ZONES_OID`, whose value is the DER encoding of
``SEQUENCE OF UTF8String``, one zone name each (at least one; names as
:func:`validate_zones` allows). The scheduler takes an agent's zones from it, and
an agent's own claim can only narrow them. It is not a SAN, so the SPIFFE rule of
exactly one URI SAN is untouched.

Private keys are created with mode 0600 atomically (``os.open(..., 0o600)`` on a
fresh temporary file, then renamed), so there is no window in which a key is
readable by others, not even when ``force`` replaces an older, laxer file.

This module imports ``cryptography``; the agent must not import it at startup
(see ``outrider.tls``, which only imports it lazily).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from outrider.cabundle import certificate_of
from outrider.certzones import ZONES_OID, encode_zones, validate_zones, zones_from_cert
from outrider.errors import InvalidArgument

if TYPE_CHECKING:  # cryptography is imported lazily so that Identity/parse_spiffe_id stay cheap
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

#: Roles a certificate may be issued for with ``issue``.
ROLES = ("agent", "submitter", "admin")
#: The scheduler's own certificate uses this role; it is never issued by ``issue``.
SCHEDULER_ROLE = "scheduler"
#: Every role a SPIFFE ID may carry.
ALL_ROLES = ROLES + (SCHEDULER_ROLE,)

#: Names written by ``init_ca``; ``issue`` refuses them so it can never clobber the CA.
RESERVED_NAMES = ("ca", "scheduler")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SCHEDULER_CERT = "scheduler.crt"
SCHEDULER_KEY = "scheduler.key"
TRUST_DOMAIN_FILE = "trust_domain"

DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365

# Trust domain: lowercase letters, digits, dots and dashes; must start and end with
# a letter or digit so "acme..ml"-like typos at the edges are caught. Up to 255
# characters, the SPIFFE limit.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,253}[a-z0-9])?")
# Names start with a letter or digit, which also rules out "." and ".." as path
# segments (forbidden by SPIFFE) and names that look like flags ("-x").
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SCHEME = "spiffe://"

# Certificates are valid from a few minutes in the past: edge boxes with a
# slightly slow clock would otherwise refuse a certificate issued "in the future".
_BACKDATE = datetime.timedelta(minutes=5)

PathLike = Union[str, "os.PathLike[str]"]


def validate_trust_domain(domain: str) -> str:
    """Return ``domain`` if it is a valid trust domain, else raise InvalidArgument."""
    if not isinstance(domain, str) or not _TRUST_DOMAIN_RE.fullmatch(domain) or ".." in domain:
        raise InvalidArgument(
            f"invalid trust domain {domain!r}: use lowercase letters, digits, dots and dashes "
            "(for example acme.ml), starting and ending with a letter or digit"
        )
    return domain


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name, else raise InvalidArgument."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid name {name!r}: use 1-63 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def _validate_role(role: str, allowed: tuple[str, ...]) -> str:
    if role not in allowed:
        raise InvalidArgument(f"invalid role {role!r}: must be one of {', '.join(allowed)}")
    return role


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: ``spiffe://<trust_domain>/<role>/<name>``.

    Fields are validated on construction so that an Identity always renders to a
    well-formed SPIFFE ID. ``zones`` are the data-residency zones the certificate's
    zones extension names, None when it has none (the certificate says nothing).
    """

    trust_domain: str
    role: str
    name: str
    zones: frozenset[str] | None = None

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_role(self.role, ALL_ROLES)
        validate_name(self.name)
        if self.zones is not None:
            validate_zones(self.zones)

    @property
    def spiffe_id(self) -> str:
        """The identity as a SPIFFE URI."""
        return f"{_SCHEME}{self.trust_domain}/{self.role}/{self.name}"

    def __str__(self) -> str:
        return self.spiffe_id


def parse_spiffe_id(uri: str) -> Identity:
    """Parse ``spiffe://<domain>/<role>/<name>`` into an Identity.

    Strict on purpose (an identity is an authorisation decision): the scheme must
    be exactly ``spiffe://``, there must be exactly two path segments, and no
    port, user info, query, fragment or percent-encoding is accepted.
    """
    if not isinstance(uri, str):
        raise InvalidArgument(f"invalid SPIFFE ID {uri!r}: expected a string")
    if not uri.startswith(_SCHEME):
        raise InvalidArgument(f"invalid SPIFFE ID {uri!r}: must start with {_SCHEME}")
    parts = uri[len(_SCHEME) :].split("/")
    if len(parts) != 3:
        raise InvalidArgument(
            f"invalid SPIFFE ID {uri!r}: expected spiffe://<trust-domain>/<role>/<name> "
            f"(exactly two path segments, got {max(len(parts) - 1, 0)})"
        )
    domain, role, name = parts
    if not domain or not role or not name:
        raise InvalidArgument(f"invalid SPIFFE ID {uri!r}: trust domain, role and name must not be empty")
    try:
        return Identity(domain, role, name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid SPIFFE ID {uri!r}: {exc}") from None


def identity_from_pem(pem: bytes) -> Identity:
    """Return the identity named by a PEM certificate's single SPIFFE URI SAN, with the
    zones its zones extension names (InvalidArgument if that extension is malformed)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"invalid certificate: not a PEM X.509 certificate ({exc})") from None
    return _identity_from_cert(cert)


def _identity_from_cert(cert: x509.Certificate) -> Identity:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidArgument("invalid certificate: it has no subject alternative names, so no SPIFFE ID") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.lower().startswith(_SCHEME)]
    if len(uris) != 1:
        raise InvalidArgument(
            f"invalid certificate: expected exactly one spiffe:// URI SAN, found {len(uris)}"
            + (f" ({', '.join(uris)})" if uris else "")
        )
    return dataclasses.replace(parse_spiffe_id(uris[0]), zones=zones_from_cert(cert))


# --------------------------------------------------------------------------- files


def _write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte.

    The bytes go to a fresh temporary file opened with ``mode`` (O_EXCL, so never
    an existing file whose mode might be wider) and are renamed over ``path``:
    readers never see a half-written key, and a replaced key is never readable by
    others. Without ``force`` an existing ``path`` is an error.
    """
    if not force and path.exists():
        raise InvalidArgument(f"{path} already exists; pass --force (force=True) to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        # A leftover from a crashed run with the same pid would make O_EXCL fail.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InvalidArgument(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    # PKCS#8 unencrypted: gRPC (BoringSSL) reads it directly, and the daemons run
    # unattended, so there is no one to type a passphrase; the file mode protects it.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise InvalidArgument(f"invalid validity {days!r}: days must be a positive integer")
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - _BACKDATE, now + datetime.timedelta(days=days)


def _parse_san(value: str) -> x509.GeneralName:
    """An extra scheduler SAN: an IP address if it parses as one, else a DNS name."""
    from cryptography import x509

    text = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text) or ".." in text:
        raise InvalidArgument(f"invalid --san {value!r}: expected a DNS name or an IP address")
    return x509.DNSName(text.lower())


def ca_files(directory: PathLike) -> dict[str, Path]:
    """The files ``init_ca`` writes, by role: ca_crt, ca_key, scheduler_crt, scheduler_key, trust_domain."""
    d = Path(directory)
    return {
        "ca_crt": d / CA_CERT,
        "ca_key": d / CA_KEY,
        "scheduler_crt": d / SCHEDULER_CERT,
        "scheduler_key": d / SCHEDULER_KEY,
        "trust_domain": d / TRUST_DOMAIN_FILE,
    }


def init_ca(
    directory: PathLike,
    trust_domain: str,
    sans: Iterable[str] = (),
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    scheduler_days: int | None = None,
) -> None:
    """Create a private CA and the scheduler's certificate in ``directory``.

    ``sans`` are extra names the scheduler is reached by (host names or IPs), on
    top of localhost, 127.0.0.1 and ::1. ``days`` is the CA's validity; the
    scheduler certificate lasts ``scheduler_days`` (default: DEFAULT_CERT_DAYS,
    capped at the CA's). Refuses to overwrite any existing file unless ``force``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    validate_trust_domain(trust_domain)
    extra_sans = [_parse_san(s) for s in sans]
    not_before, ca_not_after = _validity(days)
    _, sched_not_after = _validity(scheduler_days if scheduler_days is not None else min(days, DEFAULT_CERT_DAYS))
    sched_not_after = min(sched_not_after, ca_not_after)  # a leaf never outlives its CA

    d = Path(directory)
    files = ca_files(d)
    if d.exists() and not d.is_dir():
        raise InvalidArgument(f"{d} exists and is not a directory")
    if not force:
        # Check everything before writing anything, so a refusal leaves no partial CA.
        for path in files.values():
            if path.exists():
                raise InvalidArgument(
                    f"{path} already exists: refusing to overwrite an existing CA (pass --force to replace it)"
                )
    # 0700: the directory holds the CA key. mkdir's mode is masked by the umask,
    # which can only narrow it.
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"{d}: cannot create the CA directory: {exc.strerror or exc}") from None

    ca_key = _new_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Outrider"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Outrider CA {trust_domain}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(ca_not_after)
        # path_length=0: this CA signs leaves only, never intermediates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sched_identity = Identity(trust_domain, SCHEDULER_ROLE, "scheduler")
    sched_key = _new_key()
    san_list: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(sched_identity.spiffe_id),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for name in extra_sans:
        if name not in san_list:
            san_list.append(name)
    sched_cert = _leaf_builder(
        subject_cn="scheduler",
        public_key=sched_key.public_key(),
        issuer=ca_cert,
        not_before=not_before,
        not_after=sched_not_after,
        sans=san_list,
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    ).sign(ca_key, hashes.SHA256())

    from cryptography.hazmat.primitives import serialization

    # Keys first: a crash mid-way leaves keys without certs, never certs without keys.
    _write_file(files["ca_key"], _key_pem(ca_key), 0o600, force)
    _write_file(files["scheduler_key"], _key_pem(sched_key), 0o600, force)
    _write_file(files["ca_crt"], ca_cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    _write_file(files["scheduler_crt"], sched_cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    _write_file(files["trust_domain"], (trust_domain + "\n").encode(), 0o644, force)


def _leaf_builder(
    *,
    subject_cn: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    sans: list,
    ekus: list,
) -> x509.CertificateBuilder:
    """A leaf certificate builder with the extensions every Outrider leaf carries."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Outrider"),
                    x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )


def load_ca(directory: PathLike) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes, str]:
    """Read the CA certificate, its key and the trust domain from ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = Path(directory)
    if not d.is_dir():
        raise InvalidArgument(
            f"{d}: no such PKI directory; create one with `outrider pki init {d} --trust-domain DOMAIN`"
        )
    files = ca_files(d)
    for key in ("ca_crt", "ca_key"):
        if not files[key].is_file():
            raise InvalidArgument(
                f"{files[key]}: missing; {d} is not a CA directory (create one with `outrider pki init`)"
            )
    try:
        ca_certs = x509.load_pem_x509_certificates(files["ca_crt"].read_bytes())
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"{files['ca_crt']}: cannot read the CA certificate ({exc})") from None
    try:
        ca_key = serialization.load_pem_private_key(files["ca_key"].read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise InvalidArgument(f"{files['ca_key']}: cannot read the CA key ({exc})") from None
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    # Certificates are signed with SHA-256, which needs an EC or RSA key.
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InvalidArgument(f"{files['ca_key']}: unsupported CA key type {type(ca_key).__name__} (need EC or RSA)")
    ca_cert = certificate_of(ca_key, ca_certs)  # ca.crt may be a bundle (a CA rotation): ca.key's
    if ca_cert is None:
        raise InvalidArgument(f"{files['ca_crt']}: no certificate in it belongs to the key {files['ca_key']}")
    if files["trust_domain"].is_file():
        domain = files["trust_domain"].read_text().strip()
        try:
            validate_trust_domain(domain)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{files['trust_domain']}: {exc}") from None
    else:
        # Older or hand-made CA dirs: the scheduler cert's SPIFFE ID names the domain.
        if not files["scheduler_crt"].is_file():
            raise InvalidArgument(
                f"{files['trust_domain']}: missing, and no scheduler.crt to read the trust domain from"
            )
        domain = identity_from_pem(files["scheduler_crt"].read_bytes()).trust_domain
    return ca_cert, ca_key, domain


def issue(
    directory: PathLike,
    role: str,
    name: str,
    days: int = DEFAULT_CERT_DAYS,
    force: bool = False,
    zones: Iterable[str] | None = None,
) -> tuple[Path, Path]:
    """Issue ``DIR/NAME.crt`` and ``DIR/NAME.key`` for ``spiffe://<domain>/<role>/<name>``.

    The certificate's only SAN is that one URI; its EKU is clientAuth (every
    issued identity is a client of the scheduler). ``zones`` (agents only) puts the
    zones extension in it: the zones the agent sits in, which its own claim cannot
    widen. Returns (cert path, key path).
    """
    from cryptography.hazmat.primitives import serialization

    _validate_role(role, ROLES)
    validate_name(name)
    if name in RESERVED_NAMES:
        raise InvalidArgument(
            f"invalid name {name!r}: reserved ({name}.crt/{name}.key belong to the CA directory itself)"
        )
    zone_set = None if zones is None else validate_zones(zones)
    if zone_set is not None and role != "agent":
        raise InvalidArgument(f"--zones is for agents: a {role} certificate names no zones")
    ca_cert, ca_key, domain = load_ca(directory)
    identity = Identity(domain, role, name)
    d = Path(directory)
    crt_path, key_path = d / f"{name}.crt", d / f"{name}.key"
    if not force:
        for path in (crt_path, key_path):
            if path.exists():
                raise InvalidArgument(f"{path} already exists; pass --force to overwrite it")

    not_before, not_after = _validity(days)
    key = _new_key()
    cert = sign_leaf(ca_cert, ca_key, identity, key.public_key(), not_before, not_after, zone_set)
    _write_file(key_path, _key_pem(key), 0o600, force)
    _write_file(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return crt_path, key_path


def sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    identity: Identity,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    zones: frozenset[str] | None = None,
) -> x509.Certificate:
    """A client leaf (X.509-SVID: one URI SAN, CA:FALSE, digitalSignature, clientAuth; zones if
    given) for ``public_key``, never outliving the CA: ``issue`` and scheduler.signer sign here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    builder = _leaf_builder(
        subject_cn=identity.name,
        public_key=public_key,
        issuer=ca_cert,
        not_before=not_before,
        not_after=min(not_after, ca_cert.not_valid_after_utc),
        sans=[x509.UniformResourceIdentifier(identity.spiffe_id)],
        ekus=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    if zones is not None:
        oid = x509.ObjectIdentifier(ZONES_OID)
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, encode_zones(zones)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def fingerprint(cert: bytes) -> str:
    """``sha256:HEX`` of a certificate's DER (``cert`` in PEM or DER): what a joining agent pins."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            cert = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            raise InvalidArgument(f"invalid certificate: not a PEM X.509 certificate ({exc})") from None
    return "sha256:" + hashlib.sha256(cert).hexdigest()


def parse_fingerprint(text: str) -> str:
    """A CA pin as ``sha256:HEX``, from ``sha256:HEX``, bare hex or colon-separated hex
    (``AB:CD:...``, as ``openssl x509 -fingerprint -sha256`` prints it); any case."""
    if not isinstance(text, str) or len(text) > 200:
        raise InvalidArgument("invalid CA fingerprint: expected sha256:<64 hex digits>")
    value = text.strip()
    if value.lower().startswith("sha256:"):
        value = value[len("sha256:") :]
    elif "=" in value:  # openssl's "SHA256 Fingerprint=AB:CD:..."
        value = value.partition("=")[2]
    digits = value.replace(":", "").lower()
    if len(digits) != 64 or not re.fullmatch(r"[0-9a-f]{64}", digits) or value.count(":") not in (0, 31):
        raise InvalidArgument(
            f"invalid CA fingerprint {text!r}: expected sha256:<64 hex digits> (as `outrider pki fingerprint DIR` "
            "prints it), 64 bare hex digits, or 32 colon-separated hex pairs"
        )
    return "sha256:" + digits
