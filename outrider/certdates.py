"""A certificate's serial number and validity dates, read without ``cryptography`` or ``ssl``.

The agent checks its own certificate's dates at start and before every reconnect
(:mod:`agent.certcheck`), and the SDK before it dials (:mod:`outrider.client`); the agent keeps
``cryptography`` and Python's ``ssl`` out of its process (see :mod:`outrider.tls` and
``agent.main``), so the few fields needed are read here from the DER encoding with the standard
library: ``Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
serialNumber INTEGER, signature AlgorithmIdentifier, issuer Name, validity SEQUENCE { notBefore
Time, notAfter Time }, ... } ... }`` (RFC 5280 4.1), where a Time is a UTCTime (``YYMMDDHHMMSSZ``,
years 1950-2049) or a GeneralizedTime (``YYYYMMDDHHMMSSZ``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from outrider.errors import ConfigError, OutriderError

PathLike = Union[str, "os.PathLike[str]"]

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


class CertificateNotValid(OutriderError):
    """Raised when a certificate is past its notAfter or before its notBefore; the message says which,
    when, and what to do. The scheduler would refuse it (at the handshake), so: UNAUTHENTICATED."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str, *, expired: bool, when: datetime.datetime) -> None:
        super().__init__(message)
        #: True: past notAfter; False: before notBefore (a clock that is wrong, usually).
        self.expired = expired
        #: notAfter (expired) or notBefore (not yet valid), UTC.
        self.when = when


@dataclass(frozen=True)
class CertDates:
    """What :func:`read_dates` reads from a certificate."""

    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``; ValueError if cut."""
    if pos + 2 > len(der):
        raise ValueError("truncated")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(der):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _time(tag: int, raw: bytes) -> datetime.datetime:
    text = raw.decode("ascii")
    if not text.endswith("Z"):
        raise ValueError("time not in UTC")
    if tag == 0x17:  # UTCTime
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime
        raise ValueError("not a time")
    return datetime.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc)


def dates_from_der(der: bytes) -> CertDates:
    """Serial and validity of a DER certificate; ValueError if it is not one."""
    tag, start, _ = _tlv(der, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    tag, pos, _ = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    tag, value, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = end
        tag, value, end = _tlv(der, pos)
    if tag != 0x02:
        raise ValueError("no serial number")
    serial = int.from_bytes(der[value:end], "big", signed=True)
    pos = end
    for _ in range(2):  # signature AlgorithmIdentifier, issuer Name
        _, _, pos = _tlv(der, pos)
    tag, pos, _ = _tlv(der, pos)  # validity
    if tag != 0x30:
        raise ValueError("no validity")
    tag, value, end = _tlv(der, pos)
    not_before = _time(tag, der[value:end])
    tag, value, end = _tlv(der, end)
    not_after = _time(tag, der[value:end])
    return CertDates(serial, not_before, not_after)


def read_dates(path: PathLike) -> CertDates:
    """Serial and validity of the first certificate in the PEM file ``path``.

    Raises ConfigError naming the file when it cannot be read or holds no certificate.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the certificate: {exc.strerror or exc}") from None
    begin = data.find(_BEGIN)
    end = data.find(_END, begin + 1)
    if begin < 0 or end < 0:
        raise ConfigError(f"{p}: no PEM certificate in it (no '{_BEGIN.decode()}' block)")
    try:
        der = base64.b64decode(b"".join(data[begin + len(_BEGIN) : end].split()), validate=True)
        return dates_from_der(der)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable X.509 certificate ({exc})") from None


def _utc(t: datetime.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}Z"


def check_dates(
    path: PathLike, *, expired_hint: str, early_hint: str, now: datetime.datetime | None = None, whose: str = ""
) -> CertDates:
    """The dates of the certificate in ``path`` if ``now`` is within them; else CertificateNotValid.

    ``whose`` names the certificate in the message (default: the file), and the hints say what to
    do about an expired one and one not valid yet.
    """
    dates = read_dates(path)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    whose = whose or f"the certificate {path}"
    if now > dates.not_after:
        raise CertificateNotValid(
            f"{whose} expired at {_utc(dates.not_after)}; {expired_hint}", expired=True, when=dates.not_after
        )
    if now < dates.not_before:
        raise CertificateNotValid(
            f"{whose} is not valid until {_utc(dates.not_before)} and this machine's clock says {_utc(now)}; "
            f"{early_hint}",
            expired=False,
            when=dates.not_before,
        )
    return dates
