"""The zones extension of an agent's certificate (issue 8): written by ``outrider pki issue
--zones``, read back where the identity is read (``outrider.pki``, ``outrider.tls``), and a
malformed one refused by the per-call SVID check, naming the extension."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from outrider import cli_pki, pki, tls
from outrider.errors import InvalidArgument
from scheduler import svid

DOMAIN = "acme.ml"


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d, DOMAIN)
    return d


def _leaf_with(ca_dir: Path, name: str, value: bytes, critical: bool = False) -> bytes:
    """A leaf from our CA carrying the zones OID with these raw bytes (a hand-made extension)."""
    ca_cert, ca_key, _ = pki.load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = pki._validity(1)
    builder = pki._leaf_builder(
        subject_cn=name, public_key=key.public_key(), issuer=ca_cert, not_before=not_before, not_after=not_after,
        sans=[x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/agent/{name}")],
        ekus=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    oid = x509.ObjectIdentifier(pki.ZONES_OID)
    cert = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical).sign(ca_key, hashes.SHA256())
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def test_issue_with_zones_round_trips(ca_dir: Path) -> None:
    crt, _ = pki.issue(ca_dir, "agent", "edge-eu", zones=["eu", "eu-west"])
    pem = crt.read_bytes()
    ident = pki.identity_from_pem(pem)
    assert ident.zones == frozenset({"eu", "eu-west"})
    assert ident.spiffe_id == f"spiffe://{DOMAIN}/agent/edge-eu"
    cert = x509.load_pem_x509_certificate(pem)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(pki.ZONES_OID))
    assert not ext.critical
    # DER SEQUENCE OF UTF8String, sorted: 30 0d 0c 02 "eu" 0c 07 "eu-west"
    assert ext.value.value == b"\x30\x0d\x0c\x02eu\x0c\x07eu-west"
    # Still exactly one URI SAN, and a valid SVID.
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san.get_values_for_type(x509.UniformResourceIdentifier)) == 1
    svid.check(pem, (ca_dir / "ca.crt").read_bytes())
    # Where the scheduler reads it: gRPC's auth context (URI SAN fast path + the PEM).
    auth = {"peer_uri": [ident.spiffe_id.encode()], "x509_pem_cert": [pem]}
    assert tls.identity_from_auth_context(auth) == ident
    assert tls.identity_from_auth_context({"x509_pem_cert": [pem]}) == ident


def test_no_extension_means_the_certificate_says_nothing(ca_dir: Path) -> None:
    crt, _ = pki.issue(ca_dir, "agent", "plain")
    pem = crt.read_bytes()
    assert pki.identity_from_pem(pem).zones is None
    assert tls.identity_from_auth_context({"peer_uri": [f"spiffe://{DOMAIN}/agent/plain".encode()],
                                           "x509_pem_cert": [pem]}).zones is None


@pytest.mark.parametrize(("value", "words"), [
    (b"garbage", "malformed zones extension"),
    (b"\x30\x03\x02\x01\x05", "not a UTF8String"),          # SEQUENCE { INTEGER 5 }
    (b"\x30\x00", "name at least one zone"),                  # an empty SEQUENCE
    (b"\x30\x05\x0c\x03e u", "invalid zone name"),            # a space in a name
    (b"\x30\x04\x0c\x02eu\x00", "not one DER SEQUENCE"),      # trailing bytes
    (b"\x30\x05\x0c\x05eu", "truncated"),
])
def test_a_malformed_extension_is_refused_clearly(ca_dir: Path, value: bytes, words: str) -> None:
    pem = _leaf_with(ca_dir, "bad", value)
    with pytest.raises(InvalidArgument, match=words):
        pki.identity_from_pem(pem)
    with pytest.raises(svid.SvidError, match=f"zones extension .{pki.ZONES_OID}."):
        svid.check(pem, (ca_dir / "ca.crt").read_bytes())
    assert tls.identity_from_auth_context({"peer_uri": [f"spiffe://{DOMAIN}/agent/bad".encode()],
                                           "x509_pem_cert": [pem]}) is None


def test_a_critical_zones_extension_is_refused(ca_dir: Path) -> None:
    pem = _leaf_with(ca_dir, "crit", pki.encode_zones(["eu"]), critical=True)
    with pytest.raises(InvalidArgument, match="must not be critical"):
        pki.identity_from_pem(pem)


@pytest.mark.parametrize("zones", [[], [""], ["eu west"], ["eu/1"], ["x" * 257], ["é"]])
def test_issue_refuses_bad_zone_names_and_writes_nothing(ca_dir: Path, zones: list[str]) -> None:
    with pytest.raises(InvalidArgument, match="zone"):
        pki.issue(ca_dir, "agent", "edge", zones=zones)
    assert not (ca_dir / "edge.crt").exists() and not (ca_dir / "edge.key").exists()


def test_zones_are_for_agents_only(ca_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="for agents"):
        pki.issue(ca_dir, "submitter", "alice", zones=["eu"])


def test_identity_validates_zones() -> None:
    assert pki.Identity(DOMAIN, "agent", "a", frozenset({"eu"})).zones == frozenset({"eu"})
    with pytest.raises(InvalidArgument, match="invalid zone name"):
        pki.Identity(DOMAIN, "agent", "a", frozenset({"e u"}))


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="outrider")
    cli_pki.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_issue_zones_json(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["pki", "issue", str(ca_dir), "agent", "edge-1", "--zones", "eu, eu-west", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["zones"] == ["eu", "eu-west"]
    assert pki.identity_from_pem((ca_dir / "edge-1.crt").read_bytes()).zones == frozenset({"eu", "eu-west"})
    assert _run(["pki", "issue", str(ca_dir), "agent", "edge-2"]) == 0
    assert "(zones" not in capsys.readouterr().out
    assert _run(["pki", "issue", str(ca_dir), "agent", "edge-3", "--zones", "eu"]) == 0
    assert "(zones eu)" in capsys.readouterr().out
    with pytest.raises(InvalidArgument, match="invalid zone name ''"):
        _run(["pki", "issue", str(ca_dir), "agent", "edge-4", "--zones", "eu,,us"])
