"""The agent's durable state: the leases it holds and the outbox of unacknowledged results.

Kept in one diskcache store (``STATE/journal``, SQLite in WAL mode underneath), so that a
lease becomes a result in one transaction: after a crash a task is either still leased
here or waiting in the outbox, never neither. Two of diskcache's defaults would break the
promises made here, so they are overridden: it evicts past 1 GB (here
``eviction_policy='none'`` and no culling: nothing may be lost) and commits with
``synchronous=NORMAL`` (here FULL: a result acknowledged by the disk survives a power cut).

Nothing in it is pickled: keys are strings, values are bytes (serialized protobuf, or a
small JSON header before them), so bytes that came over the network are never unpickled.

Every commit is synced (FULL) before the write counts as done; it is made on the event
loop itself while the disk syncs within a millisecond and nothing waits in the writer
thread, else by that thread, grouped as the scheduler groups its
commits: what is queued while one transaction is being written goes into the next, so
a burst of short stages costs one sync per batch, not one per result
(:meth:`Journal.write`, :data:`FAST_S`). Rows go into diskcache's table directly, every
value in the database (never in a file of its own, which diskcache would not sync):
:class:`_RowWriter`.

Layout (keys)::

    lease\\tRUN\\tTASK\\tEPOCH    JSON header (started, pid, workdir) + "\\n" + Assignment bytes
    outbox\\tRUN\\tTASK\\tEPOCH   AgentMessage bytes: the Completion and the stage's last log chunks
    renewed                      JSON {"wall": t, "ttl": s}: when the leases were last renewed
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.stage import StageKey
from outrider.v1 import agent_pb2

__all__ = ["DISKCACHE_SETTINGS", "Adopt", "Journal", "LeaseRecord", "open_store"]

log = logging.getLogger(__name__)

#: diskcache settings for stores that must lose nothing: no eviction, no culling,
#: FULL sync (2), no statistics or tag index (less work per write).
DISKCACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "cull_limit": 0,
    "sqlite_synchronous": 2,
    "statistics": 0,
    "tag_index": 0,
}


class Adopt:
    """A value for :func:`open_store`'s stores: this file becomes the value, moved (not
    copied) into the store; it must be on the store's filesystem and already synced."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size


_DISK: Any = None


def open_store(path: Path) -> Any:
    """A diskcache ``Cache`` at ``path`` that loses nothing (:data:`DISKCACHE_SETTINGS`),
    keeps only bytes (anything else is refused: nothing is pickled, and a pickled value
    found on disk is refused too, never loaded), and can adopt a file (:class:`Adopt`)."""
    global _DISK
    import diskcache

    if _DISK is None:
        from diskcache.core import MODE_BINARY, MODE_PICKLE, UNKNOWN  # type: ignore[import-untyped]

        class SafeDisk(diskcache.Disk):
            def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> Any:
                if isinstance(value, Adopt):
                    filename, full_path = self.filename(key, value)
                    os.makedirs(os.path.dirname(full_path), exist_ok=True)
                    os.replace(value.path, full_path)
                    return value.size, MODE_BINARY, filename, None
                if type(value) is not bytes:
                    raise TypeError(f"the agent's stores keep bytes only, not {type(value).__name__}")
                return super().store(value, read, key)

            def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
                if mode == MODE_PICKLE:
                    raise ValueError("refusing to unpickle a value in the agent's store")
                return super().fetch(mode, filename, value, read)

        _DISK = SafeDisk
    path.mkdir(parents=True, exist_ok=True)
    return diskcache.Cache(str(path), disk=_DISK, **DISKCACHE_SETTINGS)


#: Who waits for a write: a future on the event loop, an event (flush), or nobody.
_Waiter = asyncio.Future[None] | threading.Event | None
#: One write: (key, bytes to put, or None to delete).
_Op = tuple[str, bytes | None]
#: What the writer thread gets: the writes, who waits, the event loop that submitted them.
_Job = tuple[list[_Op], _Waiter, asyncio.AbstractEventLoop | None]
_FILED = "SELECT key FROM Cache WHERE raw = 1 AND filename IS NOT NULL"

