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

Two kinds of failed commit are told apart:

* a failure of the database itself (an I/O error, a full disk, a corrupt file:
  anything but the errors below) leaves memory ahead of disk with no way to catch
  up; the writer logs and ends the process (systemd restarts it and state is
  reloaded from the database: crash-only);
* a change whose *values* the database refuses (a NaN in a ``NOT NULL`` column, an
  integer out of range, a duplicate key: :meth:`Store._refused_by_value`) is a bug
  upstream of the store, and it must not let one request end the scheduler (a
  report with a NaN time once did, and again after every restart, because the lease
  it reported on was still there). So the group is written again with one savepoint
  per change: every other change of the group commits (still one sync), the
  poisoned one is rolled back, its future fails with :class:`WriteRefused` (the
  caller answers ``INTERNAL``; its acks, assignments and events are never shown),
  and the writer logs it at ERROR. That change then exists in memory only, until
  the next restart reloads the last durable state. The first line of defence is
  the edge (:mod:`scheduler.api.bounds`): no such value should ever get this far.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from outrider.errors import OutriderError
from scheduler.core.auditchain import AuditRecord, Chain
from scheduler.core.messages import Capabilities, Checkpoint
from scheduler.core.spec import PipelineSpec
from scheduler.store.changes import Changes, Record

log = logging.getLogger(__name__)

#: What a commit carries: the records of one change and the future it resolves.
Group = tuple[list[Record], "asyncio.Future[None]"]


class WriteRefused(OutriderError):
    """Raised (through a commit's future) when the database refused a change for its values."""

    code = "INTERNAL"


class Deposed(Exception):
    """A write transaction's fencing check failed: another scheduler took the lead (a higher
    epoch in the leader row, docs/ha.md). Nothing of the transaction was committed; the
    writer ends the process at once (crash-only: it comes back as a standby)."""


#: The exit status of a scheduler that found itself deposed (fenced) or lost its leadership.
EXIT_DEPOSED = 75


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
    submit_key: str = ""


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
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class AttemptRow:
    run_id: str
    task: str
    attempt: int
    agent: str
    state: str
    started_at: float
    finished_at: float
    exit_code: int
    error: str
    resumed: Checkpoint | None  # the checkpoint it resumed from


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    checkpoint: Checkpoint  # a task's latest accepted checkpoint (its lease names the task)
    residency: frozenset[str] | None  # where its bytes may be processed


@dataclass(frozen=True, slots=True)
class RevokedRow:
    name: str  # an agent name on the deny-list
    revoked_at: float  # wall time
    revoked_by: str  # the admin's SPIFFE ID
    reason: str


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A join token as stored (migration 8); its secret only as a hash (scheduler.core.tokens)."""

    token_id: str
    secret_hash: str  # hex sha256 of the secret
    created_at: float  # wall time
    created_by: str  # the admin's SPIFFE ID
    expires_at: float  # wall time
    uses_left: int
    labels: str  # JSON object of strings
    zones: str  # comma-separated; empty: the certificates it gets name no zones


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


@dataclass(frozen=True, slots=True)
class SpanRow:
    """An attempt's recorded trace times (scheduler wall clock; 0: not reached or not known)."""

    task: str
    attempt: int
    agent: str
    queued_at: float
    granted_at: float
    fetch_start: float
    fetch_end: float
    exec_start: float
    exec_end: float
    upload_start: float
    upload_end: float
    received_at: float
    durable_at: float


@dataclass(frozen=True, slots=True)
class MetricRow:
    """The last value a stage logged for one name in an attempt (``ts``: scheduler wall clock;
    ``step`` None: logged without one; ``count``: values the name had in the attempt)."""

    task: str
    attempt: int
    name: str
    value: float
    step: int | None
    ts: float
    count: int


@dataclass(frozen=True, slots=True)
class MetricSkipRow:
    """Lines of an attempt's metrics file not stored, and why the first was not."""

    task: str
    attempt: int
    count: int
    reason: str


