"""The pieces of enrolment that need no processes: pin forms, token strings, the per-peer rate
limit, the signer's CSR checks, and the crash-safe swap of a renewed key and certificate."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent import renewal
from agent.enroll import PinMismatch, new_key_and_csr, pinned_ca
from outrider import pki
from outrider.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted
from scheduler.core.tokens import parse_token
from scheduler.enrolment import PeerRate
from scheduler.signer import Signer


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, "acme.test")
    return d


def test_every_pin_form_reads_as_sha256_hex(ca: Path) -> None:
    fp = pki.fingerprint((ca / "ca.crt").read_bytes())
    hexpart = fp.removeprefix("sha256:")
    assert len(hexpart) == 64
    colons = ":".join(hexpart[i:i + 2] for i in range(0, 64, 2))
    for form in (fp, fp.upper().replace("SHA256:", "sha256:"), hexpart, hexpart.upper(), colons, colons.upper(),
                 f"SHA256 Fingerprint={colons.upper()}", f"  {fp}\n"):
        assert pki.parse_fingerprint(form) == fp, form
    der = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()).public_bytes(serialization.Encoding.DER)
    assert pki.fingerprint(der) == fp


@pytest.mark.parametrize("bad", ["", "sha256:", "sha1:" + "ab" * 20, "ab" * 31, "ab" * 33, "zz" * 32,
                                 "ab:" * 31 + "abab", "x" * 500])
def test_a_bad_pin_is_refused_naming_the_forms(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="sha256:<64 hex digits>"):
        pki.parse_fingerprint(bad)


def test_token_strings() -> None:
    assert parse_token("0123456789abcdef." + "A" * 43) == ("0123456789abcdef", "A" * 43)
    for bad in ("", "nodot", "0123456789abcdef." + "A" * 42, "0123456789ABCDEF." + "A" * 43,
                "0123456789abcdef." + "A" * 42 + "!", "x" * 5000):
        with pytest.raises(PermissionDenied, match="malformed join token") as info:
            parse_token(bad)
        assert "A" * 40 not in str(info.value)  # never echoes a secret back


def test_the_rate_limit_is_per_peer_host_and_refills() -> None:
    now = [0.0]
    rate = PeerRate(burst=3, every_s=2.0, clock=lambda: now[0])
    for port in (1, 2, 3):  # another source port is the same peer
        rate.take(f"ipv4:10.0.0.1:{port}")
    with pytest.raises(ResourceExhausted, match="too many enrolment attempts"):
        rate.take("ipv4:10.0.0.1:4")
    rate.take("ipv4:10.0.0.2:1")  # another peer has its own bucket
    now[0] = 2.0
    rate.take("ipv4:10.0.0.1:5")  # one more after every_s
    with pytest.raises(ResourceExhausted):
        rate.take("ipv4:10.0.0.1:6")


def _csr(key: object) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spiffe://evil/admin/root")])).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def test_the_signer_takes_only_the_csr_key_and_signs_an_svid_with_zones(ca: Path) -> None:
    signer = Signer(ca, "acme.test", ttl_s=600)
    _, _, csr_pem = new_key_and_csr("whatever")
    issued = signer.sign("edge-1", signer.public_key(csr_pem), frozenset({"eu"}))
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    ident = pki.identity_from_pem(issued.cert_pem)
    assert ident.spiffe_id == "spiffe://acme.test/agent/edge-1" and ident.zones == frozenset({"eu"})
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 600 <= life.total_seconds() <= 661  # backdated by a tenth of the lifetime at most
    # The CSR's subject (it asked to be an admin) is ignored.
    evil = signer.sign("edge-2", signer.public_key(_csr(ec.generate_private_key(ec.SECP384R1()))), None)
    assert pki.identity_from_pem(evil.cert_pem).spiffe_id == "spiffe://acme.test/agent/edge-2"
    assert signer.public_key(_csr(rsa.generate_private_key(65537, 2048)))


def test_the_signer_refuses_bad_csrs_and_a_missing_ca_key(ca: Path, tmp_path: Path) -> None:
    signer = Signer(ca, "acme.test")
    for bad, words in [(b"", "no certificate signing request"), (b"junk", "not a PEM PKCS#10"),
                       (b"x" * 20000, "over the limit"),
                       (_csr(ec.generate_private_key(ec.SECP521R1())), "not accepted"),
                       (_csr(rsa.generate_private_key(65537, 1024)), "at least 2048")]:
        with pytest.raises(InvalidArgument, match=words):
            signer.public_key(bad)
    keyless = tmp_path / "keyless"
    keyless.mkdir()
    (keyless / "ca.crt").write_bytes((ca / "ca.crt").read_bytes())
    nokey = Signer(keyless, "acme.test")
    assert not nokey.available
    with pytest.raises(FailedPrecondition, match=r"ca\.key is missing"):
        nokey.require()


def test_the_pin_must_name_a_ca_that_signed_the_leaf(ca: Path, tmp_path: Path) -> None:
    der = lambda p: x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(serialization.Encoding.DER)  # noqa: E731
    chain = [der(ca / "scheduler.crt"), der(ca / "ca.crt")]
    assert pinned_ca(chain, pki.fingerprint(chain[1]), "h:1") == (ca / "ca.crt").read_bytes()
    with pytest.raises(PinMismatch, match=r"expected sha256:0+, got sha256:"):
        pinned_ca(chain, "sha256:" + "0" * 64, "h:1")
    with pytest.raises(PinMismatch, match="not a CA"):  # pinning the leaf itself
        pinned_ca(chain, pki.fingerprint(chain[0]), "h:1")
    other = tmp_path / "other"
    pki.init_ca(other, "acme.test")
    forged = [der(ca / "scheduler.crt"), der(other / "ca.crt")]  # a CA that did not sign the leaf
    with pytest.raises(PinMismatch, match="not signed by the pinned CA"):
        pinned_ca(forged, pki.fingerprint(forged[1]), "h:1")


@pytest.mark.parametrize("crash_after", ["nothing", "key.new", "both new", "key renamed", "done"])
def test_a_renewal_interrupted_anywhere_leaves_a_matching_pair(tmp_path: Path, crash_after: str) -> None:
    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    cert.write_bytes(b"old cert")
    key.write_bytes(b"old key")
    new = {"cert": tmp_path / "agent.crt.new", "key": tmp_path / "agent.key.new"}
    steps = ["key.new", "both new", "key renamed", "done"]
    done = steps[: steps.index(crash_after) + 1] if crash_after in steps else []
    if "key.new" in done:
        new["key"].write_bytes(b"new key")
    if "both new" in done:
        new["cert"].write_bytes(b"new cert")
    if "key renamed" in done:
        os.replace(new["key"], key)
    if "done" in done:
        os.replace(new["cert"], cert)
    renewal.recover(cert, key)
    pair = (cert.read_bytes(), key.read_bytes())
    assert pair in {(b"old cert", b"old key"), (b"new cert", b"new key")}, (crash_after, pair)
    assert not new["cert"].exists() and not new["key"].exists()


def test_swap_writes_the_pair_with_the_key_private(tmp_path: Path) -> None:
    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    cert.write_bytes(b"old")
    key.write_bytes(b"old")
    renewal.swap(cert, key, b"C", b"K")
    assert (cert.read_bytes(), key.read_bytes()) == (b"C", b"K")
    assert key.stat().st_mode & 0o777 == 0o600
    assert renewal.renew_at(100.0, 400.0) == pytest.approx(300.0)
