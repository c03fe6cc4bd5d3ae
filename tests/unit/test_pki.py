"""Tests for outrider.pki and the ``outrider pki`` CLI verbs, with real crypto."""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outrider import cli_pki, pki
from outrider.errors import InvalidArgument, OutriderError

DOMAIN = "acme.ml"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d, DOMAIN, sans=["sched.acme.ml", "10.1.2.3", "2001:db8::7"])
    return d


# ------------------------------------------------------------------ init_ca


def test_init_writes_ca_files_with_private_modes(ca_dir: Path) -> None:
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca.crt", "ca.key", "scheduler.crt", "scheduler.key", "trust_domain",
    ]
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(ca_dir / "scheduler.key") == 0o600
    assert (ca_dir / "trust_domain").read_text().strip() == DOMAIN


def test_keys_are_0600_from_creation_even_with_an_open_umask(tmp_path: Path) -> None:
    # With umask 0 a create-then-chmod implementation would briefly (or, if it
    # forgot the chmod, permanently) leave a world-readable key.
    old = os.umask(0)
    try:
        pki.init_ca(tmp_path / "pki", DOMAIN)
        crt, key = pki.issue(tmp_path / "pki", "agent", "a1")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "pki" / "ca.key") == 0o600
    assert _mode(tmp_path / "pki" / "scheduler.key") == 0o600
    assert _mode(key) == 0o600
    assert _mode(crt) == 0o644


def test_ca_certificate_is_a_ca(ca_dir: Path) -> None:
    ca = _cert(ca_dir / "ca.crt")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)  # self-signed
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == ca.public_key().public_numbers()  # type: ignore[union-attr]


