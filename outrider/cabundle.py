"""CA bundles: one ``ca.crt`` holding several CA certificates, for a CA rotation.

During a rotation the scheduler trusts the old CA and the new one at once (its ``ca.crt`` is a
bundle of both; it reloads it on SIGHUP), and so do agents and clients, so that a certificate
from either CA is accepted and the scheduler may present a certificate from either. The steps
are in docs/cli.md (Rotating the CA); ``outrider pki bundle OUT CA...`` (:func:`write_bundle`) writes the
bundle. Like :mod:`outrider.pki`, this imports ``cryptography`` only inside its functions.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from outrider.errors import InvalidArgument

if TYPE_CHECKING:
    from cryptography import x509

PathLike = Union[str, "os.PathLike[str]"]


def certificate_of(key: Any, certs: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The certificate in ``certs`` whose public key is the private key ``key``'s, or None."""
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    mine = key.public_key().public_bytes(der, spki)
    return next((c for c in certs if c.public_key().public_bytes(der, spki) == mine), None)


@dataclass(frozen=True)
class BundledCa:
    """One CA certificate as written into a bundle."""

    subject: str
    sha256: str  #: of its DER encoding, lowercase hex
    not_after: datetime.datetime
    source: str  #: the file it came from


def read_cas(path: PathLike) -> list[x509.Certificate]:
    """The CA certificates in the PEM file ``path`` (one or a bundle); InvalidArgument naming the
    file when it cannot be read, holds none, or holds a certificate that is not a CA in its dates."""
    from cryptography import x509

    p = Path(path)
    try:
        certs = x509.load_pem_x509_certificates(p.read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"{p}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidArgument(f"{p}: not a PEM file of CA certificates ({exc})") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in certs:
        what = f"{p}: {cert.subject.rfc4514_string()}"
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise InvalidArgument(f"{what} is not a CA certificate (a bundle holds CAs only: DIR/ca.crt)")
        if now > cert.not_valid_after_utc:
            raise InvalidArgument(f"{what} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")
    return certs


def write_bundle(out: PathLike, sources: Sequence[PathLike], force: bool = False) -> list[BundledCa]:
    """Write the CA certificates of ``sources`` (each a CA's ``ca.crt`` or a bundle), in order and
    each once, to ``out`` (mode 0644, replaced atomically: a scheduler reloading on SIGHUP never
    reads half a file). ``out`` may be one of ``sources`` (all are read first). An existing
    ``out`` needs ``force``. Returns what was written."""
    from cryptography.hazmat.primitives import serialization

    from outrider.pki import _write_file

    if not sources:
        raise InvalidArgument("name at least one CA certificate to bundle")
    seen: dict[str, BundledCa] = {}
    pem = b""
    for source in sources:
        for cert in read_cas(source):
            der = cert.public_bytes(serialization.Encoding.DER)
            digest = hashlib.sha256(der).hexdigest()
            if digest not in seen:
                subject = cert.subject.rfc4514_string()
                seen[digest] = BundledCa(subject, digest, cert.not_valid_after_utc, str(source))
                pem += cert.public_bytes(serialization.Encoding.PEM)
    _write_file(Path(out), pem, 0o644, force)
    return list(seen.values())
