"""The scheduler's engine: in-memory state, leases, dispatch and the DAG.

The engine is the only writer of state. Every change is applied in memory, then
queued to the :class:`~scheduler.store.Store`; whatever the outside world sees
of a change (an ack to a client, an assignment to an agent, an event to a
watcher) is released only after the commit that recorded it. So a crash loses
nothing that was acknowledged, and an epoch once handed out is never reused.

The task and run lifecycles are drawn in :mod:`scheduler.model`.

Leases: each attempt of a task is a lease whose epoch is the attempt number.
Heartbeats renew it; it expires on this process's monotonic clock (padded by
the agent's measured clock uncertainty). A report carrying any other epoch is
refused with :class:`~outrider.errors.StaleEpoch` (``ABORTED``) and changes
nothing. An expired lease requeues the task as a new attempt without counting
it against the task's retries: losing an agent is not the task's fault.

Dispatch is pull: agents hold credits (free slots) on a :class:`Channel`, and
as soon as a task is ready and an agent with credit fits it, the assignment is
committed and pushed down that agent's channel.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from outrider.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, StaleEpoch
from outrider.v1 import agent_pb2, common_pb2, control_pb2
from scheduler import convert, matcher
from scheduler.artifacts import is_digest
from scheduler.model import (
    NO_PLACEMENT,
    RETRYABLE_TASK_STATES,
    Expr,
    Needs,
    Output,
    Placement,
    Run,
    RunState,
    Task,
    TaskState,
    intersect_residency,
    needs_of,
    upstream_of,
)
from scheduler.store import Batch, Store

log = logging.getLogger(__name__)

OUTCOME_SUCCEEDED = "succeeded"
OUTCOMES = frozenset({"succeeded", "failed", "timeout", "cancelled"})
MAX_BACKOFF_S = 300.0
#: Tasks looked at per ready queue in one pick; a poll never scans everything.
SCAN_PER_QUEUE = 64
#: How often ready tasks are checked for having no feasible agent at all.
INFEASIBLE_CHECK_S = 1.0


def backoff_delay(base: float, failures: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base·2^(failures-1), capped, times U[0.5, 1).

    The jitter keeps many tasks that failed together (a flaky shared dependency)
    from retrying in lockstep; the floor of 0.5 keeps the backoff meaningful.
    """
    if base <= 0:
        return 0.0
    delay = min(MAX_BACKOFF_S, base * (2 ** max(0, failures - 1)))
    return delay * (0.5 + rng.random() / 2)


class Channel:
    """One way to reach an agent: its work stream, or one unary long-poll.

    Holds the agent's credits (free slots it asked work for) and the messages
    waiting to go down. Messages queued together leave as one SchedulerMessage.
    """

    def __init__(self, agent: str, credits: int = 0) -> None:
        self.agent = agent
        self.credits = credits
        self.closed = False
        self.inflight = 0  # assignments committed-pending for this channel
        self._assignments: list[agent_pb2.Assignment] = []
        self._acks: list[agent_pb2.CompletionAck] = []
        self._cancel: list[common_pb2.LeaseRef] = []
        self._heartbeat: agent_pb2.HeartbeatResponse | None = None
        self._event = asyncio.Event()

    def push(
        self,
        assignments: Iterable[agent_pb2.Assignment] = (),
        acks: Iterable[agent_pb2.CompletionAck] = (),
        cancel: Iterable[common_pb2.LeaseRef] = (),
        heartbeat: agent_pb2.HeartbeatResponse | None = None,
    ) -> None:
        self._assignments.extend(assignments)
        self._acks.extend(acks)
        self._cancel.extend(cancel)
        if heartbeat is not None:
            self._heartbeat = heartbeat
        self._event.set()

    def has_assignments(self) -> bool:
        return bool(self._assignments)

    def take(self) -> agent_pb2.SchedulerMessage:
        msg = agent_pb2.SchedulerMessage(assignments=self._assignments, acks=self._acks, cancel=self._cancel)
        if self._heartbeat is not None:
            msg.heartbeat.CopyFrom(self._heartbeat)
        self._assignments, self._acks, self._cancel, self._heartbeat = [], [], [], None
        self._event.clear()
        return msg

    async def next_message(self) -> agent_pb2.SchedulerMessage | None:
        """Wait for something to send; None once the channel is closed and drained."""
        while True:
            if self._assignments or self._acks or self._cancel or self._heartbeat is not None:
                return self.take()
            if self.closed:
                return None
            await self._event.wait()
            self._event.clear()

    async def wait_assignments(self, timeout: float) -> None:
        """Wait until assignments arrive or ``timeout`` passes (a unary long-poll)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._assignments and (left := end - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                pass
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


@dataclass(eq=False)
class AgentState:
    name: str
    identity: str
    caps: common_pb2.Capabilities
    view: matcher.AgentView
    registered_at: float
    last_seen: float
    clocks: list[common_pb2.ClockSample] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    running: set[tuple[str, str]] = field(default_factory=set)
    sched_offset: float = 0.0  # add to the agent's wall clock to get ours (from its "scheduler" sample)

    @property
    def connected(self) -> bool:
        return bool(self.channels)

    @property
    def clock_uncertainty(self) -> float:
        return min((c.uncertainty_s for c in self.clocks), default=0.0)


@dataclass(eq=False)
class Watcher:
    run_id: str
    run_only: bool
    queue: asyncio.Queue[control_pb2.RunEvent] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class LogFollower:
    run_id: str
    task: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


def view_from_caps(name: str, caps: common_pb2.Capabilities) -> matcher.AgentView:
    return matcher.AgentView(
        name=name,
        cpus=float(caps.cpu_cores),
        memory=caps.memory_bytes,
        disk=caps.disk_free_bytes,
        gpus=len(caps.gpus),
        labels=dict(caps.labels),
        gpu_models=tuple(g.model for g in caps.gpus),
        gpu_free_memory=tuple(g.memory_free_bytes or g.memory_bytes for g in caps.gpus),
        zones=frozenset(caps.zones),
        bandwidth_bps=caps.bandwidth_bps,
        cached={a.digest: a.size for a in caps.cached},
    )


def clock_skew(samples: Iterable[common_pb2.ClockSample]) -> float:
    """The worst |offset| + uncertainty over an agent's clock samples."""
    return max((abs(s.offset_s) + s.uncertainty_s for s in samples), default=0.0)


