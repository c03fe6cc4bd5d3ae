"""The SPIFFE X.509-SVID rules, checked on the peer's certificate on every call.

The TLS handshake already verified the peer's chain against our CA, its validity
dates, and (when the leaf has an EKU) that clientAuth is in it. It does not refuse
everything the SVID rules forbid; measured against gRPC 1.85 (BoringSSL), these got
through the handshake and are refused here (tests/integration/test_rpc_enforcement.py):

- a leaf with two URI SANs (``spiffe://…`` and ``https://…``): an SVID has exactly one;
- a leaf with ``CA:TRUE``: an SVID leaf must not be a CA;
- a leaf issued by an intermediate that our CA signed, although our CA is ``pathlen:0``
  (the peer sends the intermediate, and gRPC puts it in ``x509_pem_cert_chain``): a leaf
  must be signed by our CA itself, so the signature is checked against the CA's key.

The rules: exactly one URI SAN, a SPIFFE ID; BasicConstraints present with CA false;
KeyUsage present with digitalSignature and neither keyCertSign nor cRLSign; an EKU that
includes clientAuth; Outrider's zones extension, if present, well formed and not critical
(``outrider.pki.ZONES_OID``); signed directly by our CA (by one CA of the bundle, when ``ca.crt``
holds several during a CA rotation: ``scheduler/tlsreload.py``); within its validity dates (a connection
can outlive its certificate, so this is checked per call, not only at the handshake).
"""

from __future__ import annotations

import datetime
import functools

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from outrider.certzones import zones_from_cert
from outrider.errors import InvalidArgument


class SvidError(Exception):
    """Raised when the peer's certificate breaks an X.509-SVID rule; the message names it."""


def _structural(leaf: x509.Certificate, cas: list[x509.Certificate]) -> str:
    """The first rule the leaf breaks that does not depend on the time ("" if none)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the certificate has no subject alternative names (an SVID has exactly one URI SAN)"
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return f"the certificate has {len(uris)} URI SANs; an SVID has exactly one (its SPIFFE ID)"
    try:
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "the certificate has no BasicConstraints; an SVID leaf must say CA:FALSE"
    if basic.ca:
        return "the certificate is a CA (CA:TRUE); an SVID leaf must not be"
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "the certificate has no KeyUsage; an SVID leaf needs digitalSignature"
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        return "the certificate's KeyUsage must include digitalSignature and neither keyCertSign nor cRLSign"
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "the certificate has no ExtendedKeyUsage; a client's must include clientAuth"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return "the certificate's ExtendedKeyUsage does not include clientAuth"
    try:
        zones_from_cert(leaf)
    except InvalidArgument as exc:
        return str(exc).removeprefix("invalid certificate: ")
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except Exception:  # InvalidSignature, or an issuer name or key type that does not match
            continue
        return ""
    return "the certificate is not signed by the scheduler's CA itself (no intermediates: the CA is pathlen:0)"


@functools.lru_cache(maxsize=4096)
def _parsed(leaf_pem: bytes, ca_pem: bytes) -> tuple[str, datetime.datetime, datetime.datetime]:
    """(the rule broken or "", not before, not after) for one leaf against one CA bundle (PEM, one
    certificate or more); memoised per certificate and bundle."""
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
    except ValueError:
        epoch = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
        return "the certificate is not a PEM X.509 certificate", epoch, epoch
    cas = x509.load_pem_x509_certificates(ca_pem)
    return _structural(leaf, cas), leaf.not_valid_before_utc, leaf.not_valid_after_utc


def check(leaf_pem: bytes, ca_pem: bytes, now: datetime.datetime | None = None) -> None:
    """Raise :class:`SvidError` naming the rule if the peer leaf ``leaf_pem`` is no valid SVID of our CA
    (of a CA in the bundle ``ca_pem``)."""
    if not leaf_pem:
        raise SvidError("no client certificate")
    broken, not_before, not_after = _parsed(leaf_pem, ca_pem)
    if broken:
        raise SvidError(broken)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < not_before:
        raise SvidError(f"the certificate is not valid before {not_before:%Y-%m-%d %H:%M:%S}Z")
    if now > not_after:
        raise SvidError(f"the certificate expired at {not_after:%Y-%m-%d %H:%M:%S}Z")


def expiry(leaf_pem: bytes, ca_pem: bytes) -> datetime.datetime:
    """When the leaf ``leaf_pem`` expires (memoised with the per-call check, so right after one
    it costs a lookup)."""
    return _parsed(leaf_pem, ca_pem)[2]
