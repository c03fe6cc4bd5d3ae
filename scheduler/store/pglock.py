"""PostgreSQL's half of leader election (scheduler.leader; docs/ha.md): the lock session.

One dedicated connection per scheduler replica holds ``pg_try_advisory_lock`` (session level)
while it leads. Losing the session loses the lock, and both ends notice within a few seconds:

* the server: the session runs with ``idle_session_timeout``, and the leader pings it every
  second, so a leader that stops pinging (SIGSTOP, a hung host, a partition) has its session
  ended by the server, and the lock freed, after :data:`LEADER_TIMEOUT_S`;
* the leader: TCP keepalives and ``tcp_user_timeout`` bound how long a ping may hang on a dead
  link; a failed ping ends the process (scheduler.leader).

The leader row (migration 9) carries the fencing epoch: the winner of the lock adds one to it
in a transaction of its own before it loads any state; every write transaction of a leader then
checks it (``outrider_fence``, scheduler.store.postgres).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

#: The advisory lock key of leadership ("outrider" + 1 in ASCII: apart from the migration lock's).
LEADER_LOCK = 0x6F75747269646573
#: How long the server keeps a silent lock session, and how long a ping may hang: the bound on
#: how long a paused or cut-off leader keeps the lock.
LEADER_TIMEOUT_S = 5.0


class LockSession:
    """The dedicated connection that holds (or tries for) the leadership lock."""

    def __init__(self, conninfo: str, password: str | None, timeout_s: float = LEADER_TIMEOUT_S) -> None:
        extra: dict[str, Any] = {
            "keepalives": 1,
            "keepalives_idle": 1,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(timeout_s * 1000),
            "connect_timeout": max(2, int(timeout_s)),
        }
        if password is not None:
            extra["password"] = password
        self.timeout_s = timeout_s
        self.conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(
            conninfo, autocommit=True, row_factory=dict_row, **extra
        )
        ms = int(timeout_s * 1000)
        self.conn.execute(f"SET idle_session_timeout = {ms}".encode())
        # A claim waits for a deposed leader's transactions in flight (FOR SHARE on the row);
        # the server ends one left idle by a paused process after its own timeout (postgres.py).
        self.conn.execute(f"SET statement_timeout = {3 * ms}".encode())
        self.conn.execute("SET synchronous_commit = on")

    def try_acquire(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (LEADER_LOCK,)).fetchone()
        return bool(row and row["got"])

    def claim(self, address: str, pid: int, host: str, now: float) -> int:
        """Become the leader of record: the epoch one past the last (1 on a fresh database)."""
        row = self.conn.execute(
            "INSERT INTO leader(one, epoch, address, pid, host, since) VALUES (true, 1, %s, %s, %s, %s)"
            " ON CONFLICT (one) DO UPDATE SET epoch = leader.epoch + 1, address = excluded.address,"
            " pid = excluded.pid, host = excluded.host, since = excluded.since RETURNING epoch",
            (address, pid, host, now),
        ).fetchone()
        assert row is not None
        return int(row["epoch"])

    def leader(self) -> dict[str, Any] | None:
        """The leader of record: epoch, address, pid, host, since (None before the first)."""
        return self.conn.execute("SELECT epoch, address, pid, host, since FROM leader").fetchone()

    def ping(self) -> None:
        """A round trip on the lock session; raises once the session (and so the lock) is gone."""
        self.conn.execute("SELECT 1")

    def close(self) -> None:
        self.conn.close()
