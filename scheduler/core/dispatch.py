"""Dispatch: the pull path. Agents holding credit get the tasks they should run now.

A pass visits only channels holding credit (never a scan of all agents), in a
rotating order. For each, runs are taken in fairness order
(:class:`~scheduler.core.fairness.FairShare`), skipping runs at their concurrency
limit; within a run each distinct Needs is checked against the agent once per
pass (the matcher's static checks, then what is free now), and a queue is scanned
only a bounded way. A task that would run clearly better elsewhere is held back
(:class:`~scheduler.core.delay.DelayScheduler`). What the pass picks is granted
(a new lease, the task RUNNING), committed as one transaction, and only then
pushed down the channels.

Admission control (``max_queue_depth``) and failing tasks that no agent could run
for ``infeasible_timeout`` are here too: both are about what the queues may hold.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from outrider import logfmt
from outrider.errors import ResourceExhausted
from scheduler import matcher
from scheduler.core import tracing
from scheduler.core.channel import Channel
from scheduler.core.delay import DelayScheduler, Worse
from scheduler.core.events import placement_message
from scheduler.core.fairness import FairShare
from scheduler.core.instruments import I
from scheduler.core.leases import LeaseTable, lease_ref
from scheduler.core.lifecycle import StateMachine
from scheduler.core.messages import ArtifactRef, Assignment
from scheduler.core.model import Placement, Run, Task, TaskState
from scheduler.core.queues import ReadyQueues
from scheduler.core.registry import AgentRegistry, AgentState
from scheduler.core.tracing import Tracer
from scheduler.core.txn import Journal, Txn

log = logging.getLogger(__name__)

#: Tasks looked at per ready queue in one pick; a poll never scans everything.
SCAN_PER_QUEUE = 64


class Dispatcher:
    def __init__(
        self,
        sm: StateMachine,
        queues: ReadyQueues,
        registry: AgentRegistry,
        fairness: FairShare,
        delay: DelayScheduler,
        leases: LeaseTable,
        journal: Journal,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        max_queue_depth: int = 0,
        infeasible_timeout: float = 600.0,
        silent_after: float = float("inf"),
    ) -> None:
        self._sm = sm
        self._queues = queues
        self._registry = registry
        self._fairness = fairness
        self._delay = delay
        self._leases = leases
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self.tracer = Tracer(journal, wall=wall, clock=clock, find=sm.find)  # one trace per run (core/tracing.py)
        self.max_queue_depth = max_queue_depth  # admission control; 0: no limit
        self.infeasible_timeout = infeasible_timeout  # fail tasks no agent can run after this long
        self.silent_after = silent_after  # an agent not heard from for this long gets no new work
        self.scheduled = False  # a pass is scheduled for the end of this loop turn
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def kick(self) -> None:
        """Schedule one dispatch pass soon; many kicks in one loop turn make one pass."""
        if not self.scheduled and self._loop is not None:
            self.scheduled = True
            self._loop.call_soon(self.dispatch)

    def admit(self, tasks: int) -> None:
        """Admission control: refuse a pipeline that would take the open tasks past the bound."""
        open_tasks = self._sm.open_tasks
        if self.max_queue_depth and open_tasks + tasks > self.max_queue_depth:
            raise ResourceExhausted(
                f"queue full: {open_tasks} tasks are waiting or running and this pipeline adds "
                f"{tasks}, over the limit of {self.max_queue_depth} (max_queue_depth); "
                "retry once the queue drains"
            )

    # ------------------------------------------------------------------ the pass

    def dispatch(self) -> None:
        """One pass of the pull path: give each agent with credit the tasks it should run."""
        self.scheduled = False
        if not self._queues.count:
            return
        credited = self._registry.credited
        channels = list(credited)
        if not channels:
            return
        # Rotate so that no agent is always served first.
        self._rr = (self._rr + 1) % len(channels)
        channels = channels[self._rr :] + channels[: self._rr]
        txn = Txn()
        sends: list[tuple[Channel, list[Assignment]]] = []
        wall, mono, began = self._wall(), self._clock(), time.perf_counter()
        for ch in channels:
            if not self._queues.count:
                break
            if ch.closed or ch.credits <= 0:
                credited.pop(ch, None)
                continue
            agent = self._registry.agents[ch.agent]
            if not agent.available:  # unhealthy or draining: its credits wait until it is back
                credited.pop(ch, None)
                continue
            if mono - agent.heard_at > self.silent_after:
                continue  # silent past a heartbeat: its link may be down; its credit waits until it is heard

            agent.view.free_slots = ch.credits
            out = []
            memo: dict[int, bool] = {}
            worse: Worse = {}
            while ch.credits > 0 and self._queues.count:
                t = self._pick(agent, memo, worse, mono, wall)
                if t is None:
                    break
                ch.credits -= 1
                out.append(self._grant(txn, t, agent, wall, mono))
            if ch.credits <= 0:
                credited.pop(ch, None)
            if out:
                sends.append((ch, out))
        if not sends:
            return
        for ch, out in sends:
            ch.inflight += len(out)

        def deliver() -> None:
            I.dispatch_latency.observe(time.perf_counter() - began)
            for ch, out in sends:
                ch.inflight -= len(out)
                ch.push(assignments=out)

        def undo() -> None:  # the store refused the grants: the agents never hear of them
            for ch, out in sends:
                ch.inflight -= len(out)
                ch.push()  # wakes a long-poll waiting for them (Channel.drain)

        txn.after(deliver)
        txn.aborted(undo)
        self._journal.commit(txn)

    def _pick(self, agent: AgentState, memo: dict[int, bool], worse: Worse, mono: float, wall: float) -> Task | None:
        """The next task this agent should run now, or None.

        Runs are visited in fairness order; within a run, each distinct Needs is
        checked against the agent once per pass (``memo``), and a queue is scanned only a
        bounded way. A task that would run clearly better elsewhere (its data is
        there, or a preferred agent exists) is skipped until its wait bound passes.
        """
        view = agent.view
        for run in self._fairness.order(self._queues.runs()):
            if run.concurrency and run.running >= run.concurrency:
                continue
            for needs, dq in list(run.queues.items()):
                ok = memo.get(id(needs))  # needs are interned: one object per distinct value
                if ok is None:
                    ok = memo[id(needs)] = matcher.feasible(needs, view)
                if not ok or not matcher.fits_now(needs, view):
                    continue
                while dq and not dq[0].queued:
                    dq.popleft()
                if not dq:
                    del run.queues[needs]
                    continue
                held: Placement | None = None
                for t in itertools.islice(dq, SCAN_PER_QUEUE):
                    if not t.queued:
                        continue
                    if t.placement is held:
                        break  # queued later, same data and preferences: it would wait too
                    if not self._delay.should_wait(t, agent, mono, wall, worse):
                        return t
                    held = t.placement
        return None

    def _grant(self, txn: Txn, t: Task, agent: AgentState, wall: float, mono: float) -> Assignment:
        """Lease ``t`` to ``agent``: a new attempt, RUNNING, and the assignment that says so."""
        run = self._sm.runs[t.run_id]
        self._registry.reserve(agent, t)
        self._queues.remove(run, t)
        self._leases.grant(txn, t, agent.name, agent.clock_uncertainty, wall, mono)
        t.wait_for, t.wait_until = "", 0.0
        self._fairness.hold(run, t.needs)
        self.tracer.granted(t, wall, mono)
        self._sm.transition(txn, run, t, TaskState.RUNNING, message=placement_message(t.placement, agent.view))
        return self._assignment(run, t)

    def _assignment(self, run: Run, t: Task) -> Assignment:
        inputs = []
        for name, ref in t.spec.inputs:
            o = run.tasks[ref.task].outputs[ref.output]
            inputs.append(ArtifactRef(name=name, digest=o.digest, size=o.size, kind=o.kind))
        return Assignment(
            lease=lease_ref(t),
            spec=t.spec,
            inputs=tuple(inputs),
            code_digest=run.spec.code_digest,
            pipeline=run.pipeline,
            traceparent=tracing.traceparent(run.trace_id, t.name, t.attempts),
            lease_ttl_s=self._leases.ttl,
            resume_from=t.resumed_from,  # the latest checkpoint accepted from an earlier attempt
        )

    # ------------------------------------------------------------------ tasks no agent can run

    def fail_infeasible(self, mono: float) -> None:
        """Fail ready tasks that no registered agent could run for ``infeasible_timeout``."""
        for run in list(self._queues.runs()):
            for needs, dq in list(run.queues.items()):
                if self._registry.feasible_somewhere(needs):
                    continue
                for t in list(dq):
                    if t.queued and mono - t.ready_at >= self.infeasible_timeout:
                        self._fail_unplaceable(run, t)

    def _fail_unplaceable(self, run: Run, t: Task) -> None:
        why = "; ".join(matcher.suggest(t.needs, self._registry.views())[:3])
        txn = Txn()
        error = f"no agent could run this task for {self.infeasible_timeout:g}s: {why}"
        log.warning("%s/%s failed: %s", t.run_id, t.name, error, extra=logfmt.about(t.run_id, t.name, 0, run.trace_id))
        self._sm.fail(txn, run, t, error)
        self._journal.commit(txn)
