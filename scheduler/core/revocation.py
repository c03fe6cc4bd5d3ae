"""Revoked agents: a durable deny-list by agent name, and what revoking one does at once.

``outrider revoke agent NAME`` (admin) puts the name on the list for good:

* every call whose certificate names the agent (``spiffe://DOMAIN/agent/NAME``) is refused
  from then on, by the auth interceptor (:mod:`scheduler.auth`), with ``UNAUTHENTICATED``
  and :func:`outrider.protocol.revoked_message` (a set lookup per call: :meth:`Revocations.refusal`);
* its open work streams (and long-polls) end at once, with that same refusal (the servicer
  asks :meth:`Revocations.refusal` when its channel closes), so the agent need not send
  another message to learn it, and stops its stages;
* its leases end (``lost``) and their tasks are requeued as new attempts, without spending a
  retry (losing an agent is not the task's fault, as when a lease expires), and the agent is
  told to cancel them;
* the entry and the audit record (``revoke``: the admin, the agent, the reason and the leases
  requeued) commit in one transaction; the list is reloaded at start (migration 7,
  ``revoked_agents``), so a restart does not forgive anyone.

Revoking is idempotent (a second revoke changes nothing, says so, and is audited too) and
works for a name the scheduler never saw: a certificate may exist that never connected.
Nothing takes a name off the list; the machine enrols again under a new name.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from outrider.errors import InvalidArgument
from outrider.protocol import revoked_message
from scheduler.core import audit
from scheduler.core.leases import lease_ref
from scheduler.core.lifecycle import StateMachine
from scheduler.core.messages import LeaseRef
from scheduler.core.model import AttemptState, TaskState
from scheduler.core.registry import AgentRegistry
from scheduler.core.reports import Reports
from scheduler.core.txn import Journal, Txn
from scheduler.core.views import AgentInfo
from scheduler.store.base import RevokedRow

log = logging.getLogger(__name__)

#: A revocation's reason is at most this many characters (it is shown in every refusal).
MAX_REASON = 256


def iso(ts: float) -> str:
    """Wall time as the refusal and the CLI show it: ``2026-11-30T02:50:00Z``."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Revocation:
    """One name on the deny-list."""

    name: str
    revoked_at: float  # wall time
    revoked_by: str  # the admin's SPIFFE ID
    reason: str = ""

    @property
    def refusal(self) -> str:
        """What every call of the revoked agent is answered (``UNAUTHENTICATED``)."""
        return revoked_message(self.name, iso(self.revoked_at), self.revoked_by, self.reason)


@dataclass(frozen=True, slots=True)
class RevokeOutcome:
    """What one revoke did."""

    revocation: Revocation  # the entry (the first one, when it was revoked before)
    already: bool  # it was revoked before this call: nothing changed
    known: bool  # an agent of this name had registered
    requeued: tuple[LeaseRef, ...] = ()  # the leases this call ended, their tasks requeued


def check_reason(reason: str) -> str:
    """A revocation's reason: at most :data:`MAX_REASON` characters, one line, printable."""
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"reason is {len(reason)} characters long, over the limit of {MAX_REASON}")
    if any(not c.isprintable() for c in reason):
        raise InvalidArgument("reason must be one line of printable text (no control characters)")
    return reason.strip()


