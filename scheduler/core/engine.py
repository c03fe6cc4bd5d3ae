"""The engine: the thin coordinator of the scheduler's core components.

The engine is the only writer of state, on one thread (the event loop). Each
public method is one use case (submit, complete, heartbeat, ...): it asks the
components that own the state involved and commits their writes as one
transaction; whatever the outside world sees of a change (an ack, an assignment,
an event) is released only after that commit. So a crash loses nothing that was
acknowledged, and an epoch once handed out is never reused.

Where each concern lives (see docs/architecture.md for the whole map):

* :mod:`~scheduler.core.lifecycle`: runs, their DAGs, every task and run transition, events;
* :mod:`~scheduler.core.leases`: grant, renew, expire, and the check every report goes through;
* :mod:`~scheduler.core.reports`: what agents report (registration, heartbeats, completions, logs);
* :mod:`~scheduler.core.registry`: agents, capabilities, clocks, cache index, channels, credits;
* :mod:`~scheduler.core.dispatch`: the pull path (with queues, fairness, delay scheduling, admission);
* :mod:`~scheduler.core.planner`: plan and explain;
* :mod:`~scheduler.core.watch`: run watchers and log followers;
* :mod:`~scheduler.core.residency`: who may download what;
* :mod:`~scheduler.core.zones`: which zones an agent sits in (its certificate, the configuration);
* :mod:`~scheduler.core.checkpoints`: which checkpoint each task resumes from;
* :mod:`~scheduler.core.revocation`: revoked agents (the deny-list) and revoking one.
* :mod:`~scheduler.core.submission`: submit, with run ids and idempotency keys (request ids).

An expired lease requeues the task as a new attempt without counting it against
the task's retries: losing an agent is not the task's fault.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable

from outrider.errors import FailedPrecondition, InvalidArgument, NotFound
from scheduler.core import audit
from scheduler.core.audit import Action, AuditTrail
from scheduler.core.channel import Channel
from scheduler.core.checkpoints import Checkpoints
from scheduler.core.delay import DelayScheduler
from scheduler.core.dispatch import Dispatcher
from scheduler.core.fairness import FairShare
from scheduler.core.leases import LeaseTable, lease_ref
from scheduler.core.lifecycle import StateMachine
from scheduler.core.messages import Capabilities, Checkpoint, ClockSample, Completion, LeaseRef, LogChunk
from scheduler.core.model import AttemptState, Run, RunState, Task, TaskState
from scheduler.core.planner import Planner
from scheduler.core.queues import ReadyQueues
from scheduler.core.registry import AgentRegistry, AgentState
from scheduler.core.reports import LogSink, Reports
from scheduler.core.residency import ResidencyIndex
from scheduler.core.revocation import Revocations
from scheduler.core.spec import PipelineSpec
from scheduler.core.submission import Submissions
from scheduler.core.txn import Journal, Txn
from scheduler.core.views import AgentInfo, Explanation, LogLine, RunEvent, RunStatus, TaskPlan, run_status
from scheduler.core.watch import LogFollower, Watcher, Watchers, replay_then_follow
from scheduler.core.zones import ZoneAuthority, ZoneRules
from scheduler.store.base import Store

log = logging.getLogger(__name__)

#: How often ready tasks are checked for having no feasible agent at all.
INFEASIBLE_CHECK_S = 1.0


class Engine:
    def __init__(
        self,
        store: Store,
        *,
        lease_ttl: float = 15.0,
        heartbeat_interval: float = 3.0,
        placement_wait: float = 5.0,
        max_queue_depth: int = 0,
        infeasible_timeout: float = 600.0,
        max_clock_offset: float = 1.0,
        artifact_exists: Callable[[str], bool] = lambda digest: True,
        log_sink: LogSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        caller: Callable[[], str] = lambda: audit.SCHEDULER,
        zone_rules: ZoneRules | None = None,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.artifact_exists = artifact_exists
        self.log_sink = log_sink
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.caller = caller  # the identity of the RPC being served, for the audit log
        self.journal = Journal(store)
        self.audit = AuditTrail(self.journal, wall, lambda: self.caller())
        self.watchers = Watchers()
        self.queues = ReadyQueues(clock=clock, wall=wall, kick=self._kick)
        self.sm = StateMachine(
            self.watchers, wall=wall, rng=self.rng, on_ready=self.queues.put, on_unready=self.queues.remove
        )
        zones = ZoneAuthority(zone_rules or ZoneRules(), self.audit.note)  # where agents' zones come from
        self.registry = AgentRegistry(zones, max_clock_offset=max_clock_offset, wall=wall, kick=self._kick, clock=clock)
        self.leases = LeaseTable(ttl=lease_ttl, find=self.sm.find)
        self.fairness = FairShare(self.registry.capacity)
        self.delay = DelayScheduler(self.registry, placement_wait=placement_wait, kick=self._kick)
        self.residency = ResidencyIndex()
        self.dispatcher = Dispatcher(
            self.sm,
            self.queues,
            self.registry,
            self.fairness,
            self.delay,
            self.leases,
            self.journal,
            clock=clock,
            wall=wall,
            max_queue_depth=max_queue_depth,
            infeasible_timeout=infeasible_timeout,
            silent_after=2 * heartbeat_interval + 1.0,
        )
        self.reports = Reports(
            self.sm,
            self.registry,
            self.leases,
            self.fairness,
            self.residency,
            self.watchers,
            self.journal,
            clock=clock,
            wall=wall,
            heartbeat_interval=heartbeat_interval,
            artifact_exists=artifact_exists,
            log_sink=log_sink,
            kick=self._kick,
        )
        self.checkpoints = Checkpoints(
            self.sm,
            self.registry,
            self.leases,
            self.residency,
            self.journal,
            wall=wall,
            artifact_exists=artifact_exists,
        )
        self.planner = Planner(
            self.sm,
            self.registry,
            self.queues,
            self.fairness,
            clock=clock,
            wall=wall,
            infeasible_timeout=lambda: self.dispatcher.infeasible_timeout,
        )
        self.revocations = Revocations(self.journal, self.registry, self.reports, self.sm, wall, lambda: self.caller())
        self._last_infeasible_check = 0.0
        self.submissions = Submissions(self)  # submit, with idempotency keys

    # ------------------------------------------------------------------ state, for reading

    @property
    def lease_ttl(self) -> float:
        return self.leases.ttl

    @property
    def runs(self) -> dict[str, Run]:
        return self.sm.runs

    @property
    def agents(self) -> dict[str, AgentState]:
        return self.registry.agents

    @property
    def ready_count(self) -> int:
        return self.queues.count

    def _kick(self) -> None:
        self.dispatcher.kick()

    # ------------------------------------------------------------------ start-up

    def load(self) -> None:
        """Rebuild memory from the database after a (re)start."""
        loaded = self.journal.store.load()
        self.audit.check()  # a broken chain is logged and flagged; the scheduler serves on
        mono = self.clock()
        self.registry.restore(loaded.agents)
        self.revocations.restore(loaded.revoked)
        for output in self.sm.restore(loaded, self.queues.intern):
            self.residency.note(output)
        self.submissions.restore(self.sm.runs)
        for run in self.sm.runs.values():
            for t in run.tasks.values():
                if t.state is TaskState.RUNNING:
                    self.fairness.hold(run, t.needs)
                    self.leases.grace(t, mono)  # a full TTL plus grace for agents to reconnect
                    agent = self.registry.get(t.agent)
                    if agent is not None:
                        self.registry.hold(agent, t)
                elif t.state is TaskState.READY:
                    self.queues.put(run, t)
        log.info(
            "loaded %d runs, %d agents; %d tasks ready, %d leases awaiting their agents",
            len(self.sm.runs),
            len(self.registry.agents),
            self.queues.count + self.queues.backoff,
            len(self.leases),
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.dispatcher.start(loop)

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything in memory is durable (reads wait for it)."""
        return self.journal.barrier()

    # ------------------------------------------------------------------ submissions

    def new_run_id(self) -> str:
        return self.submissions.new_run_id()

    def check_code(self, spec: PipelineSpec) -> None:
        """A pipeline's code bundle must have been uploaded before the pipeline is accepted."""
        if spec.code_digest and not self.artifact_exists(spec.code_digest):
            raise InvalidArgument(
                f"invalid pipeline:\n  code_digest: code bundle {spec.code_digest} has not been uploaded"
            )

    def plan(self, spec: PipelineSpec) -> list[TaskPlan]:
        self.check_code(spec)
        return self.planner.plan(spec)

    async def plan_paced(self, spec: PipelineSpec) -> list[TaskPlan]:
        """:meth:`plan` without holding the event loop for long, however big the pipeline."""
        self.check_code(spec)
        return await self.planner.plan_paced(spec)

    async def submit(
        self, spec: PipelineSpec, submitter: str, strict: bool = False, request_id: str = ""
    ) -> tuple[str, list[str]]:
        """Record a run durably and queue its root tasks; returns (run id, warnings)."""
        run, warnings, _ = await self.submissions.submit(spec, submitter, None, strict, request_id)
        return run.run_id, warnings

    async def submit_and_watch(
        self, spec: PipelineSpec, submitter: str, run_only: bool, strict: bool = False, request_id: str = ""
    ) -> tuple[Run, list[str], Watcher]:
        """Submit, with a watcher registered before any of the run's events exist."""
        run, warnings, watcher = await self.submissions.submit(spec, submitter, run_only, strict, request_id)
        assert watcher is not None
        return run, warnings, watcher

    async def cancel(self, run_id: str) -> Run:
        run = self.sm.run(run_id)
        if run.state is RunState.CANCELLED:
            return run
        if run.terminal:
            raise FailedPrecondition(f"run {run_id} already {run.state.value}; nothing to cancel")
        txn = Txn()
        stopped: dict[str, list[LeaseRef]] = {}
        now = self.wall()

        def stop(txn: Txn, t: Task) -> None:
            stopped.setdefault(t.agent, []).append(lease_ref(t))
            self.reports.end_lease(txn, t, AttemptState.CANCELLED, now, 0, "cancelled by user")

        audit.record(txn, now, self.caller(), Action.CANCEL, run_id)
        self.sm.cancel(txn, run, stop)
        await self.journal.commit(txn)
        for name, refs in stopped.items():
            self.reports.push_cancel(name, refs)
        self._kick()
        return run

    async def retry(self, run_id: str) -> Run:
        run = self.sm.run(run_id)
        if run.state is RunState.RUNNING:
            raise FailedPrecondition(f"run {run_id} is still running; retry it once it has ended")
        if run.state is RunState.SUCCEEDED:
            raise FailedPrecondition(f"run {run_id} succeeded; there is nothing to retry")
        txn = Txn()
        audit.record(txn, self.wall(), self.caller(), Action.RETRY, run_id)
        self.sm.retry(txn, run)
        await self.journal.commit(txn)
        return run

    # ------------------------------------------------------------------ reading

    def run_status(self, run_id: str) -> RunStatus:
        return run_status(self.sm.run(run_id))

    def list_runs(self, state: RunState | None, limit: int) -> list[RunStatus]:
        runs = sorted(self.sm.runs.values(), key=lambda r: r.seq, reverse=True)
        if state is not None:
            runs = [r for r in runs if r.state is state]
        return [run_status(r, with_tasks=False) for r in runs[:limit]]

    def explain(self, run_id: str, name: str) -> Explanation:
        return self.planner.explain(run_id, name)

    def list_agents(self) -> list[AgentInfo]:
        return self.revocations.mark(self.registry.infos())

    def task(self, run_id: str, name: str) -> Task:
        return self.sm.task(run_id, name)

    def watch(self, run_id: str, run_only: bool) -> tuple[Watcher, Run]:
        run = self.sm.run(run_id)
        return self.watchers.watch(run_id, run_only), run

    def follow(self, watcher: Watcher, run: Run, after_seq: int = 0) -> AsyncIterator[RunEvent]:
        """A registered watcher's events: the run's durable history after ``after_seq``, then
        live ones, without gaps or duplicates (see :func:`~scheduler.core.watch.replay_then_follow`)."""
        return replay_then_follow(watcher, run, after_seq, self.barrier, functools.partial(self._history, run.run_id))

    async def _history(self, run_id: str, after: int, limit: int) -> list[RunEvent]:
        rows = await asyncio.to_thread(self.journal.store.events, run_id, after, limit)
        return [RunEvent(r.run_id, r.task, r.state, r.attempt, r.agent, r.detail, r.ts, seq=r.seq) for r in rows]

    def unwatch(self, w: Watcher) -> None:
        self.watchers.unwatch(w)

    def logs(self, run_id: str, name: str, attempt: int, follow: bool) -> tuple[list[LogLine], LogFollower | None]:
        """A task's recorded log lines (one attempt, or all) and, to follow it, a follower.

        Both in one loop turn: nothing can be appended in between, so lines are neither
        lost nor doubled.
        """
        t = self.sm.task(run_id, name)
        if attempt < 0 or attempt > t.attempts:
            raise NotFound(f"task {name} has {t.attempts} attempt(s); no attempt {attempt}")
        attempts = [attempt] if attempt else list(range(1, t.attempts + 1))
        follower = self.watchers.follow(run_id, name) if follow and not t.terminal else None
        backlog = []
        if self.log_sink is not None:
            backlog = [LogLine(a, s, d, ts) for a in attempts for ts, s, d in self.log_sink.read(run_id, name, a)]
        return backlog, follower

    def unfollow_logs(self, f: LogFollower) -> None:
        self.watchers.unfollow(f)

    # ------------------------------------------------------------------ agents (see reports.py)

    def register(
        self,
        name: str,
        identity: str,
        caps: Capabilities,
        clocks: Iterable[ClockSample],
        leases: Iterable[LeaseRef],
        instance_id: str = "",
        peer: str = "",
        cert_zones: frozenset[str] | None = None,
    ) -> list[LeaseRef]:
        """(Re)register an agent; returns the leases it listed that it must stop."""
        return self.reports.register(name, identity, caps, clocks, leases, instance_id, peer, cert_zones)

    def heartbeat(
        self,
        name: str,
        leases: Iterable[LeaseRef],
        clocks: Iterable[ClockSample],
        caps: Capabilities | None = None,
        unhealthy: str = "",
        draining: bool = False,
        cert_zones: frozenset[str] | None = None,
    ) -> list[LeaseRef]:
        """Renew an agent's leases; returns those it no longer holds."""
        return self.reports.heartbeat(name, leases, clocks, caps, unhealthy, draining, cert_zones)

    def drain(self, name: str) -> AgentInfo:
        """An admin asks an agent to drain (no new work; its stages checkpoint and are released)."""
        agent = self.registry.get(name)
        if agent is None:
            raise NotFound(f"no agent {name!r}")
        self.registry.drain(agent)
        self.audit.note(Action.DRAIN, name)  # draining is not durable state: the record alone
        return next(a for a in self.registry.infos() if a.name == name)

    def complete(self, agent_name: str, c: Completion) -> asyncio.Future[None]:
        """Apply the end of an attempt; the future resolves once it is durable."""
        return self.reports.complete(agent_name, c)

    def report_checkpoint(self, agent_name: str, cp: Checkpoint) -> tuple[asyncio.Future[None], str]:
        """Accept a checkpoint from the current lease (see checkpoints.py); the future resolves
        once it is durable, the note says why nothing changed (not newer) or is empty."""
        return self.checkpoints.report(agent_name, cp)

    def append_logs(self, agent_name: str, chunks: Iterable[LogChunk]) -> None:
        self.reports.append_logs(agent_name, chunks)

    def attach(self, name: str, credits: int = 0, peer: str = "") -> Channel:
        return self.registry.attach(name, credits, peer)

    def detach(self, ch: Channel) -> None:
        self.registry.detach(ch)

    def add_credits(self, ch: Channel, n: int) -> None:
        self.registry.add_credits(ch, n)

    # ------------------------------------------------------------------ artifacts

    def may_download(self, agent_name: str, digest: str, cert_zones: frozenset[str] | None = None) -> str | None:
        """None if the agent may receive these bytes; else why not (residency is a hard rule)."""
        why = self.residency.refusal(agent_name, self.registry.zones_of(agent_name, cert_zones), digest)
        if why is not None:
            self.audit.note(Action.RESIDENCY_REFUSAL, digest, "PERMISSION_DENIED", why)
        return why

    def record_artifact(self, digest: str, size: int, kind: str) -> asyncio.Future[None]:
        """An artifact's bytes are now in the artifact store: record it durably."""
        txn = Txn()
        txn.changes.insert_artifacts([(digest, size, kind, self.wall())])
        audit.record(txn, self.wall(), self.caller(), Action.ARTIFACT_COMMIT, digest, detail=f"{kind}, {size} bytes")
        return self.journal.commit(txn)

    # ------------------------------------------------------------------ time

    def tick(self, mono: float | None = None, wall: float | None = None) -> None:
        """One pass of time-driven work: expire leases, end retry backoffs and delay waits."""
        mono = self.clock() if mono is None else mono
        wall = self.wall() if wall is None else wall
        self.reports.expire_due(mono)
        self.queues.release_due(wall)
        self.delay.due(mono)
        if mono - self._last_infeasible_check >= INFEASIBLE_CHECK_S:
            self._last_infeasible_check = mono
            self.dispatcher.fail_infeasible(mono)