#: The writer's way into diskcache's table: one INSERT into this view (temporary: it lives in
#: the writer's connection only, never in the store) puts or deletes any number of keys, a
#: row each (``value`` NULL: delete). A put is diskcache's row for a value kept in the
#: database itself (its ``MODE_RAW`` = 1, no file), whatever its size: a value diskcache
#: puts in a file of its own is not synced, and a result must survive a power cut.
_OPS_VIEW = """
CREATE TEMP VIEW IF NOT EXISTS journal_ops(key, t, value) AS SELECT NULL, NULL, NULL;
CREATE TEMP TRIGGER IF NOT EXISTS journal_op INSTEAD OF INSERT ON journal_ops BEGIN
  DELETE FROM Cache WHERE NEW.value IS NULL AND key = NEW.key AND raw = 1;
  INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)
    SELECT NEW.key, 1, NEW.t, NULL, NEW.t, 0, NULL, 0, 1, NULL, NEW.value WHERE NEW.value IS NOT NULL
    ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, expire_time = NULL,
      access_time = excluded.access_time, access_count = 0, tag = NULL, size = 0, mode = 1, filename = NULL,
      value = excluded.value;
END;
"""
#: Rows per statement (a bigger group is written in several, in one transaction).
_ROWS_PER_STATEMENT = 32


def _ops_statement(n: int) -> str:
    return "INSERT INTO temp.journal_ops(key, t, value) VALUES " + ",".join(["(?, ?, ?)"] * n)


