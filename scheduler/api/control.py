"""The control service: plan, submit, watch, cancel, retry, explain, agents and logs.

Thin: each handler converts the request (:mod:`scheduler.api.wire`), calls the
engine and converts the answer. Reads first wait for the engine's barrier, so
they never show a state that a crash could take back.

What one request may cost is bounded: a pipeline may have at most
``max_pipeline_tasks`` tasks and ``max_pipeline_bytes`` of encoded spec (refused with
``INVALID_ARGUMENT`` naming the limit; a request far over the byte limit is refused by
gRPC itself with ``RESOURCE_EXHAUSTED`` before it is parsed), and the work a big one
takes is kept off the event loop (:mod:`scheduler.core.pacing`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from outrider.errors import InvalidArgument, NotFound
from outrider.v1 import common_pb2, control_pb2, control_pb2_grpc
from scheduler.api import bounds, stagemetrics, traces, wire
from scheduler.api.access import Access
from scheduler.api.insight import Insight
from scheduler.api.status import streaming, unary
from scheduler.auth import current_identity
from scheduler.core.engine import Engine
from scheduler.core.model import Run, RunState
from scheduler.core.pacing import INLINE_TASKS, offload
from scheduler.core.spec import PipelineSpec
from scheduler.core.stagemetrics import StageMetrics
from scheduler.core.views import RunEvent, RunStatus, run_status
from scheduler.core.watch import Watcher

_RUN_STATES = [s.value for s in RunState]


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(
        self, engine: Engine, *, max_pipeline_tasks: int = 100_000, max_pipeline_bytes: int = 32 << 20
    ) -> None:
        self.engine = engine
        self.access = Access(engine)
        self.insight = Insight(engine, self.access)  # events, lineage, prefixes
        self.stage_metrics = StageMetrics(engine.journal)  # what stages record (core/stagemetrics.py)
        self.max_pipeline_tasks = max_pipeline_tasks
        self.max_pipeline_bytes = max_pipeline_bytes

    async def _pipeline(self, msg: common_pb2.PipelineSpec) -> PipelineSpec:
        """A submitted pipeline: bounded, then validated and converted (off the loop if big)."""
        size = msg.ByteSize()
        if size > self.max_pipeline_bytes:
            raise InvalidArgument(
                f"pipeline {msg.name[:80]!r} is {size} bytes encoded, over the limit of {self.max_pipeline_bytes} "
                "(the scheduler's max_pipeline_bytes); split it into smaller pipelines"
            )
        tasks = len(msg.tasks)
        if tasks > self.max_pipeline_tasks:
            raise InvalidArgument(
                f"pipeline {msg.name[:80]!r} has {tasks} tasks, over the limit of {self.max_pipeline_tasks} "
                "(the scheduler's max_pipeline_tasks); split it into smaller pipelines"
            )
        return await offload(tasks > INLINE_TASKS, wire.check_pipeline, msg)

    @staticmethod
    async def _status(status: RunStatus) -> control_pb2.RunStatus:
        return await offload(len(status.tasks) > INLINE_TASKS, wire.run_status_to_proto, status)

    @unary
    async def Plan(self, request: control_pb2.PlanRequest, context: Any) -> control_pb2.PlanResponse:
        spec = await self._pipeline(request.pipeline)
        plans = await self.engine.plan_paced(spec)

        def answer() -> control_pb2.PlanResponse:
            resp = control_pb2.PlanResponse()
            wire.extend(resp.tasks, (wire.task_plan_to_proto(p) for p in plans))
            return resp

        return await offload(len(plans) > INLINE_TASKS, answer)

    @unary
    async def Submit(self, request: control_pb2.SubmitRequest, context: Any) -> control_pb2.SubmitResponse:
        spec = await self._pipeline(request.pipeline)
        run_id, warnings = await self.engine.submit(
            spec, current_identity().spiffe_id, request.strict, request.request_id
        )
        return control_pb2.SubmitResponse(run_id=run_id, warnings=warnings)

    @streaming
    async def SubmitAndWatch(
        self, request: control_pb2.SubmitAndWatchRequest, context: Any
    ) -> AsyncIterator[control_pb2.RunEvent]:
        spec = await self._pipeline(request.pipeline)
        run, warnings, watcher = await self.engine.submit_and_watch(
            spec, current_identity().spiffe_id, request.run_only, request.strict, request.request_id
        )
        try:
            # The submission is durable (submit awaited its commit): this is the ack.
            first = RunEvent(
                run.run_id, "", run.state.value, ts=time.time(), snapshot=run_status(run), warnings=tuple(warnings)
            )
            async for ev in self._follow(run, watcher, first):
                big = ev.snapshot is not None and len(ev.snapshot.tasks) > INLINE_TASKS
                yield await offload(big, wire.run_event_to_proto, ev)
        finally:
            self.engine.unwatch(watcher)

    @staticmethod
    async def _follow(run: Run, watcher: Watcher, first: RunEvent) -> AsyncIterator[RunEvent]:
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
        self.access.run(request.run_id)
        await self.engine.barrier()
        return await self._status(self.engine.run_status(request.run_id))

    @unary
    async def ListRuns(self, request: control_pb2.ListRunsRequest, context: Any) -> control_pb2.ListRunsResponse:
        await self.engine.barrier()
        if request.state and request.state not in _RUN_STATES:
            raise InvalidArgument(f"state must be one of {_RUN_STATES}, got {request.state!r}")
        state = RunState(request.state) if request.state else None
        runs, others = self.access.visible(state)
        limit = request.limit if request.limit > 0 else 50
        shown = [wire.run_status_to_proto(run_status(r, with_tasks=False)) for r in runs[:limit]]
        return control_pb2.ListRunsResponse(runs=shown, others=others)

    @streaming
    async def WatchRun(self, request: control_pb2.WatchRunRequest, context: Any) -> AsyncIterator[control_pb2.RunEvent]:
        """The run's snapshot (seq 0), then its durable history after ``after_seq``, then live
        events until it ends: a watch that reconnects resumes where it left off."""
        after = bounds.integer("after_seq", request.after_seq, 0, bounds.MAX_SEQ)
        self.access.run(request.run_id)
        watcher, run = self.engine.watch(request.run_id, request.run_only)
        try:
            await self.engine.barrier()
            status = run_status(run)
            first = RunEvent(run.run_id, "", run.state.value, ts=time.time(), snapshot=status)
            yield await offload(len(status.tasks) > INLINE_TASKS, wire.run_event_to_proto, first)
            async for ev in self.engine.follow(watcher, run, after):
                big = ev.snapshot is not None and len(ev.snapshot.tasks) > INLINE_TASKS
                yield await offload(big, wire.run_event_to_proto, ev)
        finally:
            self.engine.unwatch(watcher)

    @unary
    async def CancelRun(self, request: control_pb2.CancelRunRequest, context: Any) -> control_pb2.RunStatus:
        self.access.run(request.run_id)
        return await self._status(run_status(await self.engine.cancel(request.run_id)))

    @unary
    async def RetryRun(self, request: control_pb2.RetryRunRequest, context: Any) -> control_pb2.RunStatus:
        self.access.run(request.run_id)
        return await self._status(run_status(await self.engine.retry(request.run_id)))

    @unary
    async def Explain(self, request: control_pb2.ExplainRequest, context: Any) -> control_pb2.ExplainResponse:
        self.access.run(request.run_id)
        await self.engine.barrier()
        return wire.explanation_to_proto(self.engine.explain(request.run_id, request.task))

    @unary
    async def GetTrace(self, request: control_pb2.GetTraceRequest, context: Any) -> control_pb2.GetTraceResponse:
        self.access.run(request.run_id)
        run = self.engine.runs.get(request.run_id)
        if run is None:
            raise NotFound(f"no run {request.run_id[:200]!r}")
        return traces.trace_to_proto(run.run_id, run.trace_id, await self.engine.dispatcher.tracer.trace(run))

    @unary
    async def ListAgents(self, request: control_pb2.ListAgentsRequest, context: Any) -> control_pb2.ListAgentsResponse:
        return control_pb2.ListAgentsResponse(agents=[wire.agent_info_to_proto(a) for a in self.engine.list_agents()])

    @unary
    async def DrainAgent(self, request: control_pb2.DrainAgentRequest, context: Any) -> control_pb2.AgentInfo:
        return wire.agent_info_to_proto(self.engine.drain(bounds.text("agent", request.agent)))

    @unary
    async def RevokeAgent(
        self, request: control_pb2.RevokeAgentRequest, context: Any
    ) -> control_pb2.RevokeAgentResponse:
        agent = bounds.text("agent", request.agent)
        done = await self.engine.revocations.revoke(agent, bounds.text("reason", request.reason, bounds.MAX_REASON))
        return wire.revoke_outcome_to_proto(done)

    @streaming
    async def GetLogs(self, request: control_pb2.GetLogsRequest, context: Any) -> AsyncIterator[control_pb2.LogLine]:
        self.access.run(request.run_id)
        backlog, follower = self.engine.logs(request.run_id, request.task, request.attempt, request.follow)
        try:
            for line in backlog:
                yield wire.log_line_to_proto(line)
            while follower is not None:
                item = await follower.queue.get()
                if item is None:
                    return
                if not request.attempt or item.attempt == request.attempt:
                    yield wire.log_line_to_proto(item)
        finally:
            if follower is not None:
                self.engine.unfollow_logs(follower)

    @streaming
    async def WatchEvents(
        self, request: control_pb2.WatchEventsRequest, context: Any
    ) -> AsyncIterator[control_pb2.RunEvent]:
        async for ev in self.insight.watch_events(request):
            yield ev

    @unary
    async def Lineage(self, request: control_pb2.LineageRequest, context: Any) -> control_pb2.LineageResponse:
        return await self.insight.lineage(request)

    @unary
    async def Resolve(self, request: control_pb2.ResolveRequest, context: Any) -> control_pb2.ResolveResponse:
        return await self.insight.resolve(request)

    @unary
    async def GetStageMetrics(
        self, request: control_pb2.GetStageMetricsRequest, context: Any
    ) -> control_pb2.GetStageMetricsResponse:
        """What the stages of up to 32 runs recorded (``outrider status``, ``outrider metrics``)."""
        run_ids = stagemetrics.run_ids(request)
        for run_id in run_ids:
            self.access.run(run_id)  # another's run reads as one that does not exist
            if run_id not in self.engine.runs:
                raise NotFound(f"no run {run_id!r}")
        found = await stagemetrics.gather(self.stage_metrics.read, run_ids)
        return await offload(sum(len(f[1]) for f in found) > INLINE_TASKS, stagemetrics.response, found)
