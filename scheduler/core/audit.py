"""The audit log: every mutating action, hash-chained, in the scheduler's database.

A use case that changes state records what it did on the same :class:`~scheduler.core.txn.Txn`
as the change (:func:`record`), so the audit log and the state commit together and never
disagree after a crash. A record says when (``ts_us``, wall clock, microseconds), who
(``identity``: the caller's SPIFFE ID, or ``scheduler`` for the scheduler's own decisions:
a lease granted, a lease expired), what (``action``, one of :class:`Action`), to what
(``target``: a run id, ``run/task#epoch``, an agent name, a digest) and how it ended
(``outcome``: ``ok`` or the refusal's status code), with a bounded ``detail``.

Chaining: each record carries ``prev_hash`` (the previous record's ``hash``; 64 zeros for
the first) and ``hash = sha256(canonical(record))``, hex. The canonical encoding is the
concatenation of eight netstrings, one per field in this order::

    seq, ts_us, identity, action, target, outcome, detail, prev_hash

each written as ``<length of its UTF-8 bytes in decimal ASCII>:<the bytes>,`` (``seq`` and
``ts_us`` as their decimal ASCII). So ``seq=1, ts_us=5, identity="a"...`` starts
``1:1,1:5,1:a,``. An auditor recomputes it from the ``audit`` table with a few lines of any
language (:func:`canonical`, :func:`chain_hash`).

Sequence numbers and hashes are given in commit order, by the store's writer as it writes
each record (:class:`Chain`), not when the record is made: a change the database refuses
for its values is rolled back under its savepoint with its audit record, and the chain
rewinds with it, so the stored sequence stays gap-free (a chain head taken before the
write would have left a hole that looks like tampering).

:func:`verify` walks stored rows (streaming, constant memory) and names the first broken
record: a field changed (its hash no longer matches), a record deleted or reordered (the
seq skips or its ``prev_hash`` does not match). A record removed from the *end* leaves a
shorter chain that is still consistent; the running scheduler knows the head it wrote
(:meth:`AuditTrail.verify` checks the stored chain reaches it), and ``outrider audit verify
--json`` prints the head so an auditor can keep it elsewhere.

Revoking an agent (``revoke``, :mod:`scheduler.core.revocation`) is recorded with the deny-list
entry it writes. Join tokens (:mod:`scheduler.core.tokens`): ``token_create`` and
``token_revoke`` with the token's row, ``enrol`` (done: with the token's use; refused: a record
of its own), ``cert_renew`` (an agent's certificate renewed over mTLS).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from scheduler.core.auditchain import GENESIS, AuditRecord, Chain, Verdict, canonical, chain_hash, verify
from scheduler.core.txn import Journal, Txn

__all__ = ["GENESIS", "Action", "AuditRecord", "AuditTrail", "Chain", "Verdict", "canonical", "chain_hash", "verify"]

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"  #: the identity of the scheduler's own actions
MAX_FIELD = 256  #: identity, target and outcome are cut to this many characters
MAX_DETAIL = 512  #: detail is cut to this many characters


class Action(str, enum.Enum):
    SUBMIT = "submit"  #: a run submitted (target: run id)
    CANCEL = "cancel"  #: a run cancelled (target: run id)
    RETRY = "retry"  #: a run's failed tasks rerun (target: run id)
    DRAIN = "drain"  #: an agent asked to drain (target: agent name)
    LEASE_GRANT = "lease_grant"  #: a task's attempt leased to an agent (target: run/task#epoch)
    LEASE_EXPIRY = "lease_expiry"  #: a lease ran out (target: run/task#epoch)
    ARTIFACT_COMMIT = "artifact_commit"  #: an artifact's bytes recorded (target: digest)
    RESIDENCY_REFUSAL = "residency_refusal"  #: a download refused for residency (target: digest)
    ZONE_REFUSAL = "zone_refusal"  #: an agent's claim to zones it is not attested for refused (target: agent)
    REVOKE = "revoke"  #: an agent's name revoked by an admin, or revoked again (target: agent name)
    TOKEN_CREATE = "token_create"  #: a join token made (target: token id; detail: uses, expiry, labels, zones)
    TOKEN_REVOKE = "token_revoke"  #: a join token withdrawn by an admin (target: token id)
    ENROL = "enrol"  #: an enrolment with a join token, done or refused (identity: token:<id>; target: agent name)
    CERT_RENEW = "cert_renew"  #: an agent's certificate renewed (target: agent name; detail: serial, expiry)


def target_of(run_id: str, task: str, epoch: int) -> str:
    """The target of a lease: ``run/task#epoch``."""
    return f"{run_id}/{task}#{epoch}"


def record(
    txn: Txn, ts: float, identity: str, action: Action, target: str, outcome: str = "ok", detail: str = ""
) -> None:
    """Append an audit record to ``txn``: it commits with the change it describes."""
    txn.changes.audit(
        int(ts * 1_000_000),
        identity[:MAX_FIELD],
        action.value,
        target[:MAX_FIELD],
        outcome[:MAX_FIELD],
        detail[:MAX_DETAIL],
    )


class AuditTrail:
    """The audit log as the core sees it: records of their own, the start-up check, the broken
    flag, reads and verify (over the store's rows, read on a worker thread)."""

    def __init__(self, journal: Journal, wall: Callable[[], float], caller: Callable[[], str]) -> None:
        self._journal, self._wall, self._caller = journal, wall, caller
        self._store = journal.store
        self.verdict: Verdict | None = None  # the last verification's
        self._listeners: list[Callable[[Verdict], None]] = []

    def _head(self) -> tuple[int, str]:
        return self._store.chain.committed

    def note(self, action: Action, target: str, outcome: str = "ok", detail: str = "") -> None:
        """An action that changes no durable state (a drain, a refusal): its record alone, by the caller."""
        txn = Txn()
        record(txn, self._wall(), self._caller(), action, target, outcome, detail)
        self._journal.commit(txn)

    @property
    def broken(self) -> bool:
        return self.verdict is not None and not self.verdict.ok

    def on_verdict(self, listener: Callable[[Verdict], None]) -> None:
        """Call ``listener`` with every verdict from now on (the health entry follows it)."""
        self._listeners.append(listener)
        if self.verdict is not None:
            listener(self.verdict)

    def _note(self, v: Verdict) -> Verdict:
        self.verdict = v
        if not v.ok:
            log.error(
                "AUDIT LOG CHAIN BROKEN at record %d: %s (the scheduler keeps serving; "
                "`outrider audit verify` shows it)",
                v.first_broken,
                v.why,
            )
        for listener in self._listeners:
            listener(v)
        return v

    def check(self) -> Verdict:
        """Verify the whole stored chain (at start; streaming, bounded memory)."""
        v = verify(self._store.audit_rows(), self._head())
        if v.ok:
            log.info("audit log intact: %d records, head %d %s", v.records, v.head_seq, v.head_hash[:12])
        return self._note(v)

    async def verify(self) -> Verdict:
        """Recompute the chain from the stored rows (never trusting memory), up to what is durable."""
        await self._journal.barrier()
        head = self._head()
        return self._note(await asyncio.to_thread(verify, self._store.audit_rows(), head))

    async def list(self, after_seq: int, since_ts_us: int, identity: str, limit: int) -> list[AuditRecord]:
        """One page of the log: ``seq > after_seq``, ``ts_us >= since_ts_us``, of ``identity`` if given."""
        await self._journal.barrier()
        return await asyncio.to_thread(self._store.audit_page, after_seq, since_ts_us, identity, limit)
