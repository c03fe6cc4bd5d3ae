"""One way to reach an agent: its work stream, or one unary long-poll.

A channel holds the agent's credits (free slots it asked work for) and what waits
to go down to it: assignments, acks of its completions and checkpoints, leases to
cancel, a heartbeat answer, the request to drain. Whatever is queued while the previous message was being written
leaves together in the next one (:meth:`Channel.take`), so under load one message
carries many items. The items are domain values; the servicer converts a
:class:`Outbound` into the wire message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.core.messages import Ack, Assignment, CheckpointAck, HeartbeatReply, LeaseRef


@dataclass(slots=True)
class Outbound:
    """What leaves for the agent in one message."""

    assignments: list[Assignment] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    cancel: list[LeaseRef] = field(default_factory=list)
    heartbeat: HeartbeatReply | None = None
    checkpoint_acks: list[CheckpointAck] = field(default_factory=list)
    drain: bool = False


class Channel:
    def __init__(self, agent: str, credits: int = 0) -> None:
        self.agent = agent
        self.credits = credits
        self.closed = False
        self.inflight = 0  # assignments committed-pending for this channel
        self._out = Outbound()
        self._event = asyncio.Event()

    def push(
        self,
        assignments: Iterable[Assignment] = (),
        acks: Iterable[Ack] = (),
        cancel: Iterable[LeaseRef] = (),
        heartbeat: HeartbeatReply | None = None,
        checkpoint_acks: Iterable[CheckpointAck] = (),
        drain: bool = False,
    ) -> None:
        out = self._out
        out.assignments.extend(assignments)
        out.acks.extend(acks)
        out.cancel.extend(cancel)
        out.checkpoint_acks.extend(checkpoint_acks)
        out.drain = out.drain or drain
        if heartbeat is not None:
            out.heartbeat = heartbeat
        self._event.set()

    def has_assignments(self) -> bool:
        return bool(self._out.assignments)

    def _pending(self) -> bool:
        out = self._out
        return bool(
            out.assignments or out.acks or out.cancel or out.checkpoint_acks or out.drain or out.heartbeat is not None
        )

    def take(self) -> Outbound:
        """Everything queued, as one message; the channel starts empty again."""
        out, self._out = self._out, Outbound()
        self._event.clear()
        return out

    async def next_message(self) -> Outbound | None:
        """Wait for something to send; None once the channel is closed and drained."""
        while True:
            if self._pending():
                return self.take()
            if self.closed:
                return None
            await self._event.wait()
            self._event.clear()

    async def wait_assignments(self, timeout: float) -> None:
        """Wait until assignments arrive or ``timeout`` passes (a unary long-poll)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._out.assignments and not self.closed and (left := end - loop.time()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)
            self._event.clear()

    async def drain(self) -> None:
        """Stop taking credit and wait for assignments already being committed."""
        self.credits = 0
        while self.inflight:
            await self._event.wait()
            self._event.clear()

    def close(self) -> None:
        self.closed = True
        self._event.set()