def _zones_of(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(z for z in text.split(",") if z)


class Engine:
    """All scheduler state and every transition. Single-threaded (the event loop)."""

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
        log_sink: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.lease_ttl = lease_ttl
        self.heartbeat_interval = heartbeat_interval
        self.placement_wait = placement_wait          # delay scheduling bound
        self.max_queue_depth = max_queue_depth        # admission control; 0: no limit
        self.infeasible_timeout = infeasible_timeout  # fail tasks no agent can run after this long
        self.max_clock_offset = max_clock_offset      # past this an agent is clock_suspect
        self.artifact_exists = artifact_exists
        self.log_sink = log_sink
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.runs: dict[str, Run] = {}
        self.agents: dict[str, AgentState] = {}
        # Ready tasks live in their run's queues (Run.queues); these index them.
        self.ready_count = 0
        self._ready_runs: set[str] = set()
        self._open_tasks = 0  # tasks not yet terminal, for admission control
        # Fair share (dominant resource fairness): resources each tenant holds now.
        self._tenant_usage: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
        self._tenant_served: dict[str, int] = {}  # tenant -> sequence number of its last grant
        self._capacity = [0.0, 0.0, 0.0]  # cpus, memory, gpus of connected agents
        self._credited: dict[Channel, None] = {}  # channels holding credit, in arrival order
        self._needs_pool: dict[Needs, Needs] = {}  # one instance per distinct Needs
        self._placement_pool: dict[Placement, Placement] = {}
        self._preferred_cache: dict[tuple[int, Any], tuple[int, str]] = {}
        # Best-agent caches expire when what they depend on changes: the agents and their
        # labels (connect, disconnect, new capabilities) or, for tasks with inputs, the caches.
        self._labels_version = 0
        self._digest_version: dict[str, int] = collections.defaultdict(int)  # holders of a digest changed
        self._best_cache: dict[tuple[int, Placement], tuple[tuple[int, tuple[int, ...]], float, str]] = {}
        self._grants = 0
        # Data locality: which agents hold which artifact in their cache.
        self._cache_index: dict[str, set[str]] = collections.defaultdict(set)
        self.artifact_residency: dict[str, frozenset[str] | None] = {}
        self._wakeups: list[float] = []  # monotonic times a delay-scheduling wait ends
        self._last_infeasible_check = 0.0
        self._agents_version = 0
        self._feasible_memo: dict[Needs, tuple[int, bool]] = {}
        self._delayed: list[tuple[float, str, str]] = []  # (not_before wall, run, task)
        self._leases: list[tuple[float, str, str, int]] = []  # (expires mono, run, task, epoch)
        self._watchers: dict[str, set[Watcher]] = {}
        self._followers: dict[tuple[str, str], set[LogFollower]] = {}
        self._seq = 0
        self._kick_scheduled = False
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ start-up

    def load(self) -> None:
        """Rebuild memory from the database after a (re)start."""
        loaded = self.store.load()
        now = self.clock()
        for row in loaded.agents:
            caps = common_pb2.Capabilities.FromString(row["capabilities"])
            self.agents[row["name"]] = AgentState(
                name=row["name"], identity=row["identity"], caps=caps,
                view=view_from_caps(row["name"], caps),
                registered_at=row["registered_at"], last_seen=row["last_seen"],
            )
            self.agents[row["name"]].view.connected = False
        for row in loaded.runs:
            spec = common_pb2.PipelineSpec.FromString(row["spec"])
            run = self._build_run(row["run_id"], spec, row["submitter"], row["created_at"], row["trace_id"], row["seq"])
            run.state = RunState(row["state"])
            run.finished_at = row["finished_at"]
            self.runs[run.run_id] = run
            self._seq = max(self._seq, run.seq)
        for row in loaded.tasks:
            run = self.runs[row["run_id"]]
            t = run.tasks[row["name"]]
            t.state = TaskState(row["state"])
            t.attempts, t.failures, t.agent = row["attempts"], row["failures"], row["agent"]
            t.error, t.exit_code = row["error"], row["exit_code"]
            t.started_at, t.finished_at, t.not_before = row["started_at"], row["finished_at"], row["not_before"]
        for row in loaded.outputs:
            t = self.runs[row["run_id"]].tasks[row["task"]]
            o = Output(row["name"], row["digest"], row["size"], row["kind"], _zones_of(row["residency"]))
            t.outputs[row["name"]] = o
            self._note_artifact(o)
        for run in self.runs.values():
            run.unfinished = sum(1 for t in run.tasks.values() if not t.terminal)
            self._open_tasks += run.unfinished
            for t in run.tasks.values():
                if t.state is TaskState.RUNNING:
                    self._hold(run, t)
                    # Give agents a full TTL plus grace to reconnect and claim their leases.
                    t.lease_expires = now + 2 * self.lease_ttl
                    t.leased_at = now
                    heapq.heappush(self._leases, (t.lease_expires, t.run_id, t.name, t.attempts))
                    agent = self.agents.get(t.agent)
                    if agent is not None:
                        matcher.hold(agent.view, t.needs)
                        agent.running.add(t.key)
                elif t.state is TaskState.READY:
                    self._enqueue(t)
        log.info(
            "loaded %d runs, %d agents; %d tasks ready, %d leases awaiting their agents",
            len(self.runs), len(self.agents), self.ready_count + len(self._delayed), len(self._leases),
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ------------------------------------------------------------------ helpers

    def _build_run(
        self, run_id: str, spec: common_pb2.PipelineSpec, submitter: str, created_at: float, trace_id: str, seq: int,
        base: dict[str, Needs] | None = None,
    ) -> Run:
        run = Run(run_id=run_id, pipeline=spec.name, spec=spec, submitter=submitter,
                  created_at=created_at, trace_id=trace_id, seq=seq, priority=spec.priority,
                  concurrency=spec.concurrency, tenant=spec.tenant or submitter)
        for order, ts in enumerate(spec.tasks):
            needs = base[ts.name] if base is not None else self._intern(needs_of(ts))
            run.tasks[ts.name] = Task(run_id=run_id, name=ts.name, spec=ts, needs=needs, spec_needs=needs,
                                      order=order, upstream=upstream_of(ts))
        for t in run.tasks.values():
            for up in t.upstream:
                run.tasks[up].downstream.append(t.name)
        run.unfinished = len(run.tasks)
        return run

    def _run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def _commit(self, batch: Batch, after: list[Callable[[], None]] | None = None) -> asyncio.Future[None]:
        fut = self.store.commit(batch)
        if after:
            def _done(_: asyncio.Future[None]) -> None:
                for cb in after:
                    cb()
            fut.add_done_callback(_done)
        return fut

    def _kick(self) -> None:
        """Schedule one dispatch pass soon; many kicks in one loop turn make one pass."""
        if not self._kick_scheduled and self._loop is not None:
            self._kick_scheduled = True
            self._loop.call_soon(self._dispatch)

    def _enqueue(self, t: Task) -> None:
        """Put a READY task where dispatch finds it: its run's queue, or the backoff heap."""
        if t.not_before > self.wall():
            heapq.heappush(self._delayed, (t.not_before, t.run_id, t.name))
        else:
            self._queue(t)

    def _queue(self, t: Task) -> None:
        run = self.runs[t.run_id]
        if t.queued:
            return
        # Now that the inputs exist, the effective residency and the data are known.
        t.needs = self._intern(self._effective_needs(run, t))
        t.placement = self._placement_of(run, t)
        t.ready_at = self.clock()
        t.wait_for, t.wait_until = "", 0.0
        dq = run.queues.get(t.needs)
        if dq is None:
            dq = run.queues[t.needs] = collections.deque()
        dq.append(t)
        t.queued = True
        run.queued += 1
        self.ready_count += 1
        self._ready_runs.add(run.run_id)
        self._kick()

    def _intern(self, needs: Needs) -> Needs:
        return self._needs_pool.setdefault(needs, needs)

    def _unqueue(self, t: Task) -> None:
        """Take a task out of the ready queues (its deque entry is dropped lazily)."""
        if not t.queued:
            return
        t.queued = False
        run = self.runs[t.run_id]
        run.queued -= 1
        self.ready_count -= 1
        if run.queued == 0:
            run.queues.clear()
            self._ready_runs.discard(run.run_id)

    def _effective_needs(self, run: Run, t: Task) -> Needs:
        """The task's needs with its residency narrowed by its inputs' (outputs carry theirs)."""
        base = t.spec_needs or needs_of(t.spec)
        residency = base.residency
        for ref in t.spec.inputs.values():
            up, _, out = ref.partition(".")
            o = run.tasks[up].outputs.get(out)
            if o is not None:
                residency = intersect_residency(residency, o.residency)
        return base if residency == base.residency else dataclasses.replace(base, residency=residency)

    def _placement_of(self, run: Run, t: Task) -> Placement:
        inputs = []
        for ref in t.spec.inputs.values():
            up, _, out = ref.partition(".")
            o = run.tasks[up].outputs.get(out)
            if o is not None:
                inputs.append((o.digest, o.size))
        affinities = tuple((Expr(a.expr.key, a.expr.op, tuple(a.expr.values)), a.weight) for a in t.spec.affinities)
        if not inputs and not affinities:
            return NO_PLACEMENT
        placement = Placement(tuple(inputs), affinities)
        if not inputs:  # preferences only: shared by the run's alike tasks, so share one object
            if len(self._placement_pool) > 100_000:
                self._placement_pool.clear()
            placement = self._placement_pool.setdefault(placement, placement)
        return placement

    def _hold(self, run: Run, t: Task) -> None:
        """Count a leased task against its run's concurrency and its tenant's share."""
        self._grants += 1
        self._tenant_served[run.tenant] = self._grants
        run.running += 1
        u = self._tenant_usage[run.tenant]
        u[0] += t.needs.cpus
        u[1] += t.needs.memory
        u[2] += t.needs.gpus

    def _unhold(self, run: Run, t: Task) -> None:
        run.running = max(0, run.running - 1)
        u = self._tenant_usage[run.tenant]
        u[0] = max(0.0, u[0] - t.needs.cpus)
        u[1] = max(0.0, u[1] - t.needs.memory)
        u[2] = max(0.0, u[2] - t.needs.gpus)

    def dominant_share(self, tenant: str) -> float:
        """Dominant resource fairness: the tenant's largest share of any resource in use."""
        u = self._tenant_usage.get(tenant)
        if u is None:
            return 0.0
        return max((used / total for used, total in zip(u, self._capacity) if total > 0), default=0.0)

    def _release(self, t: Task) -> None:
        agent = self.agents.get(t.agent)
        if agent is None or t.key not in agent.running:
            return
        self._unhold(self.runs[t.run_id], t)
        agent.running.discard(t.key)
        matcher.unhold(agent.view, t.needs)

    def _event(
        self, batch: Batch, after: list[Callable[[], None]], run: Run, task: str, state: str,
        attempt: int = 0, agent: str = "", message: str = "",
    ) -> None:
        ts = self.wall()
        batch.event(ts, run.run_id, task, state, attempt, agent, message)
        watchers = self._watchers.get(run.run_id)
        # Build the message only if someone will get it (run-only watchers skip task events).
        if watchers and (not task or any(not w.run_only for w in watchers)):
            ev = control_pb2.RunEvent(run_id=run.run_id, task=task, state=state, attempt=attempt,
                                      agent=agent, message=message, ts=ts)
            after.append(lambda: self._publish(run, ev))

    def _publish(self, run: Run, ev: control_pb2.RunEvent) -> None:
        if not ev.task and run.terminal:
            ev.snapshot.CopyFrom(convert.run_status(run))  # the last event carries the outcome
        for w in self._watchers.get(run.run_id, ()):
            if w.run_only and ev.task:
                continue
            w.queue.put_nowait(ev)

    def _set_terminal(self, run: Run, t: Task, state: TaskState, batch: Batch, after: list[Callable[[], None]],
                      message: str = "") -> None:
        """Make a task terminal; when it was the run's last, end the run (after the task's event)."""
        t.state = state
        t.finished_at = t.finished_at or self.wall()
        run.unfinished -= 1
        self._open_tasks -= 1
        batch.update_task(t)
        self._event(batch, after, run, t.name, state.value, t.attempts, t.agent, message)
        if (run.run_id, t.name) in self._followers:
            after.append(lambda: self._close_followers(run.run_id, t.name))
        if run.unfinished == 0 and run.state is RunState.RUNNING:
            failed = any(x.state is not TaskState.SUCCEEDED for x in run.tasks.values())
            run.state = RunState.FAILED if failed else RunState.SUCCEEDED
            run.finished_at = self.wall()
            batch.update_run(run)
            self._event(batch, after, run, "", run.state.value, message=f"run {run.state.value}")

    def _mark_ready_if_unblocked(self, run: Run, t: Task, batch: Batch, after: list[Callable[[], None]]) -> None:
        if t.state is TaskState.PENDING and all(run.tasks[u].state is TaskState.SUCCEEDED for u in t.upstream):
            t.state = TaskState.READY
            t.not_before = 0.0
            batch.update_task(t)
            self._event(batch, after, run, t.name, t.state.value)
            self._enqueue(t)

    def _fail_downstream(self, run: Run, t: Task, batch: Batch, after: list[Callable[[], None]]) -> None:
        stack = list(t.downstream)
        while stack:
            d = run.tasks[stack.pop()]
            if d.state is TaskState.PENDING:
                d.error = f"upstream task {t.name!r} failed"
                self._set_terminal(run, d, TaskState.UPSTREAM_FAILED, batch, after, d.error)
                stack.extend(d.downstream)

    # ------------------------------------------------------------------ submissions

    def new_run_id(self) -> str:
        """Time-sortable and unique: milliseconds, then random bits, redrawn on a clash."""
        while True:
            run_id = f"run-{int(self.wall() * 1000):x}-{self.rng.getrandbits(24):06x}"
            if run_id not in self.runs:
                return run_id

    def check_spec(self, spec: common_pb2.PipelineSpec) -> None:
        from outrider.pipeline import validate_proto  # the one validator, shared with the client

        problems = validate_proto(spec)
        if spec.code_digest and not self.artifact_exists(spec.code_digest):
            problems.append(f"code_digest: code bundle {spec.code_digest} has not been uploaded")
        if problems:
            raise InvalidArgument("invalid pipeline:\n  " + "\n  ".join(problems))

    async def submit(self, spec: common_pb2.PipelineSpec, submitter: str, strict: bool = False) -> tuple[str, list[str]]:
        """Record a run durably and queue its root tasks; returns (run id, warnings)."""
        run, warnings, _ = await self._submit(spec, submitter, None, strict)
        return run.run_id, warnings

    async def submit_and_watch(
        self, spec: common_pb2.PipelineSpec, submitter: str, run_only: bool, strict: bool = False
    ) -> tuple[Run, list[str], Watcher]:
        """Submit, with a watcher registered before any of the run's events exist."""
        run, warnings, watcher = await self._submit(spec, submitter, run_only, strict)
        assert watcher is not None
        return run, warnings, watcher

    async def _submit(
        self, spec: common_pb2.PipelineSpec, submitter: str, watch: bool | None, strict: bool = False
    ) -> tuple[Run, list[str], Watcher | None]:
        self.check_spec(spec)
        if self.max_queue_depth and self._open_tasks + len(spec.tasks) > self.max_queue_depth:
            raise ResourceExhausted(
                f"queue full: {self._open_tasks} tasks are waiting or running and this pipeline adds "
                f"{len(spec.tasks)}, over the limit of {self.max_queue_depth} (max_queue_depth); "
                "retry once the queue drains"
            )
        base = {ts.name: self._intern(needs_of(ts)) for ts in spec.tasks}
        static, conflicts = self.static_needs(spec, base)
        warnings = []
        for name, needs in static.items():
            if name in conflicts:
                warnings.append(f"task {name!r}: residency conflict: {'; '.join(conflicts[name])}")
            elif self.agents and not self._feasible_somewhere(needs):
                views = [a.view for a in self.agents.values()]
                warnings.append(f"task {name!r}: no registered agent can run it: "
                                + "; ".join(matcher.suggest(needs, views)[:3]))
        if strict and warnings:
            raise FailedPrecondition("refused (strict): " + " | ".join(warnings))
        self._seq += 1
        run = self._build_run(self.new_run_id(), spec, submitter, self.wall(), os.urandom(16).hex(), self._seq,
                              base)
        self.runs[run.run_id] = run
        self._open_tasks += len(run.tasks)
        watcher = None
        if watch is not None:
            watcher = Watcher(run.run_id, watch)
            self._watchers.setdefault(run.run_id, set()).add(watcher)
        batch, after = Batch(), []
        # Tasks with no upstream are ready from the start: they are inserted as such, and
        # their "ready" events recorded in one statement (a 10,000-task sweep is one
        # INSERT of tasks and one of events, not 20,000 updates).
        roots = [t for t in run.tasks.values() if not t.upstream]
        for t in roots:
            t.state = TaskState.READY
        batch.insert_run(run)
        self._event(batch, after, run, "", RunState.RUNNING.value, message=f"submitted by {submitter}")
        now = self.wall()
        batch.events([(now, run.run_id, t.name, TaskState.READY.value, 0, "", "") for t in roots])
        watchers = self._watchers.get(run.run_id)
        if watchers and any(not w.run_only for w in watchers):
            evs = [control_pb2.RunEvent(run_id=run.run_id, task=t.name, state=TaskState.READY.value, ts=now)
                   for t in roots]
            after.append(lambda: [self._publish(run, ev) for ev in evs])
        for t in roots:
            self._enqueue(t)
        try:
            await self._commit(batch, after)
        except BaseException:
            if watcher is not None:
                self.unwatch(watcher)
            raise
        return run, warnings, watcher

    # ------------------------------------------------------------------ placement explanations

    def static_needs(
        self, spec: common_pb2.PipelineSpec, base: dict[str, Needs] | None = None
    ) -> tuple[dict[str, Needs], dict[str, list[str]]]:
        """Each task's needs as far as they are known before it runs: its residency is
        narrowed through the DAG by its inputs' producers'. Also returns, per task whose
        residency ends up empty, the inputs that conflict."""
        by_name = {ts.name: ts for ts in spec.tasks}
        indegree = {name: 0 for name in by_name}
        users: dict[str, list[str]] = collections.defaultdict(list)
        for ts in spec.tasks:
            for up in upstream_of(ts):
                indegree[ts.name] += 1
                users[up].append(ts.name)
        order = [n for n, d in indegree.items() if d == 0]
        for name in order:  # Kahn's algorithm; the spec was validated acyclic
            for user in users[name]:
                indegree[user] -= 1
                if indegree[user] == 0:
                    order.append(user)
        out: dict[str, Needs] = {}
        conflicts: dict[str, list[str]] = {}
        for name in order:
            ts = by_name[name]
            own = base[name] if base is not None else needs_of(ts)
            residency = own.residency
            sources = [] if residency is None else [f"the task itself ({', '.join(sorted(residency))})"]
            for inp, ref in ts.inputs.items():
                up = ref.partition(".")[0]
                up_res = out[up].residency if up in out else None
                if up_res is not None:
                    residency = intersect_residency(residency, up_res)
                    sources.append(f"input {inp} from {up} ({', '.join(sorted(up_res)) or 'none'})")
            if residency is not None and not residency:
                conflicts[name] = [", ".join(sources) + " have no zone in common"]
            out[name] = own if residency == own.residency else dataclasses.replace(own, residency=residency)
        return out, conflicts

    def _feasible_somewhere(self, needs: Needs) -> bool:
        """Could any registered agent ever run tasks with these needs? (memoised per agent-set version)"""
        memo = self._feasible_memo.get(needs)
        if memo is not None and memo[0] == self._agents_version:
            return memo[1]
        ok = any(matcher.feasible(needs, a.view) for a in self.agents.values())
        self._feasible_memo[needs] = (self._agents_version, ok)
        return ok

    def plan(self, spec: common_pb2.PipelineSpec) -> list[control_pb2.TaskPlan]:
        """Per task: which registered agents could run it, why the others cannot, the best
        candidates with their score breakdown, and what change would make it feasible."""
        static, conflicts = self.static_needs(spec)
        return [self._plan_task(ts.name, static[ts.name], NO_PLACEMENT, conflicts.get(ts.name, []))
                for ts in spec.tasks]

    MAX_REJECTIONS_LISTED = 100

    def _plan_task(self, name: str, needs: Needs, placement: Placement, conflicts: list[str]) -> control_pb2.TaskPlan:
        agents = sorted(self.agents.values(), key=lambda a: a.name)
        tp = control_pb2.TaskPlan(task=name, agents_considered=len(agents), residency_conflicts=conflicts)
        if needs.residency is not None:
            tp.residency.extend(sorted(needs.residency))
        passing = dict.fromkeys(matcher.CLAUSES, 0)
        feasible_views = []
        for agent in agents:
            failed = []
            for clause, check in zip(matcher.CLAUSES, matcher.STATIC_CHECKS):
                r = check(needs, agent.view)
                if r is None:
                    passing[clause] += 1
                else:
                    failed.append(r)
                    tp.rejection_counts[r.reason] = tp.rejection_counts.get(r.reason, 0) + 1
            if failed:
                if len(tp.rejections) < self.MAX_REJECTIONS_LISTED:
                    tp.rejections[agent.name] = "; ".join(f"{r.reason}: {r.detail}" for r in failed)
            else:
                tp.feasible_agents.append(agent.name)
                feasible_views.append(agent.view)
        for clause, n in passing.items():
            tp.passing[clause] = n
        for c in matcher.rank(needs, feasible_views, placement)[:5]:
            tp.candidates.append(control_pb2.Candidate(agent=c.agent, score=c.score, breakdown=c.breakdown))
        if not feasible_views:
            tp.suggestions.extend(matcher.suggest(needs, [a.view for a in agents]))
        return tp

    def explain(self, run_id: str, name: str) -> control_pb2.ExplainResponse:
        """Why a task is where it is right now: pending (and until when) or placed (and why there)."""
        run = self._run(run_id)
        t = self.task(run_id, name)
        wall, mono = self.wall(), self.clock()
        if t.queued or t.state is TaskState.RUNNING:
            needs, placement = t.needs, t.placement
        else:
            needs, placement = self.static_needs(run.spec)[0][name], NO_PLACEMENT
        conflicts = self.static_needs(run.spec)[1].get(name, [])
        plan = self._plan_task(name, needs, placement, conflicts)
        resp = control_pb2.ExplainResponse(run_id=run_id, task=name, state=t.state.value, agent=t.agent, plan=plan)

        def say(reason: str, message: str, until: float = 0.0) -> control_pb2.ExplainResponse:
            resp.reason, resp.message, resp.until = reason, message, until
            return resp

        if t.terminal:
            detail = f": {t.error}" if t.error else ""
            where = f" on {t.agent}" if t.agent else ""
            return say("finished", f"{t.state.value}{where} after {t.attempts} attempt(s){detail}")
        if t.state is TaskState.RUNNING:
            won = next((c for c in plan.candidates if c.agent == t.agent), None)
            why = (f"; score {won.score:.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in sorted(won.breakdown.items()))
                   + f"), best of {len(plan.feasible_agents)} feasible agent(s)") if won else ""
            return say("placed", f"running on {t.agent} (attempt {t.attempts}): it had a free slot and passed "
                                 f"every constraint{why}")
        if t.state is TaskState.PENDING:
            waiting = [f"{u} ({run.tasks[u].state.value})" for u in t.upstream
                       if run.tasks[u].state is not TaskState.SUCCEEDED]
            return say("upstream", "waiting for upstream task(s): " + ", ".join(waiting))
        if not t.queued:
            return say("backoff", f"retrying after a failed attempt ({t.error}); attempt {t.attempts + 1} of "
                                  f"{t.max_attempts} not before {time.strftime('%H:%M:%S', time.localtime(t.not_before))}",
                       t.not_before)
        if not plan.feasible_agents:
            deadline = wall + max(0.0, self.infeasible_timeout - (mono - t.ready_at))
            return say("no_feasible_agent", "no registered agent can run it: " + "; ".join(plan.suggestions)
                       + f"; it fails at {time.strftime('%H:%M:%S', time.localtime(deadline))} if none appears",
                       deadline)
        if run.concurrency and run.running >= run.concurrency:
            return say("concurrency_limit", f"the run already has {run.running} of its {run.concurrency} "
                                            "allowed tasks running")
        if t.wait_for and t.wait_until > wall:
            return say("waiting_for_better_agent",
                       f"waiting for {t.wait_for}, which holds its input data or matches its preferences, until "
                       f"{time.strftime('%H:%M:%S', time.localtime(t.wait_until))}; then any feasible agent",
                       t.wait_until)
        free = [a for a in plan.feasible_agents
                if self.agents[a].connected and sum(ch.credits for ch in self.agents[a].channels) > 0]
        if not free:
            return say("no_free_slot", f"all {len(plan.feasible_agents)} feasible agent(s) are busy or disconnected")
        ahead = [r for r in self._ready_runs if r != run_id and self._fair_key(self.runs[r]) < self._fair_key(run)]
        if ahead:
            return say("fair_share", f"{len(ahead)} run(s) go first (higher priority, or their tenant holds a "
                                     f"smaller share than {run.tenant!r}'s {self.dominant_share(run.tenant):.0%})")
        return say("queued", "ready; it goes to the next feasible agent that asks for work")

    def _note_artifact(self, o: Output) -> None:
        """Remember where an artifact's bytes may be processed (the most restrictive tag wins)."""
        known = self.artifact_residency.get(o.digest, "unset")
        if known == "unset":
            self.artifact_residency[o.digest] = o.residency
        elif known is None:
            self.artifact_residency[o.digest] = o.residency
        elif o.residency is not None:
            self.artifact_residency[o.digest] = known & o.residency  # type: ignore[operator]

    def may_download(self, agent_name: str, digest: str) -> str | None:
        """None if the agent may receive these bytes; else why not (residency is a hard rule)."""
        zones = self.artifact_residency.get(digest)
        if zones is None:
            return None
        agent = self.agents.get(agent_name)
        have = agent.view.zones if agent is not None else frozenset()
        if have & zones:
            return None
        return (f"artifact {digest[:12]} may be processed only in zones {', '.join(sorted(zones)) or '(none)'}; "
                f"agent {agent_name} sits in {', '.join(sorted(have)) or 'no zones'}")

    def _fail_infeasible(self, mono: float) -> None:
        """Fail ready tasks that no registered agent could run for ``infeasible_timeout``."""
        for run_id in list(self._ready_runs):
            run = self.runs[run_id]
            for needs, dq in list(run.queues.items()):
                if self._feasible_somewhere(needs):
                    continue
                for t in list(dq):
                    if t.queued and mono - t.ready_at >= self.infeasible_timeout:
                        self._fail_unplaceable(run, t)

    def _fail_unplaceable(self, run: Run, t: Task) -> None:
        views = [a.view for a in self.agents.values()]
        why = "; ".join(matcher.suggest(t.needs, views)[:3])
        batch, after = Batch(), []
        self._unqueue(t)
        t.error = f"no agent could run this task for {self.infeasible_timeout:g}s: {why}"
        log.warning("%s/%s failed: %s", t.run_id, t.name, t.error)
        self._set_terminal(run, t, TaskState.FAILED, batch, after, t.error)
        self._fail_downstream(run, t, batch, after)
        self._commit(batch, after)

    async def cancel(self, run_id: str) -> Run:
        run = self._run(run_id)
        if run.state is RunState.CANCELLED:
            return run
        if run.terminal:
            raise FailedPrecondition(f"run {run_id} already {run.state.value}; nothing to cancel")
        batch, after = Batch(), []
        by_agent: dict[str, list[common_pb2.LeaseRef]] = {}
        now = self.wall()
        # The run is cancelled before its tasks: the last task ending must not end it as failed.
        run.state = RunState.CANCELLED
        run.finished_at = now
        batch.update_run(run)
        for t in run.tasks.values():
            if t.terminal:
                continue
            if t.state is TaskState.RUNNING:
                by_agent.setdefault(t.agent, []).append(convert.lease_ref(t))
                self._release(t)
                batch.finish_attempt(t, "cancelled", now, 0, "cancelled by user")
            self._unqueue(t)
            t.error = "cancelled"
            self._set_terminal(run, t, TaskState.CANCELLED, batch, after)
        self._event(batch, after, run, "", run.state.value, message="cancelled")
        await self._commit(batch, after)
        for name, leases in by_agent.items():
            for ch in self.agents[name].channels if name in self.agents else ():
                ch.push(cancel=leases)
        self._kick()
        return run

    async def retry(self, run_id: str) -> Run:
        run = self._run(run_id)
        if run.state is RunState.RUNNING:
            raise FailedPrecondition(f"run {run_id} is still running; retry it once it has ended")
        if run.state is RunState.SUCCEEDED:
            raise FailedPrecondition(f"run {run_id} succeeded; there is nothing to retry")
        batch, after = Batch(), []
        for t in run.tasks.values():
            if t.state in RETRYABLE_TASK_STATES:
                t.state = TaskState.PENDING
                t.failures = 0
                t.error = ""
                t.exit_code = 0
                t.finished_at = 0.0
                t.not_before = 0.0
                run.unfinished += 1
                self._open_tasks += 1
                batch.update_task(t)
        run.state = RunState.RUNNING
        run.finished_at = 0.0
        batch.update_run(run)
        self._event(batch, after, run, "", run.state.value, message="retry")
        for t in run.tasks.values():
            self._mark_ready_if_unblocked(run, t, batch, after)
        await self._commit(batch, after)
        return run

    # ------------------------------------------------------------------ agents

    def register(
        self, name: str, identity: str, caps: common_pb2.Capabilities,
        clocks: Iterable[common_pb2.ClockSample], leases: Iterable[common_pb2.LeaseRef],
    ) -> list[common_pb2.LeaseRef]:
        """(Re)register an agent; returns the leases it listed that it must stop."""
        now = self.wall()
        agent = self.agents.get(name)
        if agent is None:
            agent = AgentState(name=name, identity=identity, caps=caps, view=view_from_caps(name, caps),
                               registered_at=now, last_seen=now)
            self.agents[name] = agent
            self._index_cache(agent, {}, agent.view.cached)
            self._agents_version += 1
        else:
            self._apply_caps(agent, caps)
            agent.identity, agent.last_seen = identity, now
        self._observe_clocks(agent, list(clocks))
        batch = Batch()
        batch.upsert_agent(name, identity, caps.SerializeToString(), now)
        self.store.commit(batch)
        lost = self._renew(agent, leases)
        log.info("agent %s registered (%d cpus, %d gpus, labels %s)", name, caps.cpu_cores,
                 len(caps.gpus), dict(caps.labels))
        self._kick()
        return lost

    def _renew(self, agent: AgentState, leases: Iterable[common_pb2.LeaseRef]) -> list[common_pb2.LeaseRef]:
        now = self.clock()
        expires = now + self.lease_ttl + min(agent.clock_uncertainty, self.lease_ttl)
        lost = []
        for ref in leases:
            run = self.runs.get(ref.run_id)
            t = run.tasks.get(ref.task) if run else None
            if t is None or t.state is not TaskState.RUNNING or t.attempts != ref.epoch or t.agent != agent.name:
                lost.append(ref)
                continue
            if t.key not in agent.running:  # after a scheduler restart, before the agent came back
                matcher.hold(agent.view, t.needs)
                agent.running.add(t.key)
            t.lease_expires = expires
            heapq.heappush(self._leases, (expires, t.run_id, t.name, t.attempts))
        return lost

    def _apply_caps(self, agent: AgentState, caps: common_pb2.Capabilities) -> None:
        """Take an agent's new capabilities (re-register, or a heartbeat that carries them)."""
        fresh = view_from_caps(agent.name, caps)
        v = agent.view
        old_cached = v.cached
        shape = (v.cpus, v.memory, v.disk, v.gpus, v.labels, v.gpu_models, v.gpu_free_memory, v.zones)
        if agent.channels:
            self._count_capacity(agent, -1)
        v.cpus, v.memory, v.disk, v.gpus, v.labels = fresh.cpus, fresh.memory, fresh.disk, fresh.gpus, fresh.labels
        v.gpu_models, v.gpu_free_memory, v.zones = fresh.gpu_models, fresh.gpu_free_memory, fresh.zones
        v.bandwidth_bps, v.cached = fresh.bandwidth_bps, fresh.cached
        agent.caps = caps
        if agent.channels:
            self._count_capacity(agent, +1)
        if old_cached != v.cached:
            self._index_cache(agent, old_cached, v.cached)
        if shape != (v.cpus, v.memory, v.disk, v.gpus, v.labels, v.gpu_models, v.gpu_free_memory, v.zones):
            # What feasibility and preferences look at changed (not just the cache or the link).
            self._labels_version += 1
            self._agents_version += 1
        self._kick()

    def _index_cache(self, agent: AgentState, old: dict[str, int], new: dict[str, int]) -> None:
        for digest in old.keys() - new.keys():
            self._digest_version[digest] += 1
            holders = self._cache_index.get(digest)
            if holders is not None:
                holders.discard(agent.name)
                if not holders:
                    del self._cache_index[digest]
        for digest in new.keys() - old.keys():
            self._digest_version[digest] += 1
            self._cache_index[digest].add(agent.name)

    def _observe_clocks(self, agent: AgentState, clocks: list[common_pb2.ClockSample]) -> None:
        """Record an agent's clock samples; mark it clock_suspect past the configured bound."""
        if not clocks:
            return
        agent.clocks = clocks
        for sample in clocks:
            if sample.source == "scheduler":
                agent.sched_offset = sample.offset_s  # our time = its time + offset
        skew = clock_skew(clocks)
        suspect = skew > self.max_clock_offset
        if suspect and not agent.view.clock_suspect:
            log.warning("agent %s clock is suspect: offset + uncertainty %.3fs > %.3fs",
                        agent.name, skew, self.max_clock_offset)
        if suspect != agent.view.clock_suspect:
            self._agents_version += 1
        agent.view.clock_skew, agent.view.clock_suspect = skew, suspect

    def heartbeat(
        self, name: str, leases: Iterable[common_pb2.LeaseRef], clocks: Iterable[common_pb2.ClockSample],
        caps: common_pb2.Capabilities | None = None,
    ) -> list[common_pb2.LeaseRef]:
        agent = self.agents.get(name)
        if agent is None:
            raise FailedPrecondition(f"agent {name} is not registered; call Register first")
        leases = list(leases)
        self._observe_clocks(agent, list(clocks))
        if caps is not None:
            self._apply_caps(agent, caps)
        agent.last_seen = self.wall()
        lost = self._renew(agent, leases)
        # Leases we granted that the agent does not list never reached it (the stream
        # broke in between): expire them now rather than at TTL. The grace covers an
        # assignment still in flight when the heartbeat was sent.
        listed = {(r.run_id, r.task, r.epoch) for r in leases}
        grace = self.clock() - 2 * self.heartbeat_interval
        for key in list(agent.running):
            t = self.runs[key[0]].tasks[key[1]]
            if (t.run_id, t.name, t.attempts) not in listed and t.leased_at < grace:
                self._expire(t, "the agent no longer holds this lease")
        return lost

    def attach(self, name: str, credits: int = 0) -> Channel:
        agent = self.agents.get(name)
        if agent is None:
            raise FailedPrecondition(f"agent {name} is not registered; call Register first")
        ch = Channel(name, credits)
        if not agent.channels:
            self._count_capacity(agent, +1)
            self._labels_version += 1
        agent.channels.append(ch)
        agent.view.connected = True
        if credits > 0:
            self._credited[ch] = None
        self._kick()
        return ch

    def detach(self, ch: Channel) -> None:
        ch.close()
        self._credited.pop(ch, None)
        agent = self.agents.get(ch.agent)
        if agent is not None and ch in agent.channels:
            agent.channels.remove(ch)
            if not agent.channels:
                self._count_capacity(agent, -1)
                self._labels_version += 1
            agent.view.connected = agent.connected
            agent.last_seen = self.wall()

    def _count_capacity(self, agent: AgentState, sign: int) -> None:
        """Keep the connected agents' total resources (the denominator of fair shares)."""
        v = agent.view
        self._capacity[0] += sign * v.cpus
        self._capacity[1] += sign * v.memory
        self._capacity[2] += sign * v.gpus

    def add_credits(self, ch: Channel, n: int) -> None:
        if n < 0:
            raise InvalidArgument(f"credits must not be negative, got {n}")
        slots = self.agents[ch.agent].caps.slots or 1
        ch.credits = min(ch.credits + n, slots)
        if ch.credits > 0 and not ch.closed:
            self._credited[ch] = None
        self._kick()

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        """One pass of the pull path: give each agent with credit the tasks it should run."""
        self._kick_scheduled = False
        if not self.ready_count:
            return
        channels = list(self._credited)  # only agents asking for work; never a scan of all agents
        if not channels:
            return
        # Rotate so that no agent is always served first.
        self._rr = (self._rr + 1) % len(channels)
        channels = channels[self._rr:] + channels[: self._rr]
        batch, after = Batch(), []
        sends: list[tuple[Channel, list[agent_pb2.Assignment]]] = []
        wall, mono = self.wall(), self.clock()
        for ch in channels:
            if not self.ready_count:
                break
            if ch.closed or ch.credits <= 0:
                self._credited.pop(ch, None)
                continue
            agent = self.agents[ch.agent]
            agent.view.free_slots = ch.credits
            out = []
            memo: dict[int, bool] = {}
            worse: dict[tuple[int, Placement], str] = {}
            while ch.credits > 0 and self.ready_count:
                t = self._pick(agent, memo, worse, mono, wall)
                if t is None:
                    break
                matcher.reserve(agent.view, t.needs)
                self._unqueue(t)
                ch.credits -= 1
                out.append(self._grant(t, agent, batch, after, wall, mono))
            if ch.credits <= 0:
                self._credited.pop(ch, None)
            if out:
                sends.append((ch, out))
        if not sends:
            return
        for ch, out in sends:
            ch.inflight += len(out)

        def deliver() -> None:
            for ch, out in sends:
                ch.inflight -= len(out)
                ch.push(assignments=out)
        after.append(deliver)
        self._commit(batch, after)

    def _fair_key(self, run: Run) -> tuple[int, float, int, int]:
        """Order runs: priority first, then the tenant with the smallest dominant share, then
        the tenant served least recently (so equal shares, e.g. both zero on a one-slot
        agent, alternate instead of favouring the oldest run forever), then age."""
        return (-run.priority, round(self.dominant_share(run.tenant), 9),
                self._tenant_served.get(run.tenant, 0), run.seq)

    def _pick(self, agent: AgentState, memo: dict[int, bool], worse: dict[tuple[int, Placement], str],
              mono: float, wall: float) -> Task | None:
        """The next task this agent should run now, or None.

        Runs are visited in fairness order; within a run, each distinct Needs is
        checked against the agent once per pass (``memo``), and a queue is scanned only a
        bounded way. A task that would run clearly better elsewhere (its data is
        there, or a preferred agent exists) is skipped until its wait bound passes.
        """
        view = agent.view
        tenant_keys: dict[str, tuple[float, int]] = {}

        def order(run: Run) -> tuple[int, float, int, int]:
            key = tenant_keys.get(run.tenant)
            if key is None:
                key = tenant_keys[run.tenant] = (round(self.dominant_share(run.tenant), 9),
                                                 self._tenant_served.get(run.tenant, 0))
            return (-run.priority, key[0], key[1], run.seq)

        for run in sorted((self.runs[r] for r in self._ready_runs), key=order):
            if run.concurrency and run.running >= run.concurrency:
                continue
            for needs, dq in list(run.queues.items()):
                ok = memo.get(id(needs))  # needs are interned: one object per distinct value
                if ok is None:
                    ok = memo[id(needs)] = matcher.feasible(needs, view)
                if not ok or matcher.check_free(needs, view) is not None:
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
                    if not self._should_wait(t, agent, mono, wall, worse):
                        return t
                    held = t.placement
        return None

    def _should_wait(self, t: Task, agent: AgentState, mono: float, wall: float,
                     worse: dict[tuple[int, Placement], str]) -> bool:
        """Delay scheduling (Zaharia et al., EuroSys 2010): hold a task back from an agent
        that is clearly worse than another feasible one, for at most ``placement_wait``.

        ``worse`` memoises, for this agent and dispatch pass, which better agent (if any) each
        distinct (needs, placement) has: tasks alike in both are alike here too.
        """
        p = t.placement
        if p is NO_PLACEMENT:
            return False
        waited = mono - t.ready_at
        if waited >= self.placement_wait:
            return False
        if (t.wait_for and t.wait_for != agent.name and not p.affinities and t.wait_until > wall
                and not any(d in agent.view.cached for d, _ in p.inputs)):
            # Already waiting for the agent that holds its data, and this one holds none of it:
            # it cannot be better (the common case when a deep queue waits for busy holders).
            holder = self.agents.get(t.wait_for)
            if holder is not None and holder.connected:
                return True
        key = (id(t.needs), p)
        best_agent = worse.get(key)
        if best_agent is None:
            best, best_agent = self._best_quality(t, 0.0)
            if best_agent and best_agent != agent.name:
                here = matcher.quality(p, agent.view)
                if here >= best - matcher.NEARLY_BEST:
                    best_agent = ""
            else:
                best_agent = ""
            worse[key] = best_agent
        if not best_agent:
            return False
        t.wait_for = best_agent
        t.wait_until = wall + (self.placement_wait - waited)
        heapq.heappush(self._wakeups, t.ready_at + self.placement_wait)
        return True

    def _most_preferred(self, needs: Needs, affinities: tuple[tuple[Expr, float], ...]) -> str:
        """The connected, feasible agent with the highest affinity score ("" if none)."""
        key = (id(needs), affinities)
        cached = self._preferred_cache.get(key)
        if cached is not None and cached[0] == self._labels_version:
            return cached[1]
        placement = Placement((), affinities)
        best, best_agent = float("-inf"), ""
        for a in self.agents.values():
            if a.connected and matcher.feasible(needs, a.view):
                score = matcher.score_affinity(placement, a.view)
                if score > best:
                    best, best_agent = score, a.name
        if len(self._preferred_cache) > 10_000:
            self._preferred_cache.clear()
        self._preferred_cache[key] = (self._labels_version, best_agent)
        return best_agent

    def _best_quality(self, t: Task, floor: float) -> tuple[float, str]:
        """The best placement quality any connected, feasible agent offers this task.

        Candidates are the agents holding some of its input bytes (from the cache
        index) and, for tasks with preferences, the agent its preferences favour most
        (one scan of the agents per distinct needs and preferences, until the agents
        change): any other agent scores no better than one of these.
        """
        key = (id(t.needs), t.placement)
        cached = self._best_cache.get(key)
        # Valid while the agents are the same and no holder of one of its inputs changed.
        version = (self._labels_version, tuple(self._digest_version.get(d, 0) for d, _ in t.placement.inputs))
        if cached is not None and cached[0] == version:
            return max(cached[1], floor), cached[2] if cached[1] > floor else ""
        names: set[str] = set()
        for digest, _ in t.placement.inputs:
            names |= self._cache_index.get(digest, set())
        if t.placement.affinities:
            favourite = self._most_preferred(t.needs, t.placement.affinities)
            if favourite:
                names.add(favourite)
        best, best_agent = floor, ""
        for name in names:
            a = self.agents.get(name)
            if a is None or not a.connected or not matcher.feasible(t.needs, a.view):
                continue
            q = matcher.quality(t.placement, a.view)
            if q > best:
                best, best_agent = q, name
        if len(self._best_cache) > 100_000:
            self._best_cache.clear()
        self._best_cache[key] = (version, best, best_agent)
        return best, best_agent

    def _grant(self, t: Task, agent: AgentState, batch: Batch, after: list[Callable[[], None]],
               wall: float, mono: float) -> agent_pb2.Assignment:
        run = self.runs[t.run_id]
        t.attempts += 1
        t.state = TaskState.RUNNING
        t.agent = agent.name
        t.started_at = wall
        t.finished_at = 0.0
        t.leased_at = mono
        t.lease_expires = mono + self.lease_ttl + min(agent.clock_uncertainty, self.lease_ttl)
        t.wait_for, t.wait_until = "", 0.0
        agent.running.add(t.key)  # resources were reserved on the view by the matcher
        self._hold(run, t)
        heapq.heappush(self._leases, (t.lease_expires, t.run_id, t.name, t.attempts))
        batch.update_task(t)
        batch.insert_attempt(t, wall)
        self._event(batch, after, run, t.name, t.state.value, t.attempts, agent.name)
        return convert.assignment(run, t, os.urandom(8).hex(), self.lease_ttl)

    # ------------------------------------------------------------------ completions

    def complete(self, agent_name: str, c: agent_pb2.Completion) -> asyncio.Future[None]:
        """Apply the end of an attempt; the future resolves once it is durable.

        Raises StaleEpoch (and changes nothing) unless the report comes from the
        agent holding the current lease of a running task.
        """
        ref = c.lease
        run = self.runs.get(ref.run_id)
        t = run.tasks.get(ref.task) if run else None
        if run is None or t is None:
            raise NotFound(f"no task {ref.task!r} in run {ref.run_id!r}")
        if c.outcome not in OUTCOMES:
            raise InvalidArgument(f"outcome must be one of {sorted(OUTCOMES)}, got {c.outcome!r}")
        if t.attempts == ref.epoch and t.agent == agent_name and t.terminal and t.state is not TaskState.CANCELLED \
                and (t.state is TaskState.SUCCEEDED) == (c.outcome == OUTCOME_SUCCEEDED):
            return self.store.commit(Batch())  # a re-delivery of what we already recorded
        if t.state is not TaskState.RUNNING or t.attempts != ref.epoch or t.agent != agent_name:
            raise StaleEpoch(
                f"lease {ref.run_id}/{ref.task} epoch {ref.epoch} held by {agent_name} is stale: "
                f"the task is {t.state.value} at epoch {t.attempts}" + (f" on {t.agent}" if t.agent else "")
            )
        outputs, problem = self._check_outputs(t, c)
        batch, after = Batch(), []
        now = self.wall()
        self._release(t)
        t.exit_code = c.exit_code
        agent = self.agents.get(agent_name)
        if agent is not None and c.started_at and c.finished_at:
            # The agent's wall clock, corrected by its measured offset to ours, so a
            # run's timeline is consistent across machines.
            t.started_at = c.started_at + agent.sched_offset
            now = min(now, c.finished_at + agent.sched_offset)
        if c.outcome == OUTCOME_SUCCEEDED and problem is None:
            for o in outputs.values():  # outputs carry the residency of the data they came from
                o.residency = t.needs.residency
                self._note_artifact(o)
                if agent is not None and o.digest not in agent.view.cached:
                    # The agent keeps what it produced: count it as cached there now, rather
                    # than at its next heartbeat, so a downstream task can follow the data.
                    agent.view.cached[o.digest] = o.size
                    self._cache_index[o.digest].add(agent_name)
                    self._digest_version[o.digest] += 1
            t.outputs = outputs
            t.error = ""
            t.finished_at = now
            batch.insert_outputs(t, now)
            batch.finish_attempt(t, "succeeded", now, c.exit_code, "")
            self._set_terminal(run, t, TaskState.SUCCEEDED, batch, after)
            for d in t.downstream:
                self._mark_ready_if_unblocked(run, run.tasks[d], batch, after)
        else:
            error = problem or c.error or f"{c.outcome} (exit code {c.exit_code})"
            batch.finish_attempt(t, c.outcome if problem is None else "failed", now, c.exit_code, error)
            self._fail_attempt(run, t, error, batch, after)
        self._kick()
        return self._commit(batch, after)

    def _check_outputs(self, t: Task, c: agent_pb2.Completion) -> tuple[dict[str, Output], str | None]:
        outputs = {}
        for ref in c.outputs:
            if ref.name not in t.spec.outputs:
                return {}, f"reported output {ref.name!r} was not declared"
            if not is_digest(ref.digest):
                return {}, f"output {ref.name!r} has a malformed digest {ref.digest!r}"
            if ref.kind not in ("file", "dir"):
                return {}, f"output {ref.name!r} has unknown kind {ref.kind!r}"
            if not self.artifact_exists(ref.digest):
                return {}, f"output {ref.name!r} ({ref.digest[:12]}) was never uploaded"
            outputs[ref.name] = Output(ref.name, ref.digest, ref.size, ref.kind)
        if c.outcome == OUTCOME_SUCCEEDED:
            missing = [o for o in t.spec.outputs if o not in outputs]
            if missing:
                return {}, "declared output(s) missing: " + ", ".join(missing)
        return outputs, None

    def _fail_attempt(self, run: Run, t: Task, error: str, batch: Batch, after: list[Callable[[], None]]) -> None:
        t.failures += 1
        t.error = error
        if t.failures < t.max_attempts and run.state is RunState.RUNNING:
            delay = backoff_delay(t.spec.backoff_s, t.failures, self.rng)
            t.state = TaskState.READY
            t.not_before = self.wall() + delay
            batch.update_task(t)
            self._event(batch, after, run, t.name, "retrying", t.attempts, t.agent,
                        f"{error}; attempt {t.attempts + 1} of {t.max_attempts} in {delay:.1f}s")
            self._enqueue(t)
        else:
            t.finished_at = self.wall()
            self._set_terminal(run, t, TaskState.FAILED, batch, after, error)
            self._fail_downstream(run, t, batch, after)

    def _expire(self, t: Task, why: str) -> None:
        """A lease ended without a report: requeue as a new attempt (no retry used)."""
        run = self.runs[t.run_id]
        batch, after = Batch(), []
        self._release(t)
        batch.finish_attempt(t, "lost", self.wall(), 0, why)
        for ch in self.agents[t.agent].channels if t.agent in self.agents else ():
            ch.push(cancel=[convert.lease_ref(t)])
        log.warning("lease %s/%s epoch %d on %s lost: %s", t.run_id, t.name, t.attempts, t.agent, why)
        t.state = TaskState.READY
        t.not_before = 0.0
        t.error = f"attempt {t.attempts} lost: {why}"
        batch.update_task(t)
        self._event(batch, after, run, t.name, "lost", t.attempts, t.agent, why)
        self._enqueue(t)
        self._commit(batch, after)

    # ------------------------------------------------------------------ time

    def tick(self, mono: float | None = None, wall: float | None = None) -> None:
        """One pass of time-driven work: expire leases, end retry backoffs."""
        mono = self.clock() if mono is None else mono
        wall = self.wall() if wall is None else wall
        while self._leases and self._leases[0][0] <= mono:
            _, run_id, name, epoch = heapq.heappop(self._leases)
            t = self.runs[run_id].tasks[name]
            if t.state is TaskState.RUNNING and t.attempts == epoch and t.lease_expires <= mono:
                self._expire(t, f"lease expired: agent {t.agent} stopped renewing it")
        while self._delayed and self._delayed[0][0] <= wall:
            _, run_id, name = heapq.heappop(self._delayed)
            t = self.runs[run_id].tasks[name]
            if t.state is TaskState.READY and not t.queued and t.not_before <= wall:
                self._queue(t)
        while self._wakeups and self._wakeups[0] <= mono:
            heapq.heappop(self._wakeups)  # a delay-scheduling wait ended: look again
            self._kick()
        if mono - self._last_infeasible_check >= INFEASIBLE_CHECK_S:
            self._last_infeasible_check = mono
            self._fail_infeasible(mono)

    # ------------------------------------------------------------------ watching and logs

    def watch(self, run_id: str, run_only: bool) -> tuple[Watcher, Run]:
        run = self._run(run_id)
        w = Watcher(run_id, run_only)
        self._watchers.setdefault(run_id, set()).add(w)
        return w, run

    def unwatch(self, w: Watcher) -> None:
        ws = self._watchers.get(w.run_id)
        if ws is not None:
            ws.discard(w)
            if not ws:
                del self._watchers[w.run_id]

    def append_logs(self, agent_name: str, chunks: Iterable[agent_pb2.LogChunk]) -> None:
        agent = self.agents.get(agent_name)
        offset = agent.sched_offset if agent is not None else 0.0  # agent clock -> ours
        for chunk in chunks:
            ref = chunk.lease
            run = self.runs.get(ref.run_id)
            t = run.tasks.get(ref.task) if run else None
            # Logs of an attempt are accepted from its agent even just after it ended.
            if t is None or t.agent != agent_name or ref.epoch != t.attempts:
                continue
            ts = chunk.ts + offset
            if self.log_sink is not None:
                self.log_sink.append(ref.run_id, ref.task, ref.epoch, chunk.stream, chunk.data, ts)
            for f in self._followers.get((ref.run_id, ref.task), ()):
                f.queue.put_nowait(control_pb2.LogLine(attempt=ref.epoch, stream=chunk.stream,
                                                       data=chunk.data, ts=ts))

    def follow_logs(self, run_id: str, task: str) -> LogFollower:
        f = LogFollower(run_id, task)
        self._followers.setdefault((run_id, task), set()).add(f)
        return f

    def unfollow_logs(self, f: LogFollower) -> None:
        fs = self._followers.get((f.run_id, f.task))
        if fs is not None:
            fs.discard(f)
            if not fs:
                del self._followers[(f.run_id, f.task)]

    def _close_followers(self, run_id: str, task: str) -> None:
        for f in self._followers.get((run_id, task), ()):
            f.queue.put_nowait(None)

    def task(self, run_id: str, name: str) -> Task:
        t = self._run(run_id).tasks.get(name)
        if t is None:
            raise NotFound(f"run {run_id} has no task {name!r}")
        return t
