"""Checkpoints: which saved progress of a task the scheduler accepts, and resumes from.

A stage saves progress (through the SDK, or into ``$OUTRIDER_CHECKPOINT_DIR``); its
agent uploads the bytes to the artifact store and reports a checkpoint: the lease
(run, task, epoch) that saved it, the digest, size and kind of its bytes, and its
number ``seq`` within that attempt (1, 2, ...). A report is accepted only if

1. it comes from the agent holding the task's **current** lease (the one check every
   report goes through, :meth:`~scheduler.core.leases.LeaseTable.check`): a stale
   epoch, another agent, or an attempt that already ended is refused with
   ``ABORTED`` (:class:`~outrider.errors.StaleEpoch`), so a zombie cannot overwrite a
   newer attempt's progress;
2. its bytes are in the artifact store (else ``FAILED_PRECONDITION``: upload first);
3. it is newer than the one kept: a later ``seq`` of the same attempt, or any
   checkpoint of a later attempt than the kept one's. One not newer is answered OK
   and changes nothing (a re-delivery, or reports overtaking each other).

The latest accepted checkpoint of each task is recorded durably (the ``checkpoints``
table) with a ``checkpoint`` event, and its bytes carry the task's effective
residency (downloads are refused outside those zones, as for outputs). When the task
gets a new attempt (its agent was lost, it was released, it failed and is retried),
the assignment says to resume from it (``Assignment.resume_from``), and the attempt
records that it did (``TaskStatus.resumed_from``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from outrider.errors import FailedPrecondition
from scheduler.core.leases import LeaseStatus, LeaseTable
from scheduler.core.lifecycle import StateMachine
from scheduler.core.messages import Checkpoint
from scheduler.core.model import EventKind, Output
from scheduler.core.registry import AgentRegistry
from scheduler.core.residency import ResidencyIndex
from scheduler.core.txn import Journal, Txn

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(
        self,
        sm: StateMachine,
        registry: AgentRegistry,
        leases: LeaseTable,
        residency: ResidencyIndex,
        journal: Journal,
        *,
        wall: Callable[[], float],
        artifact_exists: Callable[[str], bool],
    ) -> None:
        self._sm = sm
        self._registry = registry
        self._leases = leases
        self._residency = residency
        self._journal = journal
        self._wall = wall
        self._artifact_exists = artifact_exists

    def report(self, agent_name: str, cp: Checkpoint) -> tuple[asyncio.Future[None], str]:
        """Accept a checkpoint (see the module docstring). Returns a future that resolves once
        it is durable, and a note for the answer ("" when it was recorded).

        Raises StaleEpoch or NotFound (not the current lease of a running task),
        FailedPrecondition (its bytes were never uploaded); nothing changes then.
        """
        status, t = self._leases.check(cp.lease, agent_name)
        if status is not LeaseStatus.CURRENT or t is None:
            raise self._leases.refusal(cp.lease, agent_name, t)
        if not self._artifact_exists(cp.digest):
            raise FailedPrecondition(
                f"checkpoint seq {cp.seq} of {cp.lease.run_id}/{cp.lease.task} epoch {cp.lease.epoch}: its bytes "
                f"({cp.digest[:12]}) are not in the artifact store; upload them first"
            )
        kept = t.checkpoint
        if kept is not None and (kept.lease.epoch, kept.seq) >= (cp.lease.epoch, cp.seq):
            note = f"not newer than the checkpoint kept (epoch {kept.lease.epoch} seq {kept.seq}); nothing changed"
            return self._journal.barrier(), note
        agent = self._registry.get(agent_name)
        now = self._wall()
        created = cp.created_at + agent.sched_offset if agent is not None and cp.created_at else now
        accepted = Checkpoint(cp.lease, cp.digest, cp.size, cp.kind, cp.seq, min(created, now))
        t.checkpoint = accepted
        zones = t.needs.residency  # a checkpoint holds what the task read: its bytes stay where the task may run
        self._residency.note(Output("checkpoint", cp.digest, cp.size, cp.kind, zones))
        txn = Txn()
        txn.changes.upsert_checkpoint(t, accepted, zones)
        run = self._sm.runs[t.run_id]
        self._sm.note(txn, run, t, EventKind.CHECKPOINT, f"checkpoint {cp.seq}: {cp.digest[:12]} ({cp.size} bytes)")
        log.debug("checkpoint %s/%s epoch %d seq %d accepted", t.run_id, t.name, cp.lease.epoch, cp.seq)
        return self._journal.commit(txn), ""
