"""The zones extension of an agent's certificate: where the agent may process data.

``outrider pki issue DIR agent NAME --zones eu,eu-west`` puts it in the certificate; the
scheduler reads it (:attr:`outrider.pki.Identity.zones`) and an agent's own claim can
only narrow it. A non-critical X.509 extension with the private OID :data:`ZONES_OID`,
whose value is the DER encoding of::

    Zones ::= SEQUENCE SIZE (1..256) OF UTF8String   -- one zone name each, sorted

A name is 1-256 letters, digits, '.', '_' and '-' (as an agent's ``zones`` setting).
It is not a subject alternative name, so the SPIFFE rule of exactly one URI SAN stands.
Only the few DER forms this needs are written and read here (definite, shortest lengths).

Like ``outrider.pki``, this imports ``cryptography`` only inside the functions that need it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from outrider.errors import InvalidArgument

if TYPE_CHECKING:
    from cryptography import x509

#: The private OID of the zones extension: under ``2.25`` (ITU-T X.667), the arc of OIDs
#: made from a UUID, which needs no registration; its UUID is
#: b6520e6f-f327-457d-9ee3-a5a6279dc18a.
ZONES_OID = "2.25.242345556398567368594891120082818023818"
#: A certificate names at most this many zones, each at most MAX_ZONE_LEN characters
#: (the bounds the scheduler puts on the zones an agent declares).
MAX_ZONES = 256
MAX_ZONE_LEN = 256
_ZONE_RE = re.compile(r"[A-Za-z0-9._-]+")


def validate_zones(zones: Iterable[str], what: str = "zones") -> frozenset[str]:
    """Return ``zones`` as a set if every name is valid, else raise InvalidArgument naming it.

    A zone name is 1-256 letters, digits, '.', '_' and '-' (as an agent's ``zones`` setting);
    at least one and at most MAX_ZONES zones.
    """
    if isinstance(zones, str):
        raise InvalidArgument(f"invalid {what} {zones!r}: expected a list of zone names")
    names = list(zones)
    if not names:
        raise InvalidArgument(f"invalid {what}: name at least one zone")
    if len(names) > MAX_ZONES:
        raise InvalidArgument(f"invalid {what}: {len(names)} zones, at most {MAX_ZONES}")
    for zone in names:
        if not isinstance(zone, str) or len(zone) > MAX_ZONE_LEN or not _ZONE_RE.fullmatch(zone):
            raise InvalidArgument(
                f"invalid zone name {zone!r} in {what}: use 1-{MAX_ZONE_LEN} letters, digits, '.', '_' and '-'"
            )
    return frozenset(names)


def encode_zones(zones: Iterable[str]) -> bytes:
    """The zones extension's value: DER ``SEQUENCE OF UTF8String``, names sorted."""
    body = b"".join(_der(0x0C, z.encode("utf-8")) for z in sorted(validate_zones(zones)))
    return _der(0x30, body)


def decode_zones(value: bytes) -> frozenset[str]:
    """Parse the zones extension's value (see :func:`encode_zones`); InvalidArgument if malformed."""
    try:
        tag, body, rest = _der_read(value)
        if tag != 0x30 or rest:
            raise ValueError("not one DER SEQUENCE")
        names = []
        while body:
            tag, item, body = _der_read(body)
            if tag != 0x0C:
                raise ValueError(f"an element with tag {tag:#04x}, not a UTF8String")
            names.append(item.decode("utf-8"))
        return validate_zones(names, "zones extension")
    except (ValueError, InvalidArgument) as exc:
        raise InvalidArgument(f"invalid certificate: malformed zones extension ({ZONES_OID}): {exc}") from None


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def _der_read(data: bytes) -> tuple[int, bytes, bytes]:
    """(tag, body, what follows) of the first DER element of ``data``; ValueError if truncated."""
    if len(data) < 2:
        raise ValueError("truncated")
    tag, first = data[0], data[1]
    if first < 0x80:
        length, start = first, 2
    else:
        k = first & 0x7F
        if k == 0 or k > 4 or len(data) < 2 + k:
            raise ValueError("bad length")
        length, start = int.from_bytes(data[2 : 2 + k], "big"), 2 + k
        if length < 0x80 or data[2] == 0:
            raise ValueError("length not in DER's shortest form")
    if len(data) < start + length:
        raise ValueError("truncated")
    return tag, data[start : start + length], data[start + length :]


def zones_from_pem(pem: bytes) -> frozenset[str] | None:
    """The zones a PEM certificate's zones extension names (see :func:`zones_from_cert`)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"invalid certificate: not a PEM X.509 certificate ({exc})") from None
    return zones_from_cert(cert)


def zones_from_cert(cert: x509.Certificate) -> frozenset[str] | None:
    """The zones a certificate's zones extension names; None without one; InvalidArgument if malformed."""
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(ZONES_OID))
    except x509.ExtensionNotFound:
        return None
    if ext.critical:  # issue() never marks it critical; one that does was not made by us
        raise InvalidArgument(f"invalid certificate: the zones extension ({ZONES_OID}) must not be critical")
    value = ext.value
    return decode_zones(value.value if isinstance(value, x509.UnrecognizedExtension) else b"")
