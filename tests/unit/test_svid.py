"""scheduler.svid: each SPIFFE X.509-SVID rule, on certificates that break one each."""
from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from outrider import pki
from scheduler import svid
from tests.helpers import badcerts

DOMAIN = "acme.ml"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, DOMAIN)
    pki.issue(d, "admin", "root")
    return d


def _check(ca: Path, cert: Path, now: datetime.datetime | None = None) -> None:
    svid.check(cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n",
               (ca / "ca.crt").read_bytes(), now)


def test_an_issued_certificate_passes(ca: Path) -> None:
    _check(ca, ca / "root.crt")


@pytest.mark.parametrize(("kind", "words"), [
    ("two URI SANs", "2 URI SANs"),
    ("CA:TRUE leaf", "is a CA"),
    ("chain through an intermediate", "not signed by the scheduler's CA itself"),
    ("no clientAuth EKU", "does not include clientAuth"),
    ("expired", "expired at"),
    ("not yet valid", "not valid before"),
])
def test_each_broken_rule_is_named(ca: Path, tmp_path: Path, kind: str, words: str) -> None:
    cert, _ = badcerts.bad_identities(ca, tmp_path, DOMAIN)[kind]
    with pytest.raises(svid.SvidError, match=words):
        _check(ca, cert)


def test_another_cas_leaf_is_refused(ca: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path, DOMAIN)
    pki.issue(tmp_path, "admin", "root")
    with pytest.raises(svid.SvidError, match="not signed by the scheduler's CA"):
        _check(ca, tmp_path / "root.crt")


def test_validity_is_checked_per_call_not_only_at_the_handshake(ca: Path) -> None:
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    with pytest.raises(svid.SvidError, match="expired at"):
        _check(ca, ca / "root.crt", later)


def test_no_certificate_and_garbage_are_refused(ca: Path) -> None:
    with pytest.raises(svid.SvidError, match="no client certificate"):
        svid.check(b"", (ca / "ca.crt").read_bytes())
    with pytest.raises(svid.SvidError, match="not a PEM"):
        svid.check(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", (ca / "ca.crt").read_bytes())
