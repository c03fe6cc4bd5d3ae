"""The store interface the core writes through, and the group-commit machinery every
backend shares.

Durability model: the core mutates its in-memory state, then hands the matching
:class:`~scheduler.store.changes.Changes` to :meth:`Store.commit`, which returns a
future resolved once the change is durable. A single writer thread groups
everything queued while the previous transaction was committing into one
transaction (group commit), so N concurrent changes cost one sync, not N.

Because the queue is FIFO and transactions are sequential, a future resolving
means every change queued *before* it is durable too. The core relies on this:
it shows a change to the outside world (an ack to a client, an assignment to an
agent) only after the commit that recorded it.

A failed commit leaves memory ahead of disk; the scheduler cannot continue
safely, so the writer logs and ends the process (systemd restarts it and state
is reloaded from the database: crash-only).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import threading
from dataclasses import dataclass

from scheduler.core.messages import Capabilities
from scheduler.core.spec import PipelineSpec
from scheduler.store.changes import Changes, Record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    seq: int
    spec: PipelineSpec
    state: str
    submitter: str
    trace_id: str
    created_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class TaskRow:
    run_id: str
    name: str
    state: str
    attempts: int
    failures: int
    agent: str
    error: str
    exit_code: int
    started_at: float
    finished_at: float
    not_before: float


@dataclass(frozen=True, slots=True)
class OutputRow:
    run_id: str
    task: str
    name: str
    digest: str
    size: int
    kind: str
    residency: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class AgentRow:
    name: str
    identity: str
    capabilities: Capabilities
    registered_at: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    ts: float
    run_id: str
    task: str
    state: str
    attempt: int
    agent: str
    detail: str


@dataclass
class Loaded:
    """Everything the core needs to rebuild its memory after a restart."""

    runs: list[RunRow]
    tasks: list[TaskRow]
    outputs: list[OutputRow]
    agents: list[AgentRow]


class Store(abc.ABC):
    """A durable store with one writer thread and group commit.

    A backend implements :meth:`load`, :meth:`events`, :meth:`_write` (apply records
    in one transaction) and :meth:`_close_backend`; the queueing, grouping and
    resolution of futures are here, the same for every backend.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[Record] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn: list[Record] = []
        self._turn_waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        #: Commits done and changes grouped into them, for metrics and the benchmark.
        self.commits = 0
        self.grouped = 0

    # -- what a backend provides

    @abc.abstractmethod
    def load(self) -> Loaded:
        """Read everything back (start-up; the core keeps live state in memory)."""

    @abc.abstractmethod
    def events(self, run_id: str) -> list[EventRow]:
        """A run's recorded events in order; callable while the writer runs."""

    @abc.abstractmethod
    def _write(self, records: list[Record]) -> None:
        """Apply ``records`` in one durable transaction (on the writer thread); raise on failure."""

    @abc.abstractmethod
    def _close_backend(self) -> None:
        """Release connections (after the writer thread ended)."""

    # -- writing

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()

    def commit(self, changes: Changes) -> asyncio.Future[None]:
        """Queue a change; the future resolves once it (and all before it) is durable.

        Called from the event loop thread only. Changes queued during one turn of
        the loop are handed to the writer together at the end of that turn, so a
        completion and the assignment it frees a slot for share one sync.
        """
        assert self._loop is not None, "Store.start() first"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._turn.extend(changes.records)
        self._turn_waiters.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def barrier(self) -> asyncio.Future[None]:
        """A future that resolves once everything queued so far is durable."""
        return self.commit(Changes())

    def _flush(self) -> None:
        self._flush_scheduled = False
        records, self._turn = self._turn, []
        waiters, self._turn_waiters = self._turn_waiters, []
        with self._lock:
            self._queue.extend(records)
            self._waiters.extend(waiters)
            self._wake.notify()

    def _writer(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._waiters and not self._closing:
                    self._wake.wait()
                if not self._queue and not self._waiters:
                    return  # closing and drained
                records, self._queue = self._queue, []
                waiters, self._waiters = self._waiters, []
            # Commit outside the lock: while this sync runs, the event loop keeps
            # queueing changes, and they all go into the next transaction.
            try:
                if records:
                    self._write(records)
            except BaseException:
                log.critical("database commit failed; stopping so state is reloaded", exc_info=True)
                os._exit(70)
            self.commits += 1
            self.grouped += len(waiters)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_resolve_all, waiters)
            except RuntimeError:  # loop closed during shutdown
                return

    def close(self) -> None:
        if self._turn or self._turn_waiters:
            self._flush()
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close_backend()


def _resolve_all(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
