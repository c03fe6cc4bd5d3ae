"""Certificates that break one SPIFFE X.509-SVID rule each, signed by a real test CA.

Each helper writes ``DIR/NAME.crt`` (the leaf, then any intermediates: the chain the
client presents) and ``DIR/NAME.key``, and returns the (cert, key) paths. They reuse
:mod:`outrider.pki` (its CA loader and leaf builder), so a bad certificate differs from
a good one only in the rule it breaks.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outrider import pki

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(directory: Path, name: str, key: ec.EllipticCurvePrivateKey, *certs: x509.Certificate) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    crt, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return crt, key_path


def leaf(
    ca_dir: Path,
    out: Path,
    name: str,
    uris: list[str],
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    ekus: list[Any] | None = None,
    ca: bool = False,
    issuer: tuple[x509.Certificate, Any] | None = None,
    chain: tuple[x509.Certificate, ...] = (),
) -> tuple[Path, Path]:
    """A leaf signed by the CA in ``ca_dir`` (or ``issuer``), with these URI SANs and rules."""
    ca_cert, ca_key, _ = pki.load_ca(ca_dir)
    signer_cert, signer_key = issuer if issuer is not None else (ca_cert, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = pki._leaf_builder(
        subject_cn=name,
        public_key=key.public_key(),
        issuer=signer_cert,
        not_before=not_before or _now() - _DAY,
        not_after=not_after or _now() + _DAY,
        sans=[x509.UniformResourceIdentifier(u) for u in uris],
        ekus=ekus if ekus is not None else [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    if ca:
        # Replace the leaf's BasicConstraints with CA:TRUE (the rest is an ordinary leaf).
        exts = [e for e in builder._extensions if not isinstance(e.value, x509.BasicConstraints)]
        builder._extensions = exts  # type: ignore[attr-defined]
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(signer_key, hashes.SHA256())
    return _write(out, name, key, cert, *chain)


def intermediate(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA:TRUE certificate signed by our (pathlen:0) CA: what it must never sign."""
    ca_cert, ca_key, domain = pki.load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rogue intermediate {domain}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _DAY)
        .not_valid_after(_now() + _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def bad_identities(ca_dir: Path, out: Path, domain: str) -> dict[str, tuple[Path, Path]]:
    """(cert, key) for each broken identity, by name; all claim role admin where they claim one."""
    admin = f"spiffe://{domain}/admin/"
    inter, inter_key = intermediate(ca_dir)
    return {
        "expired": leaf(ca_dir, out, "expired", [admin + "expired"],
                        not_before=_now() - 3 * _DAY, not_after=_now() - _DAY),
        "not yet valid": leaf(ca_dir, out, "future", [admin + "future"],
                              not_before=_now() + _DAY, not_after=_now() + 3 * _DAY),
        "wrong trust domain": leaf(ca_dir, out, "foreign", ["spiffe://elsewhere.example/admin/foreign"]),
        "two URI SANs": leaf(ca_dir, out, "twouris", [admin + "twouris", "https://twouris.example/"]),
        "CA:TRUE leaf": leaf(ca_dir, out, "caleaf", [admin + "caleaf"], ca=True),
        "no clientAuth EKU": leaf(ca_dir, out, "serveronly", [admin + "serveronly"],
                                  ekus=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "chain through an intermediate": leaf(ca_dir, out, "chained", [admin + "chained"],
                                              issuer=(inter, inter_key), chain=(inter,)),
    }
