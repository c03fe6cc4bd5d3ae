"""The agent's durable state: the leases it holds and the outbox of unacknowledged results.

Kept in one diskcache store (``STATE/journal``, SQLite in WAL mode underneath), so that a
lease becomes a result in one transaction: after a crash a task is either still leased
here or waiting in the outbox, never neither. Two of diskcache's defaults would break the
promises made here, so they are overridden: it evicts past 1 GB (here
``eviction_policy='none'`` and no culling: nothing may be lost) and commits with
``synchronous=NORMAL`` (here FULL: a result acknowledged by the disk survives a power cut).

Nothing in it is pickled: keys are strings, values are bytes (serialized protobuf, or a
small JSON header before them), so bytes that came over the network are never unpickled.

Writes go through one thread and are grouped, as the scheduler groups its commits: what
is queued while one transaction is being written goes into the next, so a burst of short
stages costs one sync per batch, not one per result (:meth:`Journal.write`).

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
_Job = tuple[list[_Op], _Waiter]
#: How long a write nobody waits for may wait for company.
LATER_S = 0.2


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
        self._pending: list[_Job] = []
        self._scheduled = False
        self._cache: Any = None
        self._jobs: queue.SimpleQueue[list[_Job]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Transactions written (each one sync): fewer than the writes when they are grouped.
        self.batches = 0
        self._later: list[_Op] = []
        self._later_timer: asyncio.TimerHandle | None = None

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

    async def write(self, puts: dict[str, bytes] | None = None, deletes: Iterable[str] = ()) -> None:
        """Write (in one transaction with whatever else is pending) and return once it is on
        disk. What is written during one turn of the event loop goes to the writer thread
        together, and the writer commits everything that queued up while it was busy in one
        transaction: a busy agent syncs once per group of results, not once per result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        ops = self._take_later()
        ops += [(k, v) for k, v in (puts or {}).items()]
        ops += [(k, None) for k in deletes]
        self._pending.append((ops, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._commit_pending)
        await fut

    def _commit_pending(self) -> None:
        """Hand everything pending to the writer thread, as one transaction."""
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            self._submit_batch(batch)

    def write_later(self, puts: dict[str, bytes] | None = None, deletes: Iterable[str] = ()) -> None:
        """A write nobody waits for: it rides with the next :meth:`write` (in order), or goes
        by itself within :data:`LATER_S`. Called on the event loop."""
        self._later += [(k, v) for k, v in (puts or {}).items()]
        self._later += [(k, None) for k in deletes]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # start-up, before the loop runs
            self.flush_later()
            return
        if self._later_timer is None:
            self._later_timer = loop.call_later(LATER_S, self.flush_later)

    def flush_later(self) -> None:
        """Queue what :meth:`write_later` holds now."""
        ops = self._take_later()
        if ops:
            self._submit(ops, None)

    def _take_later(self) -> list[_Op]:
        ops, self._later = self._later, []
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        return ops

    def _submit(self, ops: list[_Op], fut: _Waiter) -> None:
        self._submit_batch([(ops, fut)])

    def _submit_batch(self, batch: list[_Job]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="journal", daemon=True)
            self._thread.start()
        self._jobs.put(batch)

    def _writer(self) -> None:
        cache = self._open()
        while True:
            batch = list(self._jobs.get())
            while True:
                try:
                    batch += self._jobs.get_nowait()
                except queue.Empty:
                    break
            self._commit(cache, batch)

    def _commit(self, cache: Any, batch: list[_Job]) -> None:
        error: BaseException | None = None
        try:
            with cache.transact():
                for ops, _ in batch:
                    for k, v in ops:
                        if v is None:
                            cache.delete(k)
                        else:
                            cache.set(k, v)
            self.batches += 1
        except Exception as exc:  # disk full, I/O error: the waiters learn it
            log.error("journal write failed: %s", exc)
            error = exc
        waiters = [f for _, f in batch if isinstance(f, asyncio.Future)]
        if waiters:
            waiters[0].get_loop().call_soon_threadsafe(_resolve, waiters, error)
        for _, f in batch:
            if isinstance(f, threading.Event):
                f.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything queued so far is on disk (for a clean shutdown: call
        :meth:`flush_later` on the event loop first); False if that took longer than ``timeout``."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._jobs.put([([], done)])
        return done.wait(timeout)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


def _resolve(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in waiters:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
