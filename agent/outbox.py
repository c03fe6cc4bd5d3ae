"""Results the scheduler has not acknowledged yet: on disk before they are sent, removed
only when acknowledged.

A result and the last of its stage's output (the log chunks not sent yet) are one
``AgentMessage``, written to the journal (:mod:`agent.journal`) in the same transaction
that drops the stage's lease record, and handed to the uplink only once that transaction
is on disk. A fresh work stream re-sends the whole outbox; so does the next agent process
after a crash (:meth:`Outbox.restore`). The scheduler recognises a repeat and acknowledges
it without applying it twice; an acknowledgement removes the record (in the next batch of
writes, unsynced by itself: losing it only means one more harmless repeat).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from agent.journal import Journal
from agent.stage import StageKey
from agent.uplink import Uplink
from outrider.v1 import agent_pb2, common_pb2

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


def _key(ref: common_pb2.LeaseRef) -> StageKey:
    return (ref.run_id, ref.task, ref.epoch)


class Outbox:
    """The unacknowledged results (see the module docstring).

    Args:
        uplink: where a result goes once it is durable.
        journal: where it is kept; None keeps results in memory only (unit tests).
    """

    def __init__(self, uplink: Uplink, journal: Journal | None = None) -> None:
        self.uplink = uplink
        self.journal = journal
        self.items: dict[StageKey, agent_pb2.AgentMessage] = {}
        self.empty = asyncio.Event()
        self.empty.set()

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: object) -> bool:
        return key in self.items

    async def put(
        self,
        key: StageKey,
        completion: agent_pb2.Completion,
        logs: Iterable[agent_pb2.LogChunk] = (),
        *,
        lease: bool,
    ) -> None:
        """Keep a result (dropping the stage's lease record when ``lease``), then send it."""
        msg = agent_pb2.AgentMessage(completions=[completion], logs=list(logs))
        self.items[key] = msg
        self.empty.clear()
        if self.journal is not None:
            deletes = [Journal.lease_key(key)] if lease else []
            try:
                await self.journal.write({Journal.outbox_key(key): msg.SerializeToString()}, deletes)
            except Exception as exc:  # the disk failed us: the result still goes up, undurable
                log.error("result of %s/%s attempt %d not kept on disk: %s", *key, exc)
        if key in self.items:  # not acknowledged meanwhile (a repeat after a restart can be)
            self.uplink.complete(completion, msg.logs)

    def restore(self, items: dict[StageKey, agent_pb2.AgentMessage]) -> None:
        """Results a previous agent process left undelivered."""
        self.items.update(items)
        if self.items:
            self.empty.clear()

    def ack(self, ack: agent_pb2.CompletionAck) -> bool:
        """The scheduler took (or refused, for good) a result: it leaves the outbox.
        True if it was there."""
        key = _key(ack.lease)
        found = self.items.pop(key, None) is not None
        if found and self.journal is not None:
            self.journal.write_later(deletes=[Journal.outbox_key(key)])
        if not self.items:
            self.empty.set()
        if ack.code != 0:
            log.warning(
                "scheduler refused the result of %s/%s attempt %d: %s",
                ack.lease.run_id,
                ack.lease.task,
                ack.lease.epoch,
                ack.message,
            )
        return found

    def undelivered(self) -> list[agent_pb2.AgentMessage]:
        """Everything not acknowledged yet, to send again on a fresh stream."""
        return list(self.items.values())
