"""What goes up the work stream next: credits, completions, logs and a heartbeat.

The supervisor (credits, completions), the runner (logs), the checkpoint keeper
(checkpoints) and the session (heartbeats) each drop what they have here; :meth:`Uplink.pump` writes it to the
``Connect`` stream as one ``AgentMessage``. Whatever accumulates while one
message is being written leaves in the next one, so a burst of short stages
costs a few writes, not one per event.

Logs are kept while the agent is disconnected, up to a bound (the oldest go
first); credits and completions are rebuilt for every new stream
(:meth:`Uplink.restart`), because the scheduler forgets a stream's credits with
the stream and completions stay in the supervisor's outbox until acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from outrider.v1 import agent_pb2, common_pb2

__all__ = ["MAX_PENDING_LOG_BYTES", "Uplink"]

#: Logs buffered while disconnected; past this the oldest go first.
MAX_PENDING_LOG_BYTES = 8 << 20


class Uplink:
    """The up-going batch of the work stream, and the loop that sends it."""

    def __init__(self, max_log_bytes: int = MAX_PENDING_LOG_BYTES) -> None:
        self.max_log_bytes = max_log_bytes
        self._credits = 0
        self._completions: list[agent_pb2.Completion] = []
        self._checkpoints: list[common_pb2.Checkpoint] = []
        self._logs: list[agent_pb2.LogChunk] = []
        self._log_bytes = 0
        self._heartbeat: agent_pb2.HeartbeatRequest | None = None
        #: Set whenever there is something to send (or the sender must look again).
        self.wake = asyncio.Event()

    # -- what the other components drop here

    def credit(self, n: int = 1) -> None:
        """Free slots to offer the scheduler."""
        self._credits += n
        self.wake.set()

    def complete(self, completion: agent_pb2.Completion, logs: Iterable[agent_pb2.LogChunk] = ()) -> None:
        """A result to report, after the last of its stage's output (the outbox keeps both
        until acknowledged)."""
        for chunk in logs:
            self._logs.append(chunk)
            self._log_bytes += len(chunk.data)
        self._completions.append(completion)
        self.wake.set()

    def checkpoint(self, ckpt: common_pb2.Checkpoint) -> None:
        """A checkpoint uploaded, to report (re-reported until acknowledged)."""
        self._checkpoints.append(ckpt)
        self.wake.set()

    def take_logs(self, lease: common_pb2.LeaseRef) -> list[agent_pb2.LogChunk]:
        """Take back the output of one stage that has not left yet (it goes with its result)."""
        mine = [c for c in self._logs if c.lease == lease]
        if mine:
            self._logs = [c for c in self._logs if c.lease != lease]
            self._log_bytes -= sum(len(c.data) for c in mine)
        return mine

    def log(self, lease: common_pb2.LeaseRef, stream: str, data: bytes) -> None:
        """A piece of a stage's stdout or stderr (the runner's log sink)."""
        self._logs.append(agent_pb2.LogChunk(lease=lease, stream=stream, data=data, ts=time.time()))
        self._log_bytes += len(data)
        while self._log_bytes > self.max_log_bytes and len(self._logs) > 1:
            self._log_bytes -= len(self._logs.pop(0).data)
        self.wake.set()

    @property
    def unsent_heartbeat(self) -> agent_pb2.HeartbeatRequest | None:
        """The heartbeat waiting to be sent, if the last one has not left yet."""
        return self._heartbeat

    def heartbeat(self, hb: agent_pb2.HeartbeatRequest) -> None:
        """Send ``hb`` next, replacing an unsent one (it is newer in every field)."""
        self._heartbeat = hb
        self.wake.set()

    # -- the stream

    def restart(
        self,
        credits: int,
        results: Iterable[agent_pb2.AgentMessage],
        checkpoints: Iterable[common_pb2.Checkpoint] = (),
    ) -> None:
        """Start over for a fresh stream: these credits, these results (each a completion
        and its last output), these checkpoint reports, no heartbeat.

        Buffered logs are kept: they were produced while the link was down.
        """
        self._credits = credits
        self._completions = []
        for msg in results:
            for chunk in msg.logs:
                self._logs.append(chunk)
                self._log_bytes += len(chunk.data)
            self._completions.extend(msg.completions)
        self._checkpoints = list(checkpoints)
        self._heartbeat = None

    def take(self) -> agent_pb2.AgentMessage | None:
        """Everything pending as one message (and forget it), or None if nothing is."""
        if not (self._credits or self._completions or self._logs or self._heartbeat or self._checkpoints):
            return None
        msg = agent_pb2.AgentMessage(
            credits=self._credits, completions=self._completions, logs=self._logs, checkpoints=self._checkpoints
        )
        if self._heartbeat is not None:
            msg.heartbeat.CopyFrom(self._heartbeat)
        self._credits, self._completions, self._logs, self._log_bytes, self._heartbeat = 0, [], [], 0, None
        self._checkpoints = []
        return msg

    async def pump(self, call: Any) -> None:
        """Write pending messages to ``call`` (a ``Connect`` stream) until cancelled."""
        self.wake.set()
        while True:
            await self.wake.wait()
            self.wake.clear()
            msg = self.take()
            if msg is not None:
                await call.write(msg)
