"""Leadership: one scheduler leads, the others stand by (docs/ha.md).

The engine keeps its working state in memory, so replicas run active/passive. On PostgreSQL
every replica campaigns for the advisory lock of :mod:`scheduler.store.pglock`; the winner adds
one to the fencing epoch in the leader row, hands that epoch to the store (every write
transaction checks it first: a deposed leader commits nothing once another took over), then
loads the state and serves. A standby keeps trying for the lock and tells callers where the
leader is. The leader pings its lock session every second; a failed ping, or none succeeding
for :data:`~scheduler.store.pglock.LEADER_TIMEOUT_S`, ends the process at once (crash-only: it
comes back as a standby).

SQLite is one node: :class:`SingleNode` leads at once, and there is no fencing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from scheduler.store.base import Store, deposed

if TYPE_CHECKING:  # psycopg is loaded only when the database is PostgreSQL
    from scheduler.store.pglock import LockSession

log = logging.getLogger(__name__)

#: How often a standby tries for the lock (and reads who leads).
CAMPAIGN_INTERVAL_S = 0.5
#: How often the leader pings its lock session.
PING_INTERVAL_S = 1.0


class SingleNode:
    """SQLite: the only scheduler, so always the leader."""

    epoch = 0

    async def campaign(self, on_leader: Callable[[str], None]) -> None:
        return None

    def hold(self) -> None:
        return None

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


class Leadership:
    """One PostgreSQL replica's campaign for the lead, and its hold on it once won."""

    def __init__(self, store: Store, advertise: str) -> None:
        from scheduler.store.pglock import LEADER_TIMEOUT_S
        from scheduler.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        self.store = store
        self.advertise = advertise
        self.timeout_s = LEADER_TIMEOUT_S
        self.session: LockSession = store.lock_session()
        self.epoch = 0
        self._last_ok = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def campaign(self, on_leader: Callable[[str], None]) -> None:
        """Return once this replica leads (the epoch claimed and set on the store). Until then,
        ``on_leader(address)`` hears who leads now ("" while nobody does)."""
        while True:
            won = await asyncio.to_thread(self.session.try_acquire)
            if won:
                break
            row = await asyncio.to_thread(self.session.leader)
            on_leader(str(row["address"]) if row else "")
            await asyncio.sleep(CAMPAIGN_INTERVAL_S)
        host = socket.gethostname()
        self.epoch = await asyncio.to_thread(self.session.claim, self.advertise, os.getpid(), host, time.time())
        self.store.fence = self.epoch  # set before any state is loaded or written
        await asyncio.to_thread(self.store.sync_chain)  # after the last record the old leader wrote
        self._last_ok = time.monotonic()
        log.info("leading at epoch %d (advertised as %s)", self.epoch, self.advertise)

    def hold(self) -> None:
        """Ping the lock session every second on a thread of its own; losing it ends the process."""
        self._thread = threading.Thread(target=self._ping, name="leader-ping", daemon=True)
        self._thread.start()

    def _ping(self) -> None:
        while not self._stop.wait(PING_INTERVAL_S):
            try:
                self.session.ping()
            except Exception as exc:
                if self._stop.is_set():
                    return
                deposed(f"the leadership lock's database session is gone ({' '.join(str(exc).split())[:200]})")
            self._last_ok = time.monotonic()

    def check(self) -> None:
        """Called from the event loop's tick: no ping succeeded for the timeout (a ping hung on a
        dead link, or the process was paused): stop, as the lock may be another's by now."""
        if self._thread is not None and time.monotonic() - self._last_ok > self.timeout_s:
            deposed(f"no ping of the leadership lock's session succeeded for {self.timeout_s:g}s")

    def close(self) -> None:
        self._stop.set()
        self.session.close()  # the lock goes with the session: a standby takes over at once
