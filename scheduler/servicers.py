"""Thin gRPC servicers: proto in → engine call → proto out.

Domain errors become status codes here and only here (:func:`_status`).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Callable, TypeVar

import grpc

from outrider.errors import InvalidArgument, NotFound, OutriderError, PermissionDenied
from outrider.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    artifact_pb2,
    artifact_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
)
from scheduler import convert
from scheduler.artifacts import ArtifactStore
from scheduler.auth import current_identity
from scheduler.engine import Channel, Engine
from scheduler.logs import LogStore
from scheduler.model import RunState
from scheduler.store import Batch

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
MAX_POLL_WAIT_S = 60.0
PROBE_MAX_BYTES = 64 << 20
_FILLER = bytes(range(256)) * 4096  # 1 MiB; gRPC does not compress by default


def _status(exc: OutriderError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)


def status_number(exc: OutriderError) -> int:
    return _status(exc).value[0]


def unary(fn: F) -> F:
    """Map OutriderError raised by a unary handler to its status code."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except OutriderError as exc:
            await context.abort(_status(exc), str(exc))

    return wrapper  # type: ignore[return-value]


def streaming(fn: F) -> F:
    """The same for server-streaming handlers (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(self, request, context):
                yield item
        except OutriderError as exc:
            await context.abort(_status(exc), str(exc))

    return wrapper  # type: ignore[return-value]


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _heartbeat_response(self, lost: list[Any], client_time: float) -> agent_pb2.HeartbeatResponse:
        return agent_pb2.HeartbeatResponse(
            server_time=time.time(), lost=lost, lease_ttl_s=self.engine.lease_ttl, client_time=client_time)

    @unary
    async def Register(self, request: agent_pb2.RegisterRequest, context: Any) -> agent_pb2.RegisterResponse:
        ident = current_identity()
        if request.capabilities.slots < 0:
            raise InvalidArgument(f"capabilities.slots must not be negative, got {request.capabilities.slots}")
        lost = self.engine.register(ident.name, ident.spiffe_id, request.capabilities, request.clock, request.leases)
        return agent_pb2.RegisterResponse(
            agent_id=ident.name,
            server_time=time.time(),
            heartbeat_interval_s=self.engine.heartbeat_interval,
            lease_ttl_s=self.engine.lease_ttl,
            lost=lost,
        )

    @unary
    async def Heartbeat(self, request: agent_pb2.HeartbeatRequest, context: Any) -> agent_pb2.HeartbeatResponse:
        lost = self.engine.heartbeat(current_identity().name, request.leases, request.clock,
                                     request.capabilities if request.HasField("capabilities") else None)
        return self._heartbeat_response(lost, request.client_time)

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Any) -> None:
        name = current_identity().name
        try:
            ch = self.engine.attach(name)
        except OutriderError as exc:
            await context.abort(_status(exc), str(exc))
        reader = asyncio.ensure_future(self._read(name, ch, request_iterator))
        try:
            while (msg := await ch.next_message()) is not None:
                await context.write(msg)
        finally:
            reader.cancel()
            self.engine.detach(ch)

    async def _read(self, name: str, ch: Channel, it: AsyncIterator[agent_pb2.AgentMessage]) -> None:
        try:
            async for msg in it:
                self._handle(name, ch, msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.info("work stream of %s ended", name, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            ch.close()

    def _handle(self, name: str, ch: Channel, msg: agent_pb2.AgentMessage) -> None:
        if msg.logs:
            self.engine.append_logs(name, msg.logs)
        for c in msg.completions:
            self._complete(name, ch, c)
        if msg.HasField("heartbeat"):
            hb = msg.heartbeat
            try:
                lost = self.engine.heartbeat(name, hb.leases, hb.clock,
                                             hb.capabilities if hb.HasField("capabilities") else None)
            except OutriderError as exc:
                log.warning("heartbeat from %s refused: %s", name, exc)
            else:
                ch.push(heartbeat=self._heartbeat_response(lost, msg.heartbeat.client_time))
        if msg.credits:
            self.engine.add_credits(ch, msg.credits)

    def _complete(self, name: str, ch: Channel, c: agent_pb2.Completion) -> None:
        try:
            fut = self.engine.complete(name, c)
        except OutriderError as exc:
            ch.push(acks=[agent_pb2.CompletionAck(lease=c.lease, code=status_number(exc), message=str(exc))])
            return
        ref = c.lease
        fut.add_done_callback(lambda _: ch.push(acks=[agent_pb2.CompletionAck(lease=ref, code=0)]))

    @unary
    async def PollTasks(self, request: agent_pb2.PollRequest, context: Any) -> agent_pb2.PollResponse:
        name = current_identity().name
        acks = []
        for c in request.completions:
            try:
                await self.engine.complete(name, c)
                acks.append(agent_pb2.CompletionAck(lease=c.lease, code=0))
            except OutriderError as exc:
                acks.append(agent_pb2.CompletionAck(lease=c.lease, code=status_number(exc), message=str(exc)))
        ch = self.engine.attach(name, credits=0)
        self.engine.add_credits(ch, max(0, request.free_slots))
        try:
            await ch.wait_assignments(min(max(request.wait_s, 0.0), MAX_POLL_WAIT_S))
        finally:
            await ch.drain()  # no new work for this poll; but what is being committed still comes
            self.engine.detach(ch)
        return agent_pb2.PollResponse(assignments=ch.take().assignments, acks=acks)

    @unary
    async def ReportLogs(self, request: agent_pb2.ReportLogsRequest, context: Any) -> agent_pb2.ReportLogsResponse:
        self.engine.append_logs(current_identity().name, request.logs)
        return agent_pb2.ReportLogsResponse()

    @unary
    async def Complete(self, request: agent_pb2.CompleteRequest, context: Any) -> agent_pb2.CompleteResponse:
        await self.engine.complete(current_identity().name, request.completion)
        return agent_pb2.CompleteResponse()


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(self, engine: Engine, logs: LogStore) -> None:
        self.engine = engine
        self.logs = logs

    async def _barrier(self) -> None:
        """Wait until everything already in memory is durable, so reads never show
        a state that a crash could take back."""
        await self.engine.store.commit(Batch())

    @unary
    async def Plan(self, request: control_pb2.PlanRequest, context: Any) -> control_pb2.PlanResponse:
        self.engine.check_spec(request.pipeline)
        return control_pb2.PlanResponse(tasks=self.engine.plan(request.pipeline))

    @unary
    async def Submit(self, request: control_pb2.SubmitRequest, context: Any) -> control_pb2.SubmitResponse:
        run_id, warnings = await self.engine.submit(request.pipeline, current_identity().spiffe_id, request.strict)
        return control_pb2.SubmitResponse(run_id=run_id, warnings=warnings)

    @streaming
    async def SubmitAndWatch(
        self, request: control_pb2.SubmitAndWatchRequest, context: Any
    ) -> AsyncIterator[control_pb2.RunEvent]:
        run, warnings, watcher = await self.engine.submit_and_watch(
            request.pipeline, current_identity().spiffe_id, request.run_only, request.strict)
        try:
            # The submission is durable (submit awaited its commit): this is the ack.
            first = control_pb2.RunEvent(run_id=run.run_id, state=run.state.value, ts=time.time(),
                                         snapshot=convert.run_status(run), warnings=warnings)
            async for ev in self._follow(run, watcher, first):
                yield ev
        finally:
            self.engine.unwatch(watcher)

    async def _follow(self, run: Any, watcher: Any, first: control_pb2.RunEvent) -> AsyncIterator[control_pb2.RunEvent]:
        """Yield ``first``, then the watcher's events until the run ends."""
        ended = run.terminal  # decided now: the run may end while ``first`` is being sent
        yield first
        if ended:
            return
        while True:
            ev = await watcher.queue.get()
            yield ev
            if not ev.task and ev.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
                return

    @unary
    async def GetRun(self, request: control_pb2.GetRunRequest, context: Any) -> control_pb2.RunStatus:
        await self._barrier()
        return convert.run_status(self.engine._run(request.run_id))

    @unary
    async def ListRuns(self, request: control_pb2.ListRunsRequest, context: Any) -> control_pb2.ListRunsResponse:
        await self._barrier()
        if request.state and request.state not in {s.value for s in RunState}:
            raise InvalidArgument(f"state must be one of {[s.value for s in RunState]}, got {request.state!r}")
        runs = sorted(self.engine.runs.values(), key=lambda r: r.seq, reverse=True)
        if request.state:
            runs = [r for r in runs if r.state.value == request.state]
        limit = request.limit if request.limit > 0 else 50
        return control_pb2.ListRunsResponse(runs=[convert.run_status(r, with_tasks=False) for r in runs[:limit]])

    @streaming
    async def WatchRun(self, request: control_pb2.WatchRunRequest, context: Any) -> AsyncIterator[control_pb2.RunEvent]:
        watcher, run = self.engine.watch(request.run_id, request.run_only)
        try:
            await self._barrier()
            first = control_pb2.RunEvent(run_id=run.run_id, state=run.state.value, ts=time.time(),
                                         snapshot=convert.run_status(run))
            async for ev in self._follow(run, watcher, first):
                yield ev
        finally:
            self.engine.unwatch(watcher)

    @unary
    async def CancelRun(self, request: control_pb2.CancelRunRequest, context: Any) -> control_pb2.RunStatus:
        return convert.run_status(await self.engine.cancel(request.run_id))

    @unary
    async def RetryRun(self, request: control_pb2.RetryRunRequest, context: Any) -> control_pb2.RunStatus:
        return convert.run_status(await self.engine.retry(request.run_id))

    @unary
    async def Explain(self, request: control_pb2.ExplainRequest, context: Any) -> control_pb2.ExplainResponse:
        await self._barrier()
        return self.engine.explain(request.run_id, request.task)

    @unary
    async def ListAgents(self, request: control_pb2.ListAgentsRequest, context: Any) -> control_pb2.ListAgentsResponse:
        out = []
        for a in sorted(self.engine.agents.values(), key=lambda a: a.name):
            out.append(control_pb2.AgentInfo(
                name=a.name, identity=a.identity, state="ready" if a.connected else "disconnected",
                capabilities=a.caps, clock=a.clocks, last_seen=a.last_seen, running=len(a.running),
                free_slots=sum(ch.credits for ch in a.channels), registered_at=a.registered_at,
                clock_suspect=a.view.clock_suspect, clock_skew_s=a.view.clock_skew,
            ))
        return control_pb2.ListAgentsResponse(agents=out)

    @streaming
    async def GetLogs(self, request: control_pb2.GetLogsRequest, context: Any) -> AsyncIterator[control_pb2.LogLine]:
        task = self.engine.task(request.run_id, request.task)
        if request.attempt < 0 or request.attempt > task.attempts:
            raise NotFound(f"task {request.task} has {task.attempts} attempt(s); no attempt {request.attempt}")
        attempts = [request.attempt] if request.attempt else list(range(1, task.attempts + 1))
        follow = request.follow and not task.terminal
        # Register the follower and read the files in one loop turn: nothing can be
        # appended in between, so lines are neither lost nor doubled.
        follower = self.engine.follow_logs(request.run_id, request.task) if follow else None
        backlog = [control_pb2.LogLine(attempt=a, stream=s, data=d, ts=ts)
                   for a in attempts for ts, s, d in self.logs.read(request.run_id, request.task, a)]
        try:
            for line in backlog:
                yield line
            while follower is not None:
                line = await follower.queue.get()
                if line is None:
                    return
                if not request.attempt or line.attempt == request.attempt:
                    yield line
        finally:
            if follower is not None:
                self.engine.unfollow_logs(follower)


