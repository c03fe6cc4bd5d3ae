"""Streaming calls open now, with the client certificate each was authorized with.

A TLS reload (SIGHUP, :mod:`scheduler.tlsreload`) that drops a CA from the bundle refuses new
handshakes and new calls of the certificates it signed, but a stream opened before (an agent's
work stream, a client's watch) is one call that would go on. So the interceptor
(``scheduler/auth.py``) tracks every streaming call while it runs, and after each reload
:meth:`OpenStreams.recheck` checks their certificates against the new bundle
(:func:`scheduler.svid.check`): a call whose certificate is refused now is ended, its handler
cancelled and the call answered ``UNAUTHENTICATED`` naming the rule (the agent then dials again,
and the handshake refuses it). A certificate that expires while its stream is open is found the
same way, by :func:`watch_expiry` every :data:`EXPIRY_CHECK_S` (the per-call check saw it valid
when the stream opened): from the expiry each call recorded when it opened, so that pass parses
nothing (parsing every stream's certificate every 5 s held the event loop 0.6 s at 4,097 streams,
once the parse cache of :mod:`scheduler.svid` no longer held them all). Everything runs on the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from scheduler import svid

log = logging.getLogger(__name__)

#: How often open streams' certificates are checked again for their dates.
EXPIRY_CHECK_S = 5.0


@dataclass
class OpenCall:
    """One streaming call: its handler's task, its certificate and when that expires (None: not
    known, checked in full), and why it was ended (or None)."""

    task: asyncio.Task[object] | None
    leaf_pem: bytes
    not_after: datetime.datetime | None = None
    refusal: str | None = None


class OpenStreams:
    def __init__(self) -> None:
        self._calls: dict[int, OpenCall] = {}

    def __len__(self) -> int:
        return len(self._calls)

    @contextlib.contextmanager
    def track(self, leaf_pem: bytes, not_after: datetime.datetime | None = None) -> Iterator[OpenCall]:
        """Track the streaming call the current task serves while the block runs; ``not_after``:
        when its certificate expires (as the per-call check found it)."""
        call = OpenCall(asyncio.current_task(), leaf_pem, not_after)
        self._calls[id(call)] = call
        try:
            yield call
        finally:
            del self._calls[id(call)]

    def recheck(self, ca_pem: bytes, cause: str = "the scheduler's CA bundle changed") -> int:
        """End every tracked call whose certificate ``ca_pem`` (the bundle now) refuses; how many.
        ``cause`` says in the refusal why it was checked again."""
        ended = 0
        for call in list(self._calls.values()):
            if call.refusal is not None or call.task is None:
                continue
            try:
                svid.check(call.leaf_pem, ca_pem)
            except svid.SvidError as exc:
                call.refusal = f"client certificate refused ({cause}): {exc}"
                call.task.cancel()
                ended += 1
        if ended:
            log.warning("ended %d open stream(s) whose certificate is refused now (%s)", ended, cause)
        return ended

    def expire(self, ca_pem: bytes, now: datetime.datetime | None = None) -> int:
        """End every tracked call whose certificate expired by ``now``; how many. A call that
        recorded its certificate's expiry is compared with it; any other is checked in full
        against ``ca_pem`` (the bundle now)."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        cause = "checked again while its stream was open"
        ended = 0
        for call in list(self._calls.values()):
            if call.refusal is not None or call.task is None:
                continue
            if call.not_after is None:
                try:
                    svid.check(call.leaf_pem, ca_pem, now)
                except svid.SvidError as exc:
                    call.refusal = f"client certificate refused ({cause}): {exc}"
            elif now > call.not_after:
                why = f"the certificate expired at {call.not_after:%Y-%m-%d %H:%M:%S}Z"
                call.refusal = f"client certificate refused ({cause}): {why}"
            if call.refusal is not None:
                call.task.cancel()
                ended += 1
        if ended:
            log.warning("ended %d open stream(s) whose certificate expired (%s)", ended, cause)
        return ended


async def watch_expiry(streams: OpenStreams, ca_pem: Callable[[], bytes], every: float = EXPIRY_CHECK_S) -> None:
    """Forever: every ``every`` seconds, end the open streams whose certificate expired meanwhile."""
    while True:
        await asyncio.sleep(every)
        try:
            streams.expire(ca_pem())
        except Exception:
            log.exception("checking the open streams' certificates failed")