class Revocations:
    """The deny-list in memory (a dict by name: the interceptor's lookup is cheap), its
    durable entries, and the use case that revokes (:meth:`revoke`)."""

    def __init__(
        self,
        journal: Journal,
        registry: AgentRegistry,
        reports: Reports,
        sm: StateMachine,
        wall: Callable[[], float],
        caller: Callable[[], str],
    ) -> None:
        self._journal = journal
        self._registry = registry
        self._reports = reports
        self._sm = sm
        self._wall = wall
        self._caller = caller
        self._entries: dict[str, Revocation] = {}

    def restore(self, rows: Iterable[RevokedRow]) -> None:
        """The names revoked before a restart: refused again from the first call."""
        for row in rows:
            self._entries[row.name] = Revocation(row.name, row.revoked_at, row.revoked_by, row.reason)
        if self._entries:
            log.info("%d agent name(s) revoked: %s", len(self._entries), ", ".join(sorted(self._entries)))

    # ------------------------------------------------------------------ reading

    def is_revoked(self, name: str) -> bool:
        """Whether agent ``name`` is revoked (enrolment refuses such a name, too)."""
        return name in self._entries

    def get(self, name: str) -> Revocation | None:
        """The revocation of agent ``name``, or None."""
        return self._entries.get(name)

    def refusal(self, name: str) -> str | None:
        """The refusal for a call by agent ``name`` if it is revoked, else None (one dict lookup)."""
        entry = self._entries.get(name)
        return None if entry is None else entry.refusal

    def __len__(self) -> int:
        return len(self._entries)

    def mark(self, infos: list[AgentInfo]) -> list[AgentInfo]:
        """Agents as listed, a revoked one marked so (``revoked``, when and by whom)."""
        if not self._entries:
            return infos
        out = []
        for info in infos:
            entry = self._entries.get(info.name)
            if entry is not None:
                info = replace(info, revoked=True, revoked_at=entry.revoked_at, revoked_by=entry.revoked_by)
            out.append(info)
        return out

    # ------------------------------------------------------------------ revoking

    async def revoke(self, name: str, reason: str = "") -> RevokeOutcome:
        """Revoke agent ``name`` for good, by the caller (an admin); returns once durable.

        Raises InvalidArgument for a name that no certificate could carry or a bad reason.
        """
        from outrider.pki import validate_name  # here: the core does not load cryptography at import

        validate_name(name)
        reason = check_reason(reason)
        by = self._caller()
        known = self._registry.get(name) is not None
        entry = self._entries.get(name)
        if entry is not None:
            # Idempotent: nothing changes, but the attempt is on the record like any other.
            detail = f"already revoked at {iso(entry.revoked_at)} by {entry.revoked_by}"
            txn = Txn()
            audit.record(txn, self._wall(), by, audit.Action.REVOKE, name, detail=detail)
            await self._journal.commit(txn)  # also: the first revocation is durable
            return RevokeOutcome(entry, already=True, known=known)
        now = self._wall()
        entry = Revocation(name, now, by, reason)
        self._entries[name] = entry  # refused from this moment on
        txn = Txn()
        txn.aborted(lambda: self._forget(name))  # the store refused it: not revoked after all
        txn.changes.insert_revoked(name, now, by, reason)
        requeued = self._end_leases(txn, name, now, f"agent {name} was revoked by {by}")
        leases = ", ".join(audit.target_of(r.run_id, r.task, r.epoch) for r in requeued)
        detail = f"reason: {reason or '-'}; {len(requeued)} lease(s) requeued" + (f": {leases}" if leases else "")
        audit.record(txn, now, by, audit.Action.REVOKE, name, detail=detail)
        self._disconnect(name, requeued)
        log.warning(
            "agent %s revoked by %s (%s); %d lease(s) requeued", name, by, reason or "no reason given", len(requeued)
        )
        await self._journal.commit(txn)
        return RevokeOutcome(entry, already=False, known=known, requeued=requeued)

    def _forget(self, name: str) -> None:
        self._entries.pop(name, None)

    def _end_leases(self, txn: Txn, name: str, now: float, why: str) -> tuple[LeaseRef, ...]:
        """End every lease the agent holds and requeue its task as a new attempt, no retry spent
        (the same path as an expired lease: :meth:`Reports.expire`, in this one transaction)."""
        agent = self._registry.get(name)
        if agent is None:
            return ()
        ended = []
        for run_id, task in sorted(agent.running):
            run = self._sm.runs.get(run_id)
            t = run.tasks.get(task) if run is not None else None
            if run is None or t is None or t.state is not TaskState.RUNNING or t.agent != name:
                continue
            ended.append(lease_ref(t))
            self._reports.end_lease(txn, t, AttemptState.LOST, now, 0, why)
            self._sm.lose_attempt(txn, run, t, why)
        return tuple(ended)

    def _disconnect(self, name: str, cancelled: tuple[LeaseRef, ...]) -> None:
        """Tell the agent to stop the cancelled attempts, then end its streams and polls: each
        ends with the refusal (the servicer asks :meth:`refusal` as its channel closes)."""
        agent = self._registry.get(name)
        if agent is None:
            return
        if cancelled:
            self._reports.push_cancel(name, list(cancelled))  # sent before the stream ends
        for ch in list(agent.channels):
            self._registry.detach(ch)