class ArtifactServicer(artifact_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, engine: Engine, store: ArtifactStore) -> None:
        self.engine = engine
        self.store = store

    @unary
    async def Upload(self, request_iterator: AsyncIterator[artifact_pb2.UploadChunk], context: Any) -> artifact_pb2.ArtifactInfo:
        upload = None
        header = None
        try:
            async for chunk in request_iterator:
                if header is None:
                    if not chunk.HasField("header"):
                        raise InvalidArgument("the first upload chunk must carry the artifact header")
                    header = chunk.header
                    if header.kind not in ("file", "dir"):
                        raise InvalidArgument(f"artifact kind must be 'file' or 'dir', got {header.kind!r}")
                    if self.store.exists(header.digest):
                        continue  # content-addressed: already have it; drain the rest
                    upload = self.store.writer(header.digest, header.size)
                if upload is not None and chunk.data:
                    upload.write(chunk.data)
            if header is None:
                raise InvalidArgument("empty upload: no header received")
            if upload is not None:
                await asyncio.to_thread(upload.commit)
                upload = None
                batch = Batch()
                batch.insert_artifact(header.digest, header.size, header.kind, time.time())
                await self.engine.store.commit(batch)
        finally:
            if upload is not None:
                upload.abort()
        return artifact_pb2.ArtifactInfo(digest=header.digest, size=header.size, kind=header.kind, exists=True)

    @streaming
    async def Download(self, request: artifact_pb2.DownloadRequest, context: Any) -> AsyncIterator[artifact_pb2.DownloadChunk]:
        ident = current_identity()
        if ident.role == "agent":
            refusal = self.engine.may_download(ident.name, request.digest)
            if refusal is not None:
                raise PermissionDenied(refusal)
        size = self.store.size(request.digest)
        if request.offset < 0 or request.offset > size:
            raise InvalidArgument(f"offset {request.offset} is outside the artifact (size {size})")
        offset = request.offset
        first = True
        for data in self.store.read_chunks(request.digest, request.offset):
            msg = artifact_pb2.DownloadChunk(data=data, offset=offset)
            if first:
                msg.info.CopyFrom(artifact_pb2.ArtifactInfo(digest=request.digest, size=size, exists=True))
                first = False
            offset += len(data)
            yield msg
        if first:  # empty artifact: still say what it is
            yield artifact_pb2.DownloadChunk(
                info=artifact_pb2.ArtifactInfo(digest=request.digest, size=size, exists=True), offset=offset)

    @streaming
    async def Probe(self, request: artifact_pb2.ProbeRequest, context: Any) -> AsyncIterator[artifact_pb2.DownloadChunk]:
        """Filler bytes for an agent's bandwidth measurement (bounded: 64 MiB)."""
        if request.size < 0 or request.size > PROBE_MAX_BYTES:
            raise InvalidArgument(f"probe size must be 0..{PROBE_MAX_BYTES}, got {request.size}")
        left, offset = request.size, 0
        while left > 0:
            n = min(left, len(_FILLER))
            yield artifact_pb2.DownloadChunk(data=_FILLER[:n], offset=offset)
            left -= n
            offset += n

    @unary
    async def Stat(self, request: artifact_pb2.StatRequest, context: Any) -> artifact_pb2.ArtifactInfo:
        if not self.store.exists(request.digest):
            self.store.path(request.digest)  # raises InvalidArgument on a malformed digest
            return artifact_pb2.ArtifactInfo(digest=request.digest, exists=False)
        return artifact_pb2.ArtifactInfo(digest=request.digest, size=self.store.size(request.digest), exists=True)
