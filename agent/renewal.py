"""Renewing the agent's certificate over its mTLS session, before it expires.

At two thirds of the current certificate's lifetime (counted from its notBefore) the agent
makes a new key and a CSR, calls ``IdentityService.RenewCertificate`` over the session's
channel (the scheduler signs for the identity of the certificate the call came with, and
its zones), writes the new pair, and has the session reconnect with it: Register again
under the same instance id takes over its own session and leases, so running stages go on.
If the scheduler cannot be reached (or refuses), it tries again with backoff; each renewal
is logged at INFO with the new expiry.

The pair switches together, crash or not (:func:`swap`, :func:`recover`)::

    write KEY.new, CERT.new (each complete, fsync'd)  ── crash: KEY.new alone is dropped at start
    rename KEY.new -> KEY                             ── crash: CERT.new is renamed in at start
    rename CERT.new -> CERT                           ── done

so the files the agent reads at start are always a matching pair: :func:`recover` runs
before they are read (``agent.main.load_config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outrider.errors import OutriderError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.session import Session

log = logging.getLogger(__name__)

#: Renew at this fraction of the certificate's lifetime.
RENEW_AT = 2 / 3
#: Backoff between failed attempts: from RETRY_MIN_S, doubling, up to RETRY_MAX_S (and never
#: past a tenth of the certificate's lifetime, so a short-lived one gets several tries).
RETRY_MIN_S = 1.0
RETRY_MAX_S = 300.0
#: The longest single wait before the certificate's dates are read again (a replaced file is noticed).
RECHECK_S = 3600.0
RENEW_TIMEOUT_S = 30.0


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap(cert: Path, key: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Replace the certificate and key so that a crash at any point leaves a matching pair
    once :func:`recover` has run (see the module docstring)."""
    from agent.enroll import write_private

    write_private(_new(key), key_pem, 0o600)
    write_private(_new(cert), cert_pem, 0o644)
    os.replace(_new(key), key)
    _fsync_dir(key.parent)
    os.replace(_new(cert), cert)
    _fsync_dir(cert.parent)


def recover(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """Finish or undo a :func:`swap` a crash interrupted (before the files are read)."""
    c, k = Path(cert), Path(key)
    if _new(c).exists():
        if _new(k).exists():
            os.replace(_new(k), k)
        os.replace(_new(c), c)
        log.warning("finished a certificate renewal a crash interrupted (%s, %s)", c, k)
    elif _new(k).exists():
        _new(k).unlink()  # the new certificate never got written: the old pair stands


def lifetime(cert_path: str | os.PathLike[str]) -> tuple[float, float]:
    """(notBefore, notAfter) of a PEM certificate file, seconds since the epoch (read without
    ``cryptography``, which an idle agent does not load: only a renewal does)."""
    from outrider.certdates import read_dates

    dates = read_dates(cert_path)
    return dates.not_before.timestamp(), dates.not_after.timestamp()


def renew_at(not_before: float, not_after: float) -> float:
    return not_before + RENEW_AT * (not_after - not_before)


class Renewer:
    """Keeps the agent's certificate fresh (see the module docstring)."""

    def __init__(self, cfg: AgentConfig, session: Session, wall: Callable[[], float] = time.time) -> None:
        self.cfg, self.session, self.wall = cfg, session, wall
        self.renewals = 0

    async def run(self) -> None:
        delay = RETRY_MIN_S
        while not self.session.stopped:
            try:
                not_before, not_after = lifetime(self.cfg.cert)
            except (OSError, ValueError, OutriderError) as exc:
                log.warning("cannot read the certificate %s to schedule its renewal: %s", self.cfg.cert, exc)
                await asyncio.sleep(RECHECK_S / 60)
                continue
            wait = renew_at(not_before, not_after) - self.wall()
            if wait > 0:
                await asyncio.sleep(min(wait, RECHECK_S))
                continue
            try:
                await self.renew_once()
                delay = RETRY_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cap = max(RETRY_MIN_S, min(RETRY_MAX_S, (not_after - not_before) / 10))
                pause = min(delay, cap) * random.uniform(1.0, 1.5)
                log.warning("certificate renewal failed: %s; trying again in %.1fs", _why(exc), pause)
                await asyncio.sleep(pause)
                delay = min(delay * 2, cap)

    async def renew_once(self) -> None:
        """One renewal over the session's current channel; raises if it cannot be done now."""
        from agent.enroll import check_issued, new_key_and_csr
        from outrider.v1 import identity_pb2, identity_pb2_grpc

        channel = self.session.channel
        if channel is None:
            raise ConnectionError("not connected to the scheduler")
        for d in {Path(self.cfg.cert).parent, Path(self.cfg.key).parent}:
            if not os.access(d, os.W_OK | os.X_OK):  # found before the scheduler signs anything
                raise PermissionError(
                    f"cannot write in {d}: renewing replaces {self.cfg.cert} and {self.cfg.key} there "
                    "(make it writable by the agent, or give the agent a new certificate before this one expires)"
                )
        key, key_pem, csr_pem = new_key_and_csr(self.cfg.name or "agent")
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        req = identity_pb2.RenewCertificateRequest(csr_pem=csr_pem)
        resp = await stub.RenewCertificate(req, timeout=RENEW_TIMEOUT_S)
        cert = check_issued(resp.certificate_pem, key, resp.ca_pem)
        swap(Path(self.cfg.cert), Path(self.cfg.key), resp.certificate_pem, key_pem)
        self.renewals += 1
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resp.not_after))
        log.info(
            "certificate renewed (serial %x), valid until %s; reconnecting with it (stages keep running)",
            cert.serial_number,
            expiry,
        )
        self.session.reconnect()


def _why(exc: Any) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return f"{code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
