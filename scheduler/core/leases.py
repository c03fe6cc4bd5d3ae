"""Leases: grant, renew, expire, and the one check every report goes through.

Each attempt of a task is a lease whose epoch is the attempt number (persisted
before the assignment is sent, so an epoch is never reused, even across a crash).
Heartbeats renew it; it expires on this process's monotonic clock, padded by the
agent's measured clock uncertainty. :meth:`LeaseTable.check` relates a report
(its lease reference and the reporting agent) to the task's current lease; every
report goes through it:

* completions apply only to a ``CURRENT`` lease (an ``ENDED`` one may be a
  re-delivery of what was already recorded), else ``ABORTED``
  (:class:`~outrider.errors.StaleEpoch`) and nothing changes;
* heartbeats renew only ``CURRENT`` leases and tell the agent which it lost;
* log chunks are kept from a ``CURRENT`` or just ``ENDED`` lease;
* checkpoints are accepted only from a ``CURRENT`` lease (:mod:`scheduler.core.checkpoints`).

Each attempt is also kept in the task's history (``Task.history``, the attempts
table), so that a lost attempt says what happened to it.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
from collections.abc import Callable, Iterable, Iterator

from outrider.errors import NotFound, StaleEpoch
from scheduler.core import audit
from scheduler.core.instruments import I
from scheduler.core.messages import LeaseRef
from scheduler.core.model import Attempt, AttemptState, Task, TaskState
from scheduler.core.txn import Txn


class LeaseStatus(enum.Enum):
    CURRENT = "current"  #: the task is running under this epoch, held by this agent
    ENDED = "ended"  #: this agent's epoch is the latest, but the task no longer runs
    STALE = "stale"  #: another epoch or another agent holds the task
    UNKNOWN = "unknown"  #: no such run or task


def lease_ref(t: Task) -> LeaseRef:
    return LeaseRef(t.run_id, t.name, t.attempts)


class LeaseTable:
    def __init__(self, *, ttl: float, find: Callable[[str, str], Task | None]) -> None:
        self.ttl = ttl
        self._find = find
        self._expiry: list[tuple[float, str, str, int]] = []  # (expires mono, run, task, epoch)

    def __len__(self) -> int:
        return len(self._expiry)

    # ------------------------------------------------------------------ the one check

    def check(self, ref: LeaseRef, agent: str) -> tuple[LeaseStatus, Task | None]:
        t = self._find(ref.run_id, ref.task)
        if t is None:
            return LeaseStatus.UNKNOWN, None
        if t.attempts != ref.epoch or t.agent != agent:
            return LeaseStatus.STALE, t
        if t.state is not TaskState.RUNNING:
            return LeaseStatus.ENDED, t
        return LeaseStatus.CURRENT, t

    def current(self, ref: LeaseRef, agent: str) -> Task:
        """The task ``ref`` names if ``agent`` holds its current lease; else NotFound or StaleEpoch."""
        status, t = self.check(ref, agent)
        if status is LeaseStatus.CURRENT:
            assert t is not None
            return t
        raise self.refusal(ref, agent, t)

    @staticmethod
    def refusal(ref: LeaseRef, agent: str, t: Task | None) -> NotFound | StaleEpoch:
        if t is None:
            return NotFound(f"no task {ref.task!r} in run {ref.run_id!r}")
        I.stale_rejections.inc()
        return StaleEpoch(
            f"lease {ref.run_id}/{ref.task} epoch {ref.epoch} held by {agent} is stale: "
            f"the task is {t.state.value} at epoch {t.attempts}" + (f" on {t.agent}" if t.agent else "")
        )

    # ------------------------------------------------------------------ lifetime

    def expiry(self, uncertainty: float, mono: float) -> float:
        """When a lease granted or renewed now ends: TTL, padded by the agent's clock uncertainty."""
        return mono + self.ttl + min(uncertainty, self.ttl)

    def grant(self, txn: Txn, t: Task, agent: str, uncertainty: float, wall: float, mono: float) -> None:
        """Start a new attempt of ``t`` on ``agent``: the next epoch, recorded with the attempt
        and the checkpoint it resumes from (the latest accepted, if any)."""
        I.lease_grants.inc()
        if t.ready_at:
            I.queue_wait.observe(max(0.0, mono - t.ready_at))
        t.attempts += 1
        t.agent = agent
        t.started_at = wall
        t.finished_at = 0.0
        t.leased_at = mono
        t.lease_expires = self.expiry(uncertainty, mono)
        heapq.heappush(self._expiry, (t.lease_expires, t.run_id, t.name, t.attempts))
        t.history.append(Attempt(t.attempts, agent, AttemptState.RUNNING, wall, resumed_from=t.checkpoint))
        txn.changes.insert_attempt(t, wall)
        target = audit.target_of(t.run_id, t.name, t.attempts)
        audit.record(txn, wall, audit.SCHEDULER, audit.Action.LEASE_GRANT, target, detail=f"agent {agent}")

    def renew(
        self, agent: str, uncertainty: float, refs: Iterable[LeaseRef], mono: float
    ) -> tuple[list[Task], list[LeaseRef]]:
        """Extend the leases ``agent`` lists; returns (tasks renewed, leases it no longer holds)."""
        expires = self.expiry(uncertainty, mono)
        renewed, lost = [], []
        for ref in refs:
            status, t = self.check(ref, agent)
            if status is not LeaseStatus.CURRENT or t is None:
                lost.append(ref)
                continue
            t.lease_expires = expires
            heapq.heappush(self._expiry, (expires, t.run_id, t.name, t.attempts))
            renewed.append(t)
        return renewed, lost

    def grace(self, t: Task, mono: float) -> None:
        """After a restart: a running task's agent gets a full TTL plus grace to claim it."""
        t.lease_expires = mono + 2 * self.ttl
        t.leased_at = mono
        heapq.heappush(self._expiry, (t.lease_expires, t.run_id, t.name, t.attempts))

    def expired(self, mono: float) -> Iterator[Task]:
        """Tasks whose current lease has expired by ``mono`` (each once)."""
        while self._expiry and self._expiry[0][0] <= mono:
            _, run_id, name, epoch = heapq.heappop(self._expiry)
            t = self._find(run_id, name)
            if t is not None and t.state is TaskState.RUNNING and t.attempts == epoch and t.lease_expires <= mono:
                yield t

    @staticmethod
    def end(txn: Txn, t: Task, how: AttemptState, when: float, exit_code: int, error: str) -> None:
        """Record how the current attempt ended."""
        if t.history and t.history[-1].attempt == t.attempts:
            t.history[-1] = dataclasses.replace(
                t.history[-1], state=how, finished_at=when, exit_code=exit_code, error=error
            )
        txn.changes.finish_attempt(t, how, when, exit_code, error)
