"""``WatchEvents``, ``Lineage`` and ``Resolve``: the control service's views across runs.

(Their wire conversions are here too, not in :mod:`scheduler.api.wire`, which is at its size limit.)

The :class:`~scheduler.api.control.ControlServicer` hands these three calls here. Each
applies the ownership rules of :mod:`scheduler.api.access`: a submitter sees the events,
lineage and ids of its own runs only (another's are answered as if they did not exist);
an admin sees all. Events without a run (alerts: :mod:`scheduler.core.alerts`) are an admin's only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from outrider.errors import NotFound
from outrider.v1 import control_pb2
from scheduler.api import bounds, wire
from scheduler.api.access import Access, owns, sees_all
from scheduler.auth import current_identity
from scheduler.core import lineage, prefixes
from scheduler.core.engine import Engine
from scheduler.core.events import event_stream
from scheduler.core.lineage import Lineage
from scheduler.core.model import Run
from scheduler.core.views import RunEvent


class Insight:
    def __init__(self, engine: Engine, access: Access) -> None:
        self.engine = engine
        self.access = access

    # -- events

    async def _history(self, run_id: str, after: int, limit: int) -> list[RunEvent]:
        store = self.engine.journal.store
        if run_id:
            rows = await asyncio.to_thread(store.events, run_id, after, limit)
        else:
            rows = await asyncio.to_thread(store.all_events, after, limit)
        return [RunEvent(r.run_id, r.task, r.state, r.attempt, r.agent, r.detail, r.ts, seq=r.seq) for r in rows]

    async def watch_events(self, request: control_pb2.WatchEventsRequest) -> AsyncIterator[control_pb2.RunEvent]:
        after = bounds.integer("after_seq", request.after_seq, 0, bounds.MAX_SEQ)
        run_id = bounds.text("run_id", request.run_id)
        ident = current_identity()
        if run_id:
            self.access.run(run_id)
            if run_id not in self.engine.runs:
                raise NotFound(f"no run {run_id!r}")
        runs = self.engine.runs
        everything = sees_all(ident)

        def visible(ev: RunEvent) -> bool:
            if run_id and ev.run_id != run_id:
                return False
            if everything:
                return True
            run = runs.get(ev.run_id)
            return run is not None and run.submitter == ident.spiffe_id

        async def history(last: int, limit: int) -> list[RunEvent]:
            return await self._history(run_id, last, limit)

        feed = self.engine.watchers.feed
        async for ev in event_stream(feed, after, request.follow, self.engine.barrier, history, visible):
            yield event_to_proto(ev)

    # -- lineage

    async def lineage(self, request: control_pb2.LineageRequest) -> control_pb2.LineageResponse:
        digest = bounds.text("digest", request.digest)
        max_depth = bounds.integer("max_depth", request.max_depth, 0, lineage.MAX_DEPTH)
        max_steps = bounds.integer("max_steps", request.max_steps, 0, lineage.MAX_STEPS)
        await self.engine.barrier()
        ident = current_identity()
        found = lineage.walk(
            self.engine.runs,
            digest,
            down=request.down,
            visible=lambda run: owns(ident, run),
            max_depth=max_depth,
            max_steps=max_steps,
        )
        return lineage_to_proto(found)

    # -- prefixes

    async def resolve(self, request: control_pb2.ResolveRequest) -> control_pb2.ResolveResponse:
        kind = bounds.text("kind", request.kind)
        text = bounds.text("prefix", request.prefix)
        await self.engine.barrier()
        ident = current_identity()
        store = self.engine.journal.store
        runs = self.engine.runs

        async def lookup(prefix: str, after: str, limit: int) -> list[str]:
            return await asyncio.to_thread(store.with_prefix, kind, prefix, after, limit)

        if kind == "run":

            def visible(key: str) -> bool:
                run = runs.get(key)
                return run is not None and owns(ident, run)

        else:
            reach = None if sees_all(ident) else _reachable(r for r in runs.values() if owns(ident, r))

            def visible(key: str) -> bool:
                return reach is None or key in reach

        return control_pb2.ResolveResponse(full=await prefixes.resolve(kind, text, lookup, visible))


def _reachable(runs: Iterable[Run]) -> set[str]:
    """Every digest the runs reach: code bundles, outputs, checkpoints (as Access.readable)."""
    out: set[str] = set()
    for run in runs:
        if run.spec.code_digest:
            out.add(run.spec.code_digest)
        for t in run.tasks.values():
            out.update(o.digest for o in t.outputs.values())
            if t.checkpoint is not None:
                out.add(t.checkpoint.digest)
            out.update(a.resumed_from.digest for a in t.history if a.resumed_from is not None)
    return out


def event_to_proto(ev: RunEvent) -> control_pb2.RunEvent:
    """One event of ``WatchEvents``: as in a run's watch, without a run snapshot."""
    msg = wire.run_event_to_proto(ev)
    msg.ClearField("snapshot")
    return msg


def lineage_to_proto(lin: Lineage) -> control_pb2.LineageResponse:
    return control_pb2.LineageResponse(
        digest=lin.digest,
        direction=lin.direction,
        steps=[
            control_pb2.LineageStep(
                run_id=s.run_id,
                pipeline=s.pipeline,
                task=s.task,
                attempt=s.attempt,
                agent=s.agent,
                command=list(s.command),
                code_digest=s.code_digest,
                inputs=[wire.ref_to_proto(a) for a in s.inputs],
                outputs=[wire.ref_to_proto(a) for a in s.outputs],
                depth=s.depth,
                finished_at=s.finished_at,
                state=s.state,
            )
            for s in lin.steps
        ],
        raw_inputs=lin.raw_inputs,
        truncated=lin.truncated,
    )