class _RowWriter:
    """Writes a group of puts and deletes into a diskcache ``Cache`` as one transaction,
    in diskcache's own table layout (the store stays an ordinary diskcache store, with its
    counts kept by its own triggers: :meth:`Journal.load` reads it through diskcache).

    Why not ``Cache.set``/``Cache.delete``: each runs two or three statements and a Python
    wrapper per key (a SELECT before every write, the culling check), and every SQLite call
    lets go of the GIL and must take it back from the event loop, which holds it while it
    runs Python (up to the 5 ms switch interval each time). Here a group is one statement
    in autocommit mode, so the whole transaction, its sync included, is one call with the
    GIL released. Measured beside a thread that keeps the GIL busy: 37 ms per transaction
    with diskcache's calls, 21 ms with one ``executemany`` per kind, 5.6 ms this way; on an
    idle interpreter 400, 195 and 205 µs. One per thread that writes (each has its own
    connection), and never two writing at once.
    """

    def __init__(self, cache: Any, filed: set[str]) -> None:
        self.cache = cache
        self.con = cache._con  # this thread's connection to the store (diskcache keeps one per thread)
        self.con.execute("PRAGMA synchronous = FULL")  # (diskcache sets it per connection too: be sure)
        self.con.executescript(_OPS_VIEW)
        #: Values a file holds (written by an older agent through Cache.set): diskcache removes
        #: those. Shared by the writers of both threads (they never write at the same time).
        self.filed = filed

    def commit(self, final: dict[str, bytes | None]) -> None:
        """Put (bytes) or delete (None) each key, in one transaction."""
        now = time.time()
        rows: list[Any] = []
        for k, v in final.items():
            if v is not None and type(v) is not bytes:  # nothing but bytes is ever stored (nothing is pickled)
                raise TypeError(f"the journal keeps bytes only, not {type(v).__name__}")
            rows += (k, now, v)
        filed = [k for k in final if k in self.filed] if self.filed else []
        if not filed and len(final) <= _ROWS_PER_STATEMENT:
            self.con.execute(_ops_statement(len(final)), rows)  # its own transaction (autocommit)
            return
        per = 3 * _ROWS_PER_STATEMENT
        with self.cache.transact():  # BEGIN IMMEDIATE ... COMMIT
            for k in filed:
                self.cache.delete(k)  # (in this transaction; diskcache removes the file)
                self.filed.discard(k)
            for i in range(0, len(rows), per):
                chunk = rows[i : i + per]
                self.con.execute(_ops_statement(len(chunk) // 3), chunk)


#: How long a write nobody waits for may wait for company.
LATER_S = 0.2
#: Where a commit is made. A handoff to the writer thread and back costs CPU on both sides
#: (two thread wake-ups, the GIL taken back from the event loop, the loop's self-pipe); a
#: commit on the loop blocks it for the whole sync instead, and every stage's events wait
#: meanwhile. On this project's 2-core test machine a FULL commit takes 0.35 ms idle and up
#: to 0.7 ms under bench/core.py. There, committing on the loop (grouped per turn of it)
#: saved 0.09 ms of agent CPU per task against the writer thread (0.96 -> 0.88, medians of
#: 8 interleaved pairs, lower in every pair), throughput ratio 1.04 (0.97-1.16); an earlier
#: measurement (before the writer put its rows in one statement) had found the loop 8 %
#: slower. So the event loop commits itself while the disk syncs within a millisecond
#: (FAST_RUN consecutive thread commits under FAST_S, the thread idle); one commit on the
#: loop slower than SLOW_S sends the following ones to the writer thread again (the thread
#: measures for the loop: a slow disk, an SD card's 20 ms, never blocks the loop twice in a
#: row). The guarantee is the same either way: FULL sync, on disk before the write's future
#: resolves.
FAST_S = 0.001
SLOW_S = 0.002
FAST_RUN = 16


def _key(kind: str, key: StageKey) -> str:
    return f"{kind}\t{key[0]}\t{key[1]}\t{key[2]}"


def _parse_key(text: str) -> tuple[str, StageKey] | None:
    parts = text.split("\t")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return parts[0], (parts[1], parts[2], int(parts[3]))


@dataclass
class LeaseRecord:
    """A lease this agent held when it last wrote it down."""

    assignment: agent_pb2.Assignment
    started: float = 0.0  # wall clock
    pid: int = 0
    workdir: str = ""

    def encode(self) -> bytes:
        head = json.dumps({"started": self.started, "pid": self.pid, "workdir": self.workdir}).encode()
        return head + b"\n" + self.assignment.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord:
        head, _, body = bytes(data).partition(b"\n")
        meta = json.loads(head)
        return cls(
            agent_pb2.Assignment.FromString(body),
            float(meta.get("started", 0.0)),
            int(meta.get("pid", 0)),
            str(meta.get("workdir", "")),
        )


class Journal:
    """Leases and outbox on disk (see the module docstring); opened on first use, so an
    agent that never ran a stage never loads SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: Any = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Transactions written (each one sync): fewer than the writes when they are grouped.
        self.batches = 0
        self._later: list[_Op] = []
        self._later_timer: asyncio.TimerHandle | None = None
        #: Commit on the event loop (the disk syncs fast); else in the writer thread.
        self._inline = False
        #: Consecutive fast commits of the writer thread (FAST_RUN of them: back on the loop).
        self._fast_run = 0
        #: Writes handed to the writer thread whose end the event loop has not heard of yet.
        self._inflight = 0
        self._loop_writer: _RowWriter | None = None
        #: Writes for the event loop to commit at its next turn, who waits for them, and that turn.
        self._grouped: list[_Op] = []
        self._grouped_waiters: list[asyncio.Future[None]] = []
        self._group_handle: asyncio.Handle | None = None
        self._filed_keys: set[str] | None = None

    def exists(self) -> bool:
        """Whether a previous process left a journal."""
        return (self.path / "cache.db").exists()

    def _open(self) -> Any:
        with self._lock:
            if self._cache is None:
                self._cache = open_store(self.path)
            return self._cache

    # ------------------------------------------------------------------ reading (start-up)

    def load(self) -> tuple[dict[StageKey, LeaseRecord], dict[StageKey, agent_pb2.AgentMessage], dict[str, float]]:
        """Everything a previous process left: leases, outbox messages, the last renewal."""
        leases: dict[StageKey, LeaseRecord] = {}
        outbox: dict[StageKey, agent_pb2.AgentMessage] = {}
        renewed: dict[str, float] = {}
        if not self.exists():
            return leases, outbox, renewed
        cache = self._open()
        for text in list(cache.iterkeys()):
            try:
                value = cache.get(text)
            except ValueError:  # a pickled value: never loaded
                value = None
            if not isinstance(text, str) or not isinstance(value, bytes):
                continue
            if text == "renewed":
                renewed = {k: float(v) for k, v in json.loads(value).items()}
                continue
            parsed = _parse_key(text)
            if parsed is None:
                continue
            kind, key = parsed
            try:
                if kind == "lease":
                    leases[key] = LeaseRecord.decode(value)
                elif kind == "outbox":
                    outbox[key] = agent_pb2.AgentMessage.FromString(value)
            except Exception:  # a damaged record must not stop the agent: say so and drop it
                log.warning("journal: dropping unreadable record %r", text, exc_info=True)
                self.write_later(deletes=[text])
        return leases, outbox, renewed

    # ------------------------------------------------------------------ writing

    @staticmethod
    def lease_key(key: StageKey) -> str:
        return _key("lease", key)

    @staticmethod
    def outbox_key(key: StageKey) -> str:
        return _key("outbox", key)

    def write(self, puts: dict[str, bytes] | None = None, deletes: Iterable[str] = ()) -> asyncio.Future[None]:
        """Write, and resolve the returned future once it is on disk (in one transaction
        with whatever else is queued). Called on the event loop.

        Where it is committed (see :data:`FAST_S`): on the event loop itself while the disk
        syncs fast and the writer thread is idle, with everything else written in the same
        turn of the loop (the future is resolved at the start of the next turn), else by the
        writer thread, grouped as the scheduler groups its commits: whatever queues up while
        the writer is busy goes into its next transaction.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        ops = self._take_later()
        if puts:
            ops += puts.items()
        ops += [(k, None) for k in deletes]
        self._write(loop, ops, fut)
        return fut

    def write_later(self, puts: dict[str, bytes] | None = None, deletes: Iterable[str] = ()) -> None:
        """A write nobody waits for: it rides with the next :meth:`write` (in order), or goes
        by itself within :data:`LATER_S`. Called on the event loop."""
        if puts:
            self._later += puts.items()
        self._later += [(k, None) for k in deletes]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # start-up, before the loop runs
            self.flush_later()
            return
        if self._later_timer is None:
            self._later_timer = loop.call_later(LATER_S, self.flush_later)

    def flush_later(self) -> None:
        """Write what :meth:`write_later` holds now (and what waits for the loop's next
        turn: committed before this returns)."""
        ops = self._take_later()
        if ops:
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self._write(loop, ops, None)
        self._commit_grouped()

    def _take_later(self) -> list[_Op]:
        ops, self._later = self._later, []
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        return ops

    def _write(self, loop: asyncio.AbstractEventLoop | None, ops: list[_Op], fut: asyncio.Future[None] | None) -> None:
        if loop is not None and self._inline and not self._inflight:
            # On the loop: everything written in this turn of it is one transaction, made
            # at the start of the next (a burst of results costs one sync, as in the thread).
            self._grouped += ops
            if fut is not None:
                self._grouped_waiters.append(fut)
            if self._group_handle is None:
                self._group_handle = loop.call_soon(self._commit_grouped)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="journal", daemon=True)
            self._thread.start()
        if loop is not None:
            self._inflight += 1
        self._jobs.put((ops, fut, loop))

    def _commit_grouped(self) -> None:
        """Commit on the event loop what was written for it (the writer thread is idle:
        nothing queued before this is still unwritten, and nothing contends for the
        database)."""
        if self._group_handle is not None:
            self._group_handle.cancel()
            self._group_handle = None
        ops, waiters = self._grouped, self._grouped_waiters
        self._grouped, self._grouped_waiters = [], []
        if not ops and not waiters:
            return
        if self._loop_writer is None:
            self._loop_writer = _RowWriter(self._open(), self._filed())
        t0 = time.perf_counter()
        try:
            final = dict(ops)
            if final:
                self._loop_writer.commit(final)
            self.batches += 1
        except Exception as exc:
            log.error("journal write failed: %s", exc)
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            took = time.perf_counter() - t0
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if took > SLOW_S:
            self._inline, self._fast_run = False, 0
            log.info(
                "journal: a commit took %.0f ms; committing in the writer thread until the disk is fast again",
                took * 1e3,
            )

    def _filed(self) -> set[str]:
        cache = self._open()
        with self._lock:
            if self._filed_keys is None:
                self._filed_keys = {k for (k,) in cache._con.execute(_FILED)}
            return self._filed_keys

    def _writer(self) -> None:
        writer = _RowWriter(self._open(), self._filed())
        while True:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            self._commit(writer, batch)

    def _commit(self, writer: _RowWriter, batch: list[_Job]) -> None:
        error: BaseException | None = None
        final: dict[str, bytes | None] = {}  # one transaction: only the last write of a key counts
        for ops, _, _ in batch:
            final.update(ops)
        t0 = time.perf_counter()
        try:
            if final:
                writer.commit(final)
            self.batches += 1
        except Exception as exc:  # disk full, I/O error: the waiters learn it
            log.error("journal write failed: %s", exc)
            error = exc
        took = time.perf_counter() - t0
        loops = [loop for _, _, loop in batch if loop is not None]
        if loops:
            waiters: list[asyncio.Future[None]] = [f for _, f, _ in batch if isinstance(f, asyncio.Future)]
            loops[0].call_soon_threadsafe(self._written, len(loops), waiters, error, took)
        for _, f, _ in batch:
            if isinstance(f, threading.Event):
                f.set()

    def _written(
        self, jobs: int, waiters: list[asyncio.Future[None]], error: BaseException | None, took: float
    ) -> None:
        """On the event loop: the writer thread committed ``jobs`` of its writes in ``took`` s."""
        self._inflight -= jobs
        if error is None and took < FAST_S:
            self._fast_run += 1
            if self._fast_run >= FAST_RUN and not self._inline:
                self._inline = True
                log.debug("journal: the disk syncs fast again; committing on the event loop")
        else:
            self._fast_run = 0
        for fut in waiters:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything queued so far is on disk (for a clean shutdown: call
        :meth:`flush_later` on the event loop first); False if that took longer than ``timeout``."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._jobs.put(([], done, None))
        return done.wait(timeout)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