@dataclass
class Loaded:
    """Everything the core needs to rebuild its memory after a restart."""

    runs: list[RunRow]
    tasks: list[TaskRow]
    outputs: list[OutputRow]
    agents: list[AgentRow]
    attempts: list[AttemptRow] = field(default_factory=list)  # in (run, task, attempt) order
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    revoked: list[RevokedRow] = field(default_factory=list)  # the agent names revoked, oldest first
    event_seq: int = 0  # the last event's sequence number
    run_event_seq: dict[str, int] = field(default_factory=dict)  # run -> seq of its last run-level event


class Store(abc.ABC):
    """A durable store with one writer thread and group commit.

    A backend implements :meth:`load`, :meth:`events`, :meth:`_write` (apply records
    in one transaction) and :meth:`_close_backend`; the queueing, grouping and
    resolution of futures are here, the same for every backend.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[Group] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn: list[Group] = []
        self._flush_scheduled = False
        #: Commits done and changes grouped into them, for metrics and the benchmark.
        self.commits = 0
        self.grouped = 0
        #: told (seconds, groups) after each commit, on the writer thread (scheduler/metrics.py)
        self.on_commit: Callable[[float, int], None] | None = None
        #: Changes refused for their values (see the module docstring).
        self.refused = 0
        #: The audit chain's head: a backend sets it from its last record, and its writer
        #: advances it as it writes each record (rewound with a rolled-back change).
        self.chain = Chain()

    # -- what a backend provides

    @abc.abstractmethod
    def load(self) -> Loaded:
        """Read everything back (start-up; the core keeps live state in memory)."""

    @abc.abstractmethod
    def events(self, run_id: str, after: int = 0, limit: int = 0) -> list[EventRow]:
        """A run's recorded events with ``seq > after`` in order (at most ``limit``, 0: all);
        callable from any thread while the writer runs."""

    @abc.abstractmethod
    def spans(self, run_id: str) -> list[SpanRow]:
        """A run's recorded trace times, one row per attempt, in (task, attempt) order."""

    @abc.abstractmethod
    def audit_rows(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        """Every audit record with ``seq > after_seq`` in seq order, read in bounded chunks;
        callable from any thread while the writer runs."""

    @abc.abstractmethod
    def audit_page(self, after_seq: int, since_ts_us: int, identity: str, limit: int) -> list[AuditRecord]:
        """Up to ``limit`` audit records with ``seq > after_seq``, ``ts_us >= since_ts_us`` and,
        if given, this ``identity``, in seq order."""

    def all_events(self, after: int, limit: int) -> list[EventRow]:
        """Every run's recorded events with ``seq > after``, in order, at most ``limit``
        (``outrider events``); callable from any thread while the writer runs."""
        raise NotImplementedError

    def with_prefix(self, kind: str, prefix: str, after: str, limit: int) -> list[str]:
        """Run ids (``kind`` "run") or artifact digests ("artifact") starting with ``prefix``,
        greater than ``after``, in order, at most ``limit``: a range on the primary key."""
        raise NotImplementedError

    def stage_metrics(self, run_id: str, limit: int) -> tuple[list[MetricRow], list[MetricSkipRow]]:
        """A run's stage metrics and skipped lines (at most ``limit`` of each), in (task, attempt,
        name) order; callable from any thread while the writer runs."""
        raise NotImplementedError

    def join_tokens(self) -> list[TokenRow]:
        """The join tokens on record (read once, when the core is built; a backend without them has none)."""
        return []

    @abc.abstractmethod
    def _write(self, records: list[Record]) -> None:
        """Apply ``records`` in one durable transaction (on the writer thread); raise on failure."""

    @abc.abstractmethod
    def _write_isolated(self, groups: list[list[Record]]) -> list[BaseException | None]:
        """Apply each group under its own savepoint in one durable transaction: a group the
        database refuses for its values (:meth:`_refused_by_value`) is rolled back alone.
        Returns, per group, None or what refused it; raises on any other failure."""

    @abc.abstractmethod
    def _close_backend(self) -> None:
        """Release connections (after the writer thread ended)."""

    def _refused_by_value(self, exc: BaseException) -> bool:
        """Did the database refuse the values written (rather than fail itself)? A backend adds
        its own error classes (constraint violations, unsupported parameter types)."""
        return isinstance(exc, (OverflowError, TypeError, ValueError, UnicodeError))

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
        self._turn.append((changes.records, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def barrier(self) -> asyncio.Future[None]:
        """A future that resolves once everything queued so far is durable."""
        return self.commit(Changes())

    def _flush(self) -> None:
        self._flush_scheduled = False
        groups, self._turn = self._turn, []
        with self._lock:
            self._queue.extend(groups)
            self._wake.notify()

    def _writer(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return  # closing and drained
                groups, self._queue = self._queue, []
            # Commit outside the lock: while this sync runs, the event loop keeps
            # queueing changes, and they all go into the next transaction.
            began = time.perf_counter()
            outcomes = self._commit_groups(groups)
            self.commits += 1
            self.grouped += len(groups)
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - began, len(groups))
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_resolve_all, [fut for _, fut in groups], outcomes)
            except RuntimeError:  # loop closed during shutdown
                return

    def _commit_groups(self, groups: list[Group]) -> list[BaseException | None]:
        """Write the groups in one transaction; per group, None or why it was refused.
        Ends the process on a failure of the database itself (crash-only)."""
        records = [r for recs, _ in groups for r in recs]
        mark = self.chain.mark()
        try:
            if records:
                self._write(records)
            self.chain.commit()
            return [None] * len(groups)
        except BaseException as exc:
            self.chain.rewind(mark)
            if isinstance(exc, Deposed):
                deposed(str(exc))
            if not self._refused_by_value(exc):
                _crash()
            log.error("database refused a group of %d change(s) (%s); isolating the poisoned one", len(groups), exc)
        try:
            outcomes = self._write_isolated([recs for recs, _ in groups])
        except Deposed as exc:
            deposed(str(exc))
        except BaseException:
            _crash()
        self.chain.commit()
        for (recs, _), why in zip(groups, outcomes, strict=True):
            if why is not None:
                self.refused += 1
                log.error(
                    "database refused a change for its values; it stays in memory only until a restart: %s; writes: %s",
                    why,
                    [(op.value, _preview(params)) for op, params in recs],
                )
        return outcomes

    def close(self) -> None:
        if self._turn:
            self._flush()
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close_backend()


def _crash() -> NoReturn:
    log.critical("database commit failed; stopping so state is reloaded", exc_info=True)
    os._exit(70)


def deposed(why: str) -> NoReturn:
    """Stop serving at once: this scheduler is no longer the leader (crash-only; systemd starts
    it again and it comes back as a standby). Nothing is flushed: the new leader owns the state."""
    log.critical("no longer the leader, stopping at once (nothing more is committed): %s", why)
    logging.shutdown()
    os._exit(EXIT_DEPOSED)


def _preview(params: object) -> str:
    text = repr(params)
    return text if len(text) <= 300 else text[:300] + "..."


def _resolve_all(waiters: list[asyncio.Future[None]], outcomes: list[BaseException | None]) -> None:
    for fut, why in zip(waiters, outcomes, strict=True):
        if fut.done():
            continue
        if why is None:
            fut.set_result(None)
        else:
            fut.set_exception(WriteRefused(f"the database refused this change ({why}); nothing was recorded"))


#: What :meth:`with_prefix` reads: (table, primary key) per kind.
PREFIX_TABLES = {"run": ("runs", "run_id"), "artifact": ("artifacts", "digest")}


def prefix_range(prefix: str) -> tuple[str, str]:
    """The primary-key range ``[low, high)`` that holds every key starting with ``prefix``
    (a non-empty ASCII prefix). A collation other than bytewise (PostgreSQL's default may be
    one) can put other keys in it too: the caller keeps only keys that start with ``prefix``."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
