"""Submissions: turning a pipeline spec into a durable run, exactly once per request.

A client retries a submit whose answer it never got: the leader may have died after
the commit and before the reply (docs/ha.md), or the link dropped. Without a key that
retry would start a second run. So every submission may carry the client's *request
id* (``SubmitRequest.request_id``; :class:`outrider.client.Client` sends a fresh one
per call and reuses it across its failover retries). The key is stored with the run
(``runs.submit_key``, unique per submitter) and indexed here in memory, rebuilt at
start from the runs; a submission whose key names a run of the same submitter
answers with that run instead of making another, and one whose pipeline differs from
that run's is refused. Two submissions with one key at once: the second waits for the
first and answers with its run; if the first made none (refused, or its caller hung up),
the second tries itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from typing import TYPE_CHECKING, TypeVar

from outrider.errors import FailedPrecondition, InvalidArgument
from scheduler.core import audit
from scheduler.core.audit import Action
from scheduler.core.model import Run, Task, TaskState
from scheduler.core.pacing import INLINE_TASKS, Pacer, offload
from scheduler.core.planner import static_needs
from scheduler.core.queues import ReadyQueues
from scheduler.core.spec import PipelineSpec
from scheduler.core.txn import Txn
from scheduler.core.watch import Watcher

if TYPE_CHECKING:
    from scheduler.core.engine import Engine

__all__ = ["MAX_REQUEST_ID", "Submissions", "check_request_id"]

#: The longest request id accepted; a UUID's hex form is 32 characters.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")
_V = TypeVar("_V")


def check_request_id(request_id: str) -> str:
    """A request id as given, or an :class:`InvalidArgument` that names what is wrong with it."""
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id: {len(request_id)} characters, at most {MAX_REQUEST_ID}")
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("request_id: only letters, digits and . _ : - are allowed")
    return request_id


class Submissions:
    """Submit use cases of the engine, with run ids handed out and idempotency keys kept."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reserved: set[str] = set()  # run ids handed out to submissions still being built
        self._keys: dict[tuple[str, str], str] = {}  # (submitter, request id) -> run id
        self._pending: dict[tuple[str, str], asyncio.Future[Run | None]] = {}  # keys of submissions in flight

    def restore(self, runs: dict[str, Run]) -> None:
        self._keys = {(r.submitter, r.submit_key): r.run_id for r in runs.values() if r.submit_key}

    def new_run_id(self) -> str:
        """Time-sortable and unique: milliseconds, then random bits, redrawn on a clash."""
        e = self.engine
        while True:
            run_id = f"run-{int(e.wall() * 1000):x}-{e.rng.getrandbits(24):06x}"
            if run_id not in e.sm.runs and run_id not in self._reserved:
                return run_id

    async def submit(
        self, spec: PipelineSpec, submitter: str, watch: bool | None, strict: bool, request_id: str = ""
    ) -> tuple[Run, list[str], Watcher | None]:
        """Record a run durably and queue its root tasks (``watch``: register a watcher first,
        run-level events only if True). With a request id already used by ``submitter``, the
        run it made (nothing new is recorded)."""
        key = (submitter, check_request_id(request_id))
        if request_id:
            earlier = await self._earlier(key, spec)
            if earlier is not None:
                w = None if watch is None else self.engine.watchers.watch(earlier.run_id, watch)
                return earlier, [], w
            future: asyncio.Future[Run | None] = asyncio.get_running_loop().create_future()
            self._pending[key] = future
        try:
            return await self._submit(spec, submitter, watch, strict, request_id)
        finally:
            if request_id:  # waiters get the run (even if this caller hung up), or None: none was made
                self._pending.pop(key, None)
                made = self._keys.get(key)
                future.set_result(None if made is None else self.engine.sm.runs.get(made))

    async def _earlier(self, key: tuple[str, str], spec: PipelineSpec) -> Run | None:
        """The run an earlier submission with this key made (waiting for one in flight), if any."""
        while (pending := self._pending.get(key)) is not None:
            run: Run | None = await asyncio.shield(pending)
            if run is not None:
                break
        else:  # none in flight (any more): one that made a run before, if any
            run_id = self._keys.get(key)
            if run_id is None or run_id not in self.engine.sm.runs:
                return None
            run = self.engine.sm.runs[run_id]
        if _canonical(run.spec) != _canonical(spec):
            raise FailedPrecondition(
                f"request_id {key[1]} was already used for run {run.run_id} with a different pipeline; "
                "a new submission needs a new request id"
            )
        return run

    async def _submit(
        self, spec: PipelineSpec, submitter: str, watch: bool | None, strict: bool, request_id: str
    ) -> tuple[Run, list[str], Watcher | None]:
        e = self.engine
        e.check_code(spec)
        e.dispatcher.admit(len(spec.tasks))
        # A big pipeline's pure work (its static needs, its tasks) is done on a worker thread,
        # so that the loop keeps serving everyone else (scheduler.core.pacing).
        big = len(spec.tasks) > INLINE_TASKS
        intern = e.queues.intern
        base = {ts.name: intern(ts.requires) for ts in spec.tasks}
        static, conflicts = await offload(big, static_needs, spec, base)
        warnings = e.planner.warnings_of(static, conflicts)
        if strict and warnings:
            raise FailedPrecondition("refused (strict): " + " | ".join(warnings))
        run_id = self.new_run_id()
        self._reserved.add(run_id)
        try:
            trace_id = os.urandom(16).hex()
            run = await offload(big, e.sm.build, run_id, spec, submitter, e.wall(), trace_id, 0, intern)
        finally:
            self._reserved.discard(run_id)
        e.dispatcher.admit(len(spec.tasks))  # again: other submissions may have come in meanwhile
        run.seq = e.sm.seq + 1
        run.submit_key = request_id
        watcher = None if watch is None else e.watchers.watch(run.run_id, watch)
        txn = Txn()
        audit.record(txn, e.wall(), submitter, Action.SUBMIT, run.run_id)
        roots = e.sm.create(txn, run, queue=not big)
        if request_id:  # known from the moment the run is: a caller hanging up from here on leaves it made
            self._keys[(submitter, request_id)] = run.run_id
        try:
            durable = e.journal.commit(txn)
            if big:  # queued after the run's insert, so every grant is committed after it too;
                # shielded: a submitter that hangs up must not leave tasks out of the queues
                await asyncio.shield(asyncio.ensure_future(_queue_paced(e.queues, run, roots)))
            await durable
        except BaseException:
            if watcher is not None:
                e.watchers.unwatch(watcher)
            raise
        return run, warnings, watcher


def _canonical(spec: PipelineSpec) -> PipelineSpec:
    """``spec`` with the parts that come from protobuf maps (inputs, env, secret env) in name
    order: a map's order on the wire is arbitrary, so one pipeline decodes in several orders."""

    def by_name(pairs: tuple[tuple[str, _V], ...]) -> tuple[tuple[str, _V], ...]:
        return tuple(sorted(pairs, key=lambda kv: kv[0]))

    tasks = tuple(
        dataclasses.replace(t, inputs=by_name(t.inputs), env=by_name(t.env), secret_env=by_name(t.secret_env))
        for t in spec.tasks
    )
    return dataclasses.replace(spec, tasks=tasks)


async def _queue_paced(queues: ReadyQueues, run: Run, roots: list[Task]) -> None:
    pacer = Pacer()
    for t in roots:
        if t.state is TaskState.READY:  # still (a cancel may have come in between)
            queues.put(run, t)
        await pacer.step()