def test_scheduler_certificate_sans_and_usage(ca_dir: Path) -> None:
    cert = _cert(ca_dir / "scheduler.crt")
    cert.verify_directly_issued_by(_cert(ca_dir / "ca.crt"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{DOMAIN}/scheduler/scheduler"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "sched.acme.ml"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("2001:db8::7"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert pki.identity_from_pem((ca_dir / "scheduler.crt").read_bytes()) == pki.Identity(DOMAIN, "scheduler", "scheduler")
    assert cert.not_valid_after_utc <= _cert(ca_dir / "ca.crt").not_valid_after_utc


def test_init_refuses_to_overwrite_and_changes_nothing(ca_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    with pytest.raises(InvalidArgument, match=r"ca\.crt.*already exists"):
        pki.init_ca(ca_dir, "other.example")
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before


def test_init_refuses_when_any_single_file_exists(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    (d / "scheduler.key").write_text("old")
    with pytest.raises(InvalidArgument, match=r"scheduler\.key"):
        pki.init_ca(d, DOMAIN)
    assert sorted(p.name for p in d.iterdir()) == ["scheduler.key"]  # no partial CA written


def test_init_force_replaces_and_tightens_a_lax_key(ca_dir: Path) -> None:
    old_ca = (ca_dir / "ca.crt").read_bytes()
    os.chmod(ca_dir / "ca.key", 0o644)  # as if someone loosened it
    pki.init_ca(ca_dir, "other.example", force=True)
    assert (ca_dir / "ca.crt").read_bytes() != old_ca
    assert _mode(ca_dir / "ca.key") == 0o600
    assert (ca_dir / "trust_domain").read_text().strip() == "other.example"
    assert not [p for p in ca_dir.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize(
    "domain", ["", "Acme.ml", "acme_ml", "acme.ml/", "-acme.ml", "acme.ml.", "acme..ml", "acme ml", "ac:me", "a" * 256]
)
def test_init_rejects_bad_trust_domain(tmp_path: Path, domain: str) -> None:
    with pytest.raises(InvalidArgument, match="trust domain"):
        pki.init_ca(tmp_path / "pki", domain)
    assert not (tmp_path / "pki").exists()


@pytest.mark.parametrize("san", ["bad host", "a..b", "-x.example", "http://x"])
def test_init_rejects_bad_san(tmp_path: Path, san: str) -> None:
    with pytest.raises(InvalidArgument, match="--san"):
        pki.init_ca(tmp_path / "pki", DOMAIN, sans=[san])


def test_init_rejects_bad_days(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="days"):
        pki.init_ca(tmp_path / "pki", DOMAIN, days=0)


# ------------------------------------------------------------------ issue


@pytest.mark.parametrize("role", pki.ROLES)
def test_issue_has_exactly_one_spiffe_uri_san(ca_dir: Path, role: str) -> None:
    crt, key = pki.issue(ca_dir, role, "node-1.a_b")
    assert (crt, key) == (ca_dir / "node-1.a_b.crt", ca_dir / "node-1.a_b.key")
    assert _mode(key) == 0o600
    cert = _cert(crt)
    cert.verify_directly_issued_by(_cert(ca_dir / "ca.crt"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Exactly one SAN of any type, and it is the URI.
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/{role}/node-1.a_b")]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1.a_b"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    priv = serialization.load_pem_private_key(key.read_bytes(), None)
    assert priv.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert pki.identity_from_pem(crt.read_bytes()) == pki.Identity(DOMAIN, role, "node-1.a_b")


def test_issue_validity(ca_dir: Path) -> None:
    crt, _ = pki.issue(ca_dir, "agent", "short", days=2)
    cert = _cert(crt)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now  # backdated a little for skewed clocks
    assert now + datetime.timedelta(days=1) < cert.not_valid_after_utc <= now + datetime.timedelta(days=2, minutes=1)


def test_issue_refuses_overwrite_unless_forced(ca_dir: Path) -> None:
    crt, key = pki.issue(ca_dir, "agent", "a1")
    old = crt.read_bytes()
    with pytest.raises(InvalidArgument, match=r"a1\.crt already exists"):
        pki.issue(ca_dir, "submitter", "a1")
    assert crt.read_bytes() == old
    pki.issue(ca_dir, "submitter", "a1", force=True)
    assert pki.identity_from_pem(crt.read_bytes()).role == "submitter"
    assert _mode(key) == 0o600


@pytest.mark.parametrize("role", ["scheduler", "Agent", "root", "", "agent/x"])
def test_issue_rejects_bad_role(ca_dir: Path, role: str) -> None:
    with pytest.raises(InvalidArgument, match="role"):
        pki.issue(ca_dir, role, "n1")


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "_x", "a/b", "a b", "é", "a" * 64, "a:b", "x%2F"])
def test_issue_rejects_bad_name(ca_dir: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        pki.issue(ca_dir, "agent", name)


@pytest.mark.parametrize("name", ["ca", "scheduler"])
def test_issue_refuses_reserved_names_even_with_force(ca_dir: Path, name: str) -> None:
    before = (ca_dir / f"{name}.crt").read_bytes()
    with pytest.raises(InvalidArgument, match="reserved"):
        pki.issue(ca_dir, "agent", name, force=True)
    assert (ca_dir / f"{name}.crt").read_bytes() == before


def test_issue_max_length_name(ca_dir: Path) -> None:
    crt, _ = pki.issue(ca_dir, "agent", "a" * 63)
    assert pki.identity_from_pem(crt.read_bytes()).name == "a" * 63


def test_issue_missing_ca_dir(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no such PKI directory.*pki init"):
        pki.issue(tmp_path / "nope", "agent", "a1")


def test_issue_dir_without_ca(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"ca\.crt: missing"):
        pki.issue(tmp_path, "agent", "a1")


def test_issue_corrupt_ca_key(ca_dir: Path) -> None:
    (ca_dir / "ca.key").write_text("garbage")
    with pytest.raises(InvalidArgument, match=r"ca\.key: cannot read the CA key"):
        pki.issue(ca_dir, "agent", "a1")


def test_issue_reads_domain_from_scheduler_cert_without_trust_domain_file(ca_dir: Path) -> None:
    (ca_dir / "trust_domain").unlink()
    crt, _ = pki.issue(ca_dir, "admin", "ops")
    assert pki.identity_from_pem(crt.read_bytes()).spiffe_id == f"spiffe://{DOMAIN}/admin/ops"


# ------------------------------------------------------------------ identities


def test_identity_round_trip() -> None:
    ident = pki.Identity("acme.ml", "agent", "gpu-1")
    assert ident.spiffe_id == "spiffe://acme.ml/agent/gpu-1"
    assert str(ident) == ident.spiffe_id
    assert pki.parse_spiffe_id(ident.spiffe_id) == ident
    assert pki.parse_spiffe_id("spiffe://acme.ml/scheduler/scheduler").role == "scheduler"


@pytest.mark.parametrize(
    "uri, why",
    [
        ("https://acme.ml/agent/a", "must start with spiffe://"),
        ("SPIFFE://acme.ml/agent/a", "must start with spiffe://"),
        ("spiffe:/acme.ml/agent/a", "must start with spiffe://"),
        ("acme.ml/agent/a", "must start with spiffe://"),
        ("spiffe://acme.ml/agent", "exactly two path segments"),
        ("spiffe://acme.ml/agent/a/b", "exactly two path segments"),
        ("spiffe://acme.ml/agent/a/", "exactly two path segments"),
        ("spiffe://acme.ml", "exactly two path segments"),
        ("spiffe:///agent/a", "must not be empty"),
        ("spiffe://acme.ml//a", "must not be empty"),
        ("spiffe://acme.ml/agent/", "must not be empty"),
        ("spiffe://acme.ml/wizard/a", "invalid role"),
        ("spiffe://Acme.ml/agent/a", "invalid trust domain"),
        ("spiffe://acme.ml:443/agent/a", "invalid trust domain"),
        ("spiffe://user@acme.ml/agent/a", "invalid trust domain"),
        ("spiffe://acme.ml/agent/a?x=1", "invalid name"),
        ("spiffe://acme.ml/agent/a#f", "invalid name"),
        ("spiffe://acme.ml/agent/a%2Fb", "invalid name"),
        ("spiffe://acme.ml/agent/..", "invalid name"),
        ("spiffe://acme.ml/agent/a b", "invalid name"),
    ],
)
def test_parse_spiffe_id_rejects(uri: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        pki.parse_spiffe_id(uri)
    assert why in str(info.value)
    assert repr(uri) in str(info.value)  # the message names the bad input


def test_parse_spiffe_id_rejects_non_string() -> None:
    with pytest.raises(InvalidArgument, match="expected a string"):
        pki.parse_spiffe_id(b"spiffe://acme.ml/agent/a")  # type: ignore[arg-type]


def test_identity_validates_fields() -> None:
    with pytest.raises(InvalidArgument, match="role"):
        pki.Identity("acme.ml", "wizard", "a")
    with pytest.raises(InvalidArgument, match="name"):
        pki.Identity("acme.ml", "agent", "a/b")
    with pytest.raises(InvalidArgument, match="trust domain"):
        pki.Identity("ACME", "agent", "a")


def _self_signed(sans: list[x509.GeneralName] | None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_identity_from_pem_errors() -> None:
    with pytest.raises(InvalidArgument, match="not a PEM X.509 certificate"):
        pki.identity_from_pem(b"hello")
    with pytest.raises(InvalidArgument, match="no subject alternative names"):
        pki.identity_from_pem(_self_signed(None))
    with pytest.raises(InvalidArgument, match="found 0"):
        pki.identity_from_pem(_self_signed([x509.DNSName("x.example"), x509.UniformResourceIdentifier("https://x")]))
    two = [
        x509.UniformResourceIdentifier("spiffe://acme.ml/agent/a"),
        x509.UniformResourceIdentifier("spiffe://acme.ml/admin/b"),
    ]
    with pytest.raises(InvalidArgument, match="found 2"):
        pki.identity_from_pem(_self_signed(two))
    with pytest.raises(InvalidArgument, match="invalid role"):
        pki.identity_from_pem(_self_signed([x509.UniformResourceIdentifier("spiffe://acme.ml/root/a")]))


def test_identity_from_pem_ignores_other_sans() -> None:
    pem = _self_signed([x509.DNSName("x.example"), x509.UniformResourceIdentifier("spiffe://acme.ml/agent/a")])
    assert pki.identity_from_pem(pem) == pki.Identity("acme.ml", "agent", "a")


# ------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outrider")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_pki.add_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_init_and_issue_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert _run(["pki", "init", str(d), "--trust-domain", DOMAIN, "--san", "sched.example", "--san", "10.0.0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ca_crt"] == str(d / "ca.crt") and out["ca_key"] == str(d / "ca.key")
    assert out["scheduler_crt"] == str(d / "scheduler.crt") and out["scheduler_key"] == str(d / "scheduler.key")
    assert out["trust_domain"] == DOMAIN
    assert out["spiffe_id"] == f"spiffe://{DOMAIN}/scheduler/scheduler"
    san = _cert(d / "scheduler.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sched.example" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)

    assert _run(["pki", "issue", str(d), "agent", "edge-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "cert": str(d / "edge-1.crt"), "key": str(d / "edge-1.key"), "ca": str(d / "ca.crt"),
        "spiffe_id": f"spiffe://{DOMAIN}/agent/edge-1", "zones": None,
    }


def test_cli_human_output_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert _run(["pki", "init", str(d), "--trust-domain", DOMAIN]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and DOMAIN in out
    assert _run(["pki", "issue", str(d), "submitter", "alice"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"spiffe://{DOMAIN}/submitter/alice" in out
    # Errors are OutriderError subclasses, for the CLI's main to print and exit 2.
    with pytest.raises(OutriderError, match="already exists"):
        _run(["pki", "init", str(d), "--trust-domain", DOMAIN])
    with pytest.raises(OutriderError, match="already exists"):
        _run(["pki", "issue", str(d), "submitter", "alice"])
    assert _run(["pki", "issue", str(d), "submitter", "alice", "--force"]) == 0
    with pytest.raises(OutriderError, match="invalid name"):
        _run(["pki", "issue", str(d), "agent", "bad/name"])


def test_cli_argparse_rejects_bad_role_and_missing_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["pki", "issue", "d", "scheduler", "n"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["pki"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["pki", "init", "d"])  # --trust-domain is required
    capsys.readouterr()


def test_init_into_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(InvalidArgument, match="not a directory"):
        pki.init_ca(blocker, DOMAIN)
    with pytest.raises(InvalidArgument, match="cannot create the CA directory"):
        pki.init_ca(blocker / "sub", DOMAIN)


def test_write_survives_a_stale_temp_file(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    (d / f".ca.key.tmp{os.getpid()}").write_text("left by a crash")
    pki.init_ca(d, DOMAIN)
    assert _mode(d / "ca.key") == 0o600
    assert not [p for p in d.iterdir() if p.name.startswith(".")]
