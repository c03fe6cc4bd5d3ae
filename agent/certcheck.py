"""The agent's own certificate: within its dates, else a clear message and a distinct exit code.

An agent whose certificate expired while it was offline (longer than the certificate's lifetime,
so nothing could renew it) would otherwise dial the scheduler forever, every handshake refused.
It is checked at start (``agent.main``) and before every (re)connect (``agent.session``), from
the file, so a certificate renewed on disk meanwhile is the one checked. Expired: the agent stops
and exits with :data:`EXIT_CERT_EXPIRED`, which the systemd unit lists in
``RestartPreventExitStatus=`` (restarting cannot help: it needs a new join token). Not yet valid
(this machine's clock is behind): a message naming both times, and the ordinary failure exit,
so that systemd retries once the clock is right.
"""

from __future__ import annotations

import datetime

from outrider.certdates import CertDates, CertificateNotValid, check_dates

__all__ = ["EXIT_CERT_EXPIRED", "EXIT_CERT_NOT_YET_VALID", "CertificateNotValid", "check"]

#: ``outrider-agent`` exits with this when its certificate expired (systemd: do not restart).
EXIT_CERT_EXPIRED = 78
#: ... and with this, the ordinary failure, when its certificate is not valid yet (a clock problem).
EXIT_CERT_NOT_YET_VALID = 2


def check(cert: str, scheduler: str, now: datetime.datetime | None = None) -> CertDates:
    """The dates of this agent's certificate ``cert``; CertificateNotValid saying what to do if
    ``now`` is outside them (ConfigError if the file cannot be read)."""
    return check_dates(
        cert,
        whose=f"this agent's certificate ({cert})",
        expired_hint="it was offline longer than its lifetime (or it could not be renewed in time); "
        "enrol it again with a new join token: "
        f"outrider-agent join --scheduler {scheduler} --token TOKEN --ca-fingerprint SHA256",
        early_hint="this machine's clock is probably behind (check NTP / time sync); "
        "the agent will work once the clock is right",
        now=now,
    )


def exit_code(exc: CertificateNotValid) -> int:
    """The exit code for a certificate outside its dates."""
    return EXIT_CERT_EXPIRED if exc.expired else EXIT_CERT_NOT_YET_VALID
