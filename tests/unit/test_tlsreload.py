"""TLS material and CA bundles: outrider.certdates (dates without cryptography), outrider.cabundle,
scheduler.tlsreload (what a reload accepts), the SVID check against a bundle, load_ca from a bundle."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from cryptography import x509

from agent import certcheck
from outrider import cabundle, certdates, pki
from outrider.errors import ConfigError, InvalidArgument
from scheduler import svid, tlsreload
from scheduler.auth import AuthInterceptor
from tests.helpers import badcerts
from tests.helpers.tlsprobe import install, scheduler_cert

UTC = datetime.timezone.utc


@pytest.fixture
def cas(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    pki.init_ca(old, "acme.ml")
    pki.init_ca(new, "acme.ml")
    return old, new


def test_dates_read_without_cryptography_match_cryptographys(cas: tuple[Path, Path], tmp_path: Path) -> None:
    old, _ = cas
    far = datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=UTC)  # after 2049: a GeneralizedTime
    cert, _ = badcerts.leaf(
        old,
        tmp_path,
        "far",
        ["spiffe://acme.ml/agent/far"],
        not_before=datetime.datetime(1999, 1, 2, 3, 4, 5, tzinfo=UTC),
        not_after=far,
    )
    for path in (old / "ca.crt", old / "scheduler.crt", cert):
        want = x509.load_pem_x509_certificate(path.read_bytes())
        got = certdates.read_dates(path)
        assert (got.serial, got.not_before, got.not_after) == (
            want.serial_number,
            want.not_valid_before_utc,
            want.not_valid_after_utc,
        )
    assert certdates.read_dates(cert).not_after == far


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    ],
)
def test_an_unreadable_certificate_is_a_config_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.crt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=str(path)):
        certdates.read_dates(path)
    with pytest.raises(ConfigError, match="cannot read"):
        certdates.read_dates(tmp_path / "absent.crt")


def test_the_agents_check_says_expired_or_not_yet_valid(cas: tuple[Path, Path], tmp_path: Path) -> None:
    old, _ = cas
    cert = old / "scheduler.crt"
    dates = certdates.read_dates(cert)
    assert certcheck.check(str(cert), "s:7443").serial == dates.serial
    with pytest.raises(certcheck.CertificateNotValid) as late:
        certcheck.check(str(cert), "s:7443", now=dates.not_after + datetime.timedelta(seconds=1))
    assert late.value.expired and certcheck.exit_code(late.value) == certcheck.EXIT_CERT_EXPIRED == 78
    assert "expired at" in str(late.value) and "outrider-agent join --scheduler s:7443 --token" in str(late.value)
    with pytest.raises(certcheck.CertificateNotValid) as early:
        certcheck.check(str(cert), "s:7443", now=dates.not_before - datetime.timedelta(days=1))
    assert not early.value.expired and certcheck.exit_code(early.value) == 2
    assert "not valid until" in str(early.value) and "clock" in str(early.value)
    assert early.value.code == "UNAUTHENTICATED"


def test_a_bundle_is_written_once_per_ca_in_order_and_holds_cas_only(cas: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = cas
    out = tmp_path / "bundle.crt"
    written = cabundle.write_bundle(out, [old / "ca.crt", new / "ca.crt", old / "ca.crt"])
    assert len(written) == 2 and written[0].source == str(old / "ca.crt")
    assert [c.serial_number for c in x509.load_pem_x509_certificates(out.read_bytes())] == [
        x509.load_pem_x509_certificate((d / "ca.crt").read_bytes()).serial_number for d in (old, new)
    ]
    assert out.stat().st_mode & 0o777 == 0o644
    with pytest.raises(InvalidArgument, match="already exists"):
        cabundle.write_bundle(out, [new / "ca.crt"])
    cabundle.write_bundle(out, [out, new / "ca.crt"], force=True)  # OUT among the sources
    assert len(x509.load_pem_x509_certificates(out.read_bytes())) == 2
    with pytest.raises(InvalidArgument, match="is not a CA certificate"):
        cabundle.write_bundle(tmp_path / "b2.crt", [old / "scheduler.crt"])
    with pytest.raises(InvalidArgument, match="at least one"):
        cabundle.write_bundle(tmp_path / "b3.crt", [])


def test_load_ca_takes_the_ca_of_its_key_from_a_bundle(cas: tuple[Path, Path]) -> None:
    old, new = cas
    cabundle.write_bundle(new / "ca.crt", [old / "ca.crt", new / "ca.crt"], force=True)  # the new one second
    crt, _ = pki.issue(new, "agent", "a1")
    leaf = x509.load_pem_x509_certificate(crt.read_bytes())
    ca_new = x509.load_pem_x509_certificates((new / "ca.crt").read_bytes())[1]
    leaf.verify_directly_issued_by(ca_new)
    install(old / "ca.crt", new / "ca.crt")  # the other CA alone: ca.key belongs to none
    with pytest.raises(InvalidArgument, match="belongs to the key"):
        pki.issue(new, "agent", "a2")


def test_the_svid_check_accepts_a_leaf_of_any_ca_in_the_bundle(cas: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = cas
    bundle = tmp_path / "bundle.crt"
    cabundle.write_bundle(bundle, [old / "ca.crt", new / "ca.crt"])
    for d in (old, new):
        crt, _ = pki.issue(d, "agent", "a")
        svid.check(crt.read_bytes(), bundle.read_bytes())
        with pytest.raises(svid.SvidError, match="not signed by the scheduler's CA"):
            svid.check(crt.read_bytes(), ((new if d == old else old) / "ca.crt").read_bytes())


def test_the_interceptor_checks_against_the_bundle_it_is_given_now() -> None:
    current = [b"A"]
    auth = AuthInterceptor("acme.ml", lambda: current[0])
    assert auth.trust.ca_pem == b"A"
    first = auth.trust
    assert auth.trust is first  # unchanged: the same Trust
    current[0] = b"B"
    assert auth.trust.ca_pem == b"B" and auth.trust.domain == "acme.ml"
    assert AuthInterceptor("acme.ml", b"C").trust.ca_pem == b"C"


def test_a_reload_takes_good_files_and_keeps_the_old_on_bad_ones(
    cas: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = cas
    tls = tlsreload.TlsMaterial(old)
    first = tls.current
    assert first.generation == 1 and first.serial == certdates.read_dates(old / "scheduler.crt").serial
    seen: list[tlsreload.Material] = []
    tls.listeners.append(seen.append)

    install(new / "scheduler.crt", old / "scheduler.crt")
    install(new / "scheduler.key", old / "scheduler.key")
    with caplog.at_level(logging.INFO, logger="scheduler.tlsreload"):
        assert not tls.reload()  # signed by a CA not in ca.crt
    assert tls.current is first and seen == []
    assert "not signed by a CA in" in caplog.text and f"serial {first.serial:x}" in caplog.text

    cabundle.write_bundle(old / "ca.crt", [old / "ca.crt", new / "ca.crt"], force=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scheduler.tlsreload"):
        assert tls.reload()
    m = tls.current
    assert m.generation == 2 and len(m.cas) == 2 and m.serial == certdates.read_dates(new / "scheduler.crt").serial
    assert seen == [m] and tls.ca_pem == (old / "ca.crt").read_bytes()
    assert f"serial {m.serial:x}" in caplog.text and "expires" in caplog.text

    now = datetime.datetime.now(UTC)
    crt, key = scheduler_cert(
        new, tmp_path / "late", not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(days=1)
    )
    install(crt, old / "scheduler.crt")
    install(key, old / "scheduler.key")
    assert not tls.reload() and tls.current is m


def test_bad_files_at_start_are_a_config_error(cas: tuple[Path, Path]) -> None:
    old, _ = cas
    (old / "scheduler.key").unlink()
    with pytest.raises(ConfigError, match=r"scheduler\.key: missing"):
        tlsreload.TlsMaterial(old)


def test_a_reload_ends_the_open_streams_whose_certificate_the_new_bundle_refuses(cas: tuple[Path, Path]) -> None:
    import asyncio

    from scheduler.openstreams import OpenStreams

    old, new = cas
    old_leaf = pki.issue(old, "agent", "o")[0].read_bytes()
    new_leaf = pki.issue(new, "agent", "n")[0].read_bytes()
    streams = OpenStreams()

    async def serve(leaf: bytes, out: list[str]) -> None:
        with streams.track(leaf) as call:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                out.append(call.refusal or "cancelled by someone else")

    async def main() -> tuple[list[str], list[str], int]:
        a: list[str] = []
        b: list[str] = []
        ta, tb = asyncio.ensure_future(serve(old_leaf, a)), asyncio.ensure_future(serve(new_leaf, b))
        await asyncio.sleep(0)
        assert len(streams) == 2
        both = (old / "ca.crt").read_bytes() + (new / "ca.crt").read_bytes()
        assert streams.recheck(both) == 0
        ended = streams.recheck((new / "ca.crt").read_bytes())
        await ta
        assert not tb.done() and len(streams) == 1
        tb.cancel()
        await tb
        return a, b, ended

    a, b, ended = asyncio.run(main())
    assert ended == 1 and "CA bundle changed" in a[0] and "not signed by the scheduler's CA" in a[0]
    assert b == ["cancelled by someone else"] and len(streams) == 0


def test_an_agent_checks_a_certificate_issued_by_any_ca_of_the_bundle_it_is_sent(cas: tuple[Path, Path]) -> None:
    """Renewal during a CA rotation: the scheduler sends its bundle (old, new); the new CA signed."""
    from cryptography.hazmat.primitives import serialization

    from agent.enroll import check_issued
    from outrider.errors import FailedPrecondition

    old, new = cas
    crt, key_path = pki.issue(new, "agent", "r")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    bundle = (old / "ca.crt").read_bytes() + (new / "ca.crt").read_bytes()
    assert check_issued(crt.read_bytes(), key, bundle).serial_number == certdates.read_dates(crt).serial
    with pytest.raises(FailedPrecondition, match="does not check out"):
        check_issued(crt.read_bytes(), key, (old / "ca.crt").read_bytes())


def test_the_expiry_pass_compares_recorded_dates_and_parses_nothing(
    cas: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 5 s the open streams are checked for expired certificates: from the expiry each
    recorded when it opened, without parsing (bench/scale.py: parsing 4,097 streams' certificates,
    past the svid parse cache, held the event loop 0.6 s every pass). A call that recorded no
    expiry is checked in full."""
    import asyncio

    from scheduler import openstreams
    from scheduler.openstreams import OpenStreams

    old, _ = cas
    leaf = pki.issue(old, "agent", "x")[0].read_bytes()
    ca_pem = (old / "ca.crt").read_bytes()
    now = datetime.datetime.now(datetime.timezone.utc)
    hour = datetime.timedelta(hours=1)
    streams = OpenStreams()

    async def serve(not_after: datetime.datetime | None, out: list[str]) -> None:
        with streams.track(leaf, not_after) as call:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                out.append(call.refusal or "cancelled by someone else")

    def no_parse(*_: object) -> None:
        raise AssertionError("the expiry pass parsed a certificate whose expiry it had")

    async def dated() -> tuple[list[str], list[str], int]:
        past: list[str] = []
        future: list[str] = []
        a, b = asyncio.ensure_future(serve(now - hour, past)), asyncio.ensure_future(serve(now + hour, future))
        await asyncio.sleep(0)
        with monkeypatch.context() as m:
            m.setattr(openstreams.svid, "check", no_parse)
            ended = streams.expire(ca_pem, now)
        await a
        b.cancel()
        await b
        return past, future, ended

    past, future, ended = asyncio.run(dated())
    assert ended == 1 and future == ["cancelled by someone else"]
    assert "checked again while its stream was open" in past[0] and "the certificate expired at" in past[0]

    async def undated() -> tuple[list[str], int, int]:
        out: list[str] = []
        task = asyncio.ensure_future(serve(None, out))
        await asyncio.sleep(0)
        kept = streams.expire(ca_pem, now)
        ended = streams.expire(ca_pem, now + datetime.timedelta(days=3650))  # past the leaf's own expiry
        await task
        return out, kept, ended

    out, kept, ended = asyncio.run(undated())
    assert kept == 0 and ended == 1 and "the certificate expired at" in out[0]
