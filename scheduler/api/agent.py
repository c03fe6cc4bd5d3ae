"""The agent service: registration, heartbeats, the work stream and the unary long-poll.

Thin: each handler converts the request (:mod:`scheduler.api.wire`), calls the
engine and converts the answer. The caller's identity comes from the auth
interceptor; an agent can act only as the name in its certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from outrider.errors import OutriderError
from outrider.protocol import REVOKED_METADATA_KEY
from outrider.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from scheduler.api import bounds, wire
from scheduler.api.status import abort, bounded, unary
from scheduler.auth import current_identity
from scheduler.core.channel import Channel
from scheduler.core.engine import Engine
from scheduler.core.messages import Ack, CheckpointAck, Heartbeat, HeartbeatReply, LeaseRef

log = logging.getLogger(__name__)
MAX_POLL_WAIT_S = 60.0


def _peer(context: Any) -> str:
    """The transport address of the call ("ipv4:10.0.0.5:53422"): one per connection."""
    try:
        return str(context.peer() or "")
    except Exception:  # a test double without it
        return ""


def _refusal(fut: asyncio.Future[None]) -> OutriderError | None:
    """What a resolved commit future says: None (durable), or why the store refused it."""
    exc = None if fut.cancelled() else fut.exception()
    return exc if exc is None or isinstance(exc, OutriderError) else OutriderError(str(exc))


def check_stream_message(msg: agent_pb2.AgentMessage) -> tuple[Heartbeat | None, int]:
    """The parts of a work-stream message that concern the stream itself (its heartbeat and
    credits), checked as Register's and the unary Heartbeat's are. A bad one can only come from
    a broken or hostile agent, and no answer on the stream could name it: it ends the stream
    with INVALID_ARGUMENT naming the field, before anything in the message is applied."""
    beat = wire.heartbeat_from_proto(msg.heartbeat, "heartbeat") if msg.HasField("heartbeat") else None
    return beat, bounds.integer("credits", msg.credits, 0, bounds.MAX_SLOTS)


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _reply(self, lost: list[LeaseRef], client_time: float) -> HeartbeatReply:
        return HeartbeatReply(
            server_time=time.time(), lost=tuple(lost), lease_ttl_s=self.engine.lease_ttl, client_time=client_time
        )

    @unary
    async def Register(self, request: agent_pb2.RegisterRequest, context: Any) -> agent_pb2.RegisterResponse:
        ident = current_identity()
        bounds.number("client_time", request.client_time)
        lost = self.engine.register(
            ident.name,
            ident.spiffe_id,
            wire.capabilities_from_proto(request.capabilities),
            wire.clocks_from_proto(request.clock),
            wire.leases_from_proto(request.leases),
            bounds.text("instance_id", request.instance_id),
            _peer(context),
            ident.zones,  # the certificate's zones: the agent's own claim may only narrow them
        )
        return agent_pb2.RegisterResponse(
            agent_id=ident.name,
            server_time=time.time(),
            heartbeat_interval_s=self.engine.heartbeat_interval,
            lease_ttl_s=self.engine.lease_ttl,
            lost=[wire.lease_to_proto(r) for r in lost],
        )

    def _heartbeat(self, name: str, hb: Heartbeat, cert_zones: frozenset[str] | None) -> HeartbeatReply:
        lost = self.engine.heartbeat(
            name, hb.leases, hb.clocks, hb.caps, unhealthy=hb.unhealthy, draining=hb.draining, cert_zones=cert_zones
        )
        if hb.figures is not None:  # kept for /metrics and the disk alert (memory only, the latest)
            self.engine.agents[name].figures = hb.figures
        return self._reply(lost, hb.client_time)

    @unary
    async def Heartbeat(self, request: agent_pb2.HeartbeatRequest, context: Any) -> agent_pb2.HeartbeatResponse:
        beat = wire.heartbeat_from_proto(request)
        ident = current_identity()
        return wire.heartbeat_to_proto(self._heartbeat(ident.name, beat, ident.zones))

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Any) -> None:
        name = current_identity().name
        try:
            ch = self.engine.attach(name, peer=_peer(context))
        except OutriderError as exc:
            await abort(context, exc)
        reader = asyncio.ensure_future(self._read(name, ch, request_iterator))
        try:
            while (out := await ch.next_message()) is not None:
                await context.write(wire.scheduler_message(out))
        finally:
            reader.cancel()
            self.engine.detach(ch)
        await self._refuse_if_revoked(context, name)  # revoked meanwhile: its stream was closed for that
        refused = reader.result() if reader.done() and not reader.cancelled() else None
        if refused is not None:
            await abort(context, refused)

    async def _refuse_if_revoked(self, context: Any, name: str) -> None:
        """End the call as the interceptor refuses every call of a revoked agent, if it was revoked
        while the call was open (its channel is closed then: :mod:`scheduler.core.revocation`)."""
        refusal = self.engine.revocations.refusal(name)
        if refusal is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal, ((REVOKED_METADATA_KEY, name),))

    async def _read(self, name: str, ch: Channel, it: AsyncIterator[agent_pb2.AgentMessage]) -> OutriderError | None:
        """Handle what comes up the stream until it ends; what refused it, if something did
        (an undecodable message, bad credits or a bad heartbeat: Connect ends with it)."""
        try:
            async for msg in it:
                self._handle(name, ch, msg)
        except asyncio.CancelledError:
            raise
        except OutriderError as exc:
            log.warning("work stream of %s refused: %s", name, bounded(str(exc)))
            return exc
        except Exception:
            log.info("work stream of %s ended", name, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            ch.close()
        return None

    def _handle(self, name: str, ch: Channel, msg: agent_pb2.AgentMessage) -> None:
        """One message up the work stream. Its heartbeat and credits are checked first: a bad
        one refuses the whole message and ends the stream (:func:`check_stream_message`).
        Otherwise a bad part is refused on its own (a completion with a nack, a log chunk or a
        heartbeat the engine refuses with a warning in the log); the stream goes on."""
        beat, credits = check_stream_message(msg)
        if msg.logs:
            try:
                self.engine.append_logs(name, wire.logs_from_proto(msg.logs))
            except OutriderError as exc:
                log.warning("log chunks from %s refused: %s", name, bounded(str(exc)))
        # Checkpoints before completions: a stage that checkpoints and then ends (or is
        # released) sends both in one message, and its checkpoint belongs to the live lease.
        for cp in msg.checkpoints[: bounds.MAX_CHECKPOINTS]:
            self._checkpoint(name, ch, cp)
        for c in msg.completions:
            self._complete(name, ch, c)
        if beat is not None:
            try:
                reply = self._heartbeat(name, beat, current_identity().zones)  # the stream's certificate
            except OutriderError as exc:
                log.warning("heartbeat from %s refused: %s", name, bounded(str(exc)))
            else:
                ch.push(heartbeat=reply)
        if credits:
            try:
                self.engine.add_credits(ch, credits)
            except OutriderError as exc:
                log.warning("credits from %s refused: %s", name, bounded(str(exc)))

    def _complete(self, name: str, ch: Channel, c: agent_pb2.Completion) -> None:
        ref = wire.ack_lease(c.lease)
        try:
            fut = self.engine.complete(name, wire.completion_from_proto(c))
        except OutriderError as exc:
            ch.push(acks=[Ack(ref, exc)])
            return
        fut.add_done_callback(lambda f: ch.push(acks=[Ack(ref, _refusal(f))]))

    def _checkpoint(self, name: str, ch: Channel, cp: common_pb2.Checkpoint) -> None:
        ref, seq = wire.ack_lease(cp.lease), cp.seq
        try:
            fut, note = self.engine.report_checkpoint(name, wire.checkpoint_from_proto(cp))
        except OutriderError as exc:
            ch.push(checkpoint_acks=[CheckpointAck(ref, seq, exc)])
            return
        fut.add_done_callback(lambda f: ch.push(checkpoint_acks=[CheckpointAck(ref, seq, _refusal(f), note)]))

    @unary
    async def ReportCheckpoint(
        self, request: agent_pb2.ReportCheckpointRequest, context: Any
    ) -> agent_pb2.ReportCheckpointResponse:
        fut, _ = self.engine.report_checkpoint(current_identity().name, wire.checkpoint_from_proto(request.checkpoint))
        await fut
        return agent_pb2.ReportCheckpointResponse()

    @unary
    async def PollTasks(self, request: agent_pb2.PollRequest, context: Any) -> agent_pb2.PollResponse:
        name = current_identity().name
        acks = []
        bounds.number("wait_s", request.wait_s, 0.0, bounds.MAX_WALL)
        free_slots = bounds.integer("free_slots", request.free_slots, 0, bounds.MAX_SLOTS)
        bounds.count("completions", request.completions, bounds.MAX_LEASES)
        for c in request.completions:
            ref = wire.ack_lease(c.lease)
            try:
                await self.engine.complete(name, wire.completion_from_proto(c))
                acks.append(wire.ack_to_proto(Ack(ref)))
            except OutriderError as exc:
                acks.append(wire.ack_to_proto(Ack(ref, exc)))
        await self._refuse_if_revoked(context, name)  # revoked while its completions were being applied
        ch = self.engine.attach(name, credits=0, peer=_peer(context))
        self.engine.add_credits(ch, free_slots)
        try:
            await ch.wait_assignments(min(max(request.wait_s, 0.0), MAX_POLL_WAIT_S))
        finally:
            await ch.drain()  # no new work for this poll; but what is being committed still comes
            self.engine.detach(ch)
        await self._refuse_if_revoked(context, name)
        return agent_pb2.PollResponse(
            assignments=[wire.assignment_to_proto(a) for a in ch.take().assignments], acks=acks
        )

    @unary
    async def ReportLogs(self, request: agent_pb2.ReportLogsRequest, context: Any) -> agent_pb2.ReportLogsResponse:
        self.engine.append_logs(current_identity().name, wire.logs_from_proto(request.logs))
        return agent_pb2.ReportLogsResponse()

    @unary
    async def Complete(self, request: agent_pb2.CompleteRequest, context: Any) -> agent_pb2.CompleteResponse:
        await self.engine.complete(current_identity().name, wire.completion_from_proto(request.completion))
        return agent_pb2.CompleteResponse()
