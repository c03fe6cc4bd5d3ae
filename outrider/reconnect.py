"""Reconnecting a stream that resumes: the backoff and the give-up deadline, in one place
(:meth:`outrider.client.Client.follow`, :func:`outrider.client_events.follow_events`, and a
``submit --watch`` not yet acknowledged)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from outrider.errors import OutriderError

__all__ = ["RECONNECT_BACKOFF_S", "Reconnects"]

#: The first wait before reconnecting, and the most it grows to (seconds).
RECONNECT_BACKOFF_S = (0.2, 5.0)


class Reconnects:
    """When a resumable stream (a run's watch, the event stream, a submission not yet
    acknowledged) tries again: after an error ``retryable`` accepts only (the client's:
    UNAVAILABLE), with a backoff from 0.2 s doubling to 5 s (jittered), until
    ``reconnect_for`` seconds pass without a connection; then, or on any other error,
    :meth:`lost` re-raises it. ``on_reconnect(tries, error)`` is called before each try."""

    def __init__(
        self,
        reconnect_for: float,
        on_reconnect: Callable[[int, OutriderError], None] | None,
        retryable: Callable[[OutriderError], bool],
    ) -> None:
        self.reconnect_for = reconnect_for
        self.on_reconnect = on_reconnect
        self.retryable = retryable
        self.connected()

    def connected(self) -> None:
        """The stream delivered: the next loss starts a fresh backoff and a fresh deadline."""
        self.tries, self.given_up_at, self.delay = 0, 0.0, RECONNECT_BACKOFF_S[0]

    def lost(self, exc: OutriderError) -> None:
        """Wait before the next try, or re-raise ``exc`` if there is to be none."""
        if not self.retryable(exc):
            raise exc
        now = time.monotonic()
        self.given_up_at = self.given_up_at or now + self.reconnect_for
        if now >= self.given_up_at:
            raise exc
        self.tries += 1
        if self.on_reconnect is not None:
            self.on_reconnect(self.tries, exc)
        time.sleep(min(self.delay * random.uniform(0.5, 1.0), max(0.0, self.given_up_at - now)))
        self.delay = min(RECONNECT_BACKOFF_S[1], self.delay * 2)
