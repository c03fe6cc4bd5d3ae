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
import heapq
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from outrider.errors import FailedPrecondition, InvalidArgument, NotFound, StaleEpoch
from outrider.v1 import agent_pb2, common_pb2, control_pb2
from scheduler import convert, matcher
from scheduler.model import (
    RETRYABLE_TASK_STATES,
    Needs,
    Output,
    Run,
    RunState,
    Task,
    TaskState,
    needs_of,
    upstream_of,
)
from scheduler.store import Batch, Store

log = logging.getLogger(__name__)

OUTCOME_SUCCEEDED = "succeeded"
OUTCOMES = frozenset({"succeeded", "failed", "timeout", "cancelled"})
MAX_BACKOFF_S = 300.0
_HEX = frozenset("0123456789abcdef")


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
    )


class Engine:
    """All scheduler state and every transition. Single-threaded (the event loop)."""

    def __init__(
        self,
        store: Store,
        *,
        lease_ttl: float = 15.0,
        heartbeat_interval: float = 3.0,
        artifact_exists: Callable[[str], bool] = lambda digest: True,
        log_sink: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.lease_ttl = lease_ttl
        self.heartbeat_interval = heartbeat_interval
        self.artifact_exists = artifact_exists
        self.log_sink = log_sink
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.runs: dict[str, Run] = {}
        self.agents: dict[str, AgentState] = {}
        # Ready queue: insertion-ordered, so FIFO by the time a task became ready.
        self.ready: dict[tuple[str, str], Task] = {}
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
            t.outputs[row["name"]] = Output(row["name"], row["digest"], row["size"], row["kind"])
        for run in self.runs.values():
            run.unfinished = sum(1 for t in run.tasks.values() if not t.terminal)
            for t in run.tasks.values():
                if t.state is TaskState.RUNNING:
                    # Give agents a full TTL plus grace to reconnect and claim their leases.
                    t.lease_expires = now + 2 * self.lease_ttl
                    t.leased_at = now
                    heapq.heappush(self._leases, (t.lease_expires, t.run_id, t.name, t.attempts))
                    agent = self.agents.get(t.agent)
                    if agent is not None:
                        self._reserve(agent, t.needs)
                        agent.running.add(t.key)
                elif t.state is TaskState.READY:
                    self._enqueue(t)
        log.info(
            "loaded %d runs, %d agents; %d tasks ready, %d leases awaiting their agents",
            len(self.runs), len(self.agents), len(self.ready), len(self._leases),
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ------------------------------------------------------------------ helpers

    def _build_run(
        self, run_id: str, spec: common_pb2.PipelineSpec, submitter: str, created_at: float, trace_id: str, seq: int
    ) -> Run:
        run = Run(run_id=run_id, pipeline=spec.name, spec=spec, submitter=submitter,
                  created_at=created_at, trace_id=trace_id, seq=seq)
        for order, ts in enumerate(spec.tasks):
            run.tasks[ts.name] = Task(run_id=run_id, name=ts.name, spec=ts, needs=needs_of(ts),
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
        """Put a READY task where dispatch finds it: the queue, or the backoff heap."""
        if t.not_before > self.wall():
            heapq.heappush(self._delayed, (t.not_before, t.run_id, t.name))
        else:
            self.ready[t.key] = t
            self._kick()

    @staticmethod
    def _reserve(agent: AgentState, needs: Needs) -> None:
        v = agent.view
        v.used_cpus += needs.cpus
        v.used_memory += needs.memory
        v.used_gpus += needs.gpus
        v.running += 1

    def _release(self, t: Task) -> None:
        agent = self.agents.get(t.agent)
        if agent is None or t.key not in agent.running:
            return
        agent.running.discard(t.key)
        v = agent.view
        v.used_cpus = max(0.0, v.used_cpus - t.needs.cpus)
        v.used_memory = max(0, v.used_memory - t.needs.memory)
        v.used_gpus = max(0, v.used_gpus - t.needs.gpus)
        v.running = max(0, v.running - 1)

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

    async def submit(self, spec: common_pb2.PipelineSpec, submitter: str) -> tuple[str, list[str]]:
        """Record a run durably and queue its root tasks; returns (run id, warnings)."""
        run, warnings, _ = await self._submit(spec, submitter, None)
        return run.run_id, warnings

    async def submit_and_watch(
        self, spec: common_pb2.PipelineSpec, submitter: str, run_only: bool
    ) -> tuple[Run, list[str], Watcher]:
        """Submit, with a watcher registered before any of the run's events exist."""
        run, warnings, watcher = await self._submit(spec, submitter, run_only)
        assert watcher is not None
        return run, warnings, watcher

    async def _submit(
        self, spec: common_pb2.PipelineSpec, submitter: str, watch: bool | None
    ) -> tuple[Run, list[str], Watcher | None]:
        self.check_spec(spec)
        self._seq += 1
        run = self._build_run(self.new_run_id(), spec, submitter, self.wall(), os.urandom(16).hex(), self._seq)
        self.runs[run.run_id] = run
        watcher = None
        if watch is not None:
            watcher = Watcher(run.run_id, watch)
            self._watchers.setdefault(run.run_id, set()).add(watcher)
        batch, after = Batch(), []
        batch.insert_run(run)
        self._event(batch, after, run, "", RunState.RUNNING.value, message=f"submitted by {submitter}")
        for t in run.tasks.values():
            self._mark_ready_if_unblocked(run, t, batch, after)
        warnings = [f"task {p.task!r}: no registered agent can run it" + (
            f" ({'; '.join(sorted(set(p.rejections.values())))})" if p.rejections else "")
            for p in self.plan(spec) if self.agents and not p.feasible_agents]
        try:
            await self._commit(batch, after)
        except BaseException:
            if watcher is not None:
                self.unwatch(watcher)
            raise
        return run, warnings, watcher

    def plan(self, spec: common_pb2.PipelineSpec) -> list[control_pb2.TaskPlan]:
        """Which registered agents could run each task, and why the others cannot."""
        out = []
        for ts in spec.tasks:
            needs = needs_of(ts)
            tp = control_pb2.TaskPlan(task=ts.name, agents_considered=len(self.agents))
            for agent in sorted(self.agents.values(), key=lambda a: a.name):
                rej = matcher.rejections(needs, agent.view)
                if rej:
                    tp.rejections[agent.name] = "; ".join(f"{r.reason}: {r.detail}" for r in rej)
                else:
                    tp.feasible_agents.append(agent.name)
            out.append(tp)
        return out

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
            self.ready.pop(t.key, None)
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
        else:
            fresh = view_from_caps(name, caps)
            v = agent.view
            v.cpus, v.memory, v.disk, v.gpus, v.labels = fresh.cpus, fresh.memory, fresh.disk, fresh.gpus, fresh.labels
            agent.caps, agent.identity, agent.last_seen = caps, identity, now
        agent.clocks = list(clocks)
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
                self._reserve(agent, t.needs)
                agent.running.add(t.key)
            t.lease_expires = expires
            heapq.heappush(self._leases, (expires, t.run_id, t.name, t.attempts))
        return lost

    def heartbeat(
        self, name: str, leases: Iterable[common_pb2.LeaseRef], clocks: Iterable[common_pb2.ClockSample]
    ) -> list[common_pb2.LeaseRef]:
        agent = self.agents.get(name)
        if agent is None:
            raise FailedPrecondition(f"agent {name} is not registered; call Register first")
        leases = list(leases)
        clocks = list(clocks)
        if clocks:
            agent.clocks = clocks
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
        agent.channels.append(ch)
        agent.view.connected = True
        self._kick()
        return ch

    def detach(self, ch: Channel) -> None:
        ch.close()
        agent = self.agents.get(ch.agent)
        if agent is not None and ch in agent.channels:
            agent.channels.remove(ch)
            agent.view.connected = agent.connected
            agent.last_seen = self.wall()

    def add_credits(self, ch: Channel, n: int) -> None:
        if n < 0:
            raise InvalidArgument(f"credits must not be negative, got {n}")
        slots = self.agents[ch.agent].caps.slots or 1
        ch.credits = min(ch.credits + n, slots)
        self._kick()

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        self._kick_scheduled = False
        if not self.ready:
            return
        channels = [ch for a in self.agents.values() for ch in a.channels if ch.credits > 0 and not ch.closed]
        if not channels:
            return
        # Rotate so that no agent is always served first.
        self._rr = (self._rr + 1) % len(channels)
        channels = channels[self._rr:] + channels[: self._rr]
        batch, after = Batch(), []
        sends: list[tuple[Channel, list[agent_pb2.Assignment]]] = []
        wall, mono = self.wall(), self.clock()
        for ch in channels:
            if not self.ready:
                break
            agent = self.agents[ch.agent]
            agent.view.free_slots = ch.credits
            chosen = list(matcher.select_for_agent(
                agent.view, ((t.needs, t) for t in self.ready.values()), ch.credits))
            if not chosen:
                continue
            ch.credits -= len(chosen)
            out = []
            for t in chosen:
                del self.ready[t.key]  # type: ignore[attr-defined]
                out.append(self._grant(t, agent, batch, after, wall, mono))  # type: ignore[arg-type]
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
        agent.running.add(t.key)  # resources were reserved on the view by the matcher
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
        if c.outcome == OUTCOME_SUCCEEDED and problem is None:
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
            if len(ref.digest) != 64 or not set(ref.digest) <= _HEX:
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
            if t.state is TaskState.READY and t.key not in self.ready and t.not_before <= wall:
                self.ready[t.key] = t
                self._kick()

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
        for chunk in chunks:
            ref = chunk.lease
            run = self.runs.get(ref.run_id)
            t = run.tasks.get(ref.task) if run else None
            # Logs of an attempt are accepted from its agent even just after it ended.
            if t is None or t.agent != agent_name or ref.epoch != t.attempts:
                continue
            if self.log_sink is not None:
                self.log_sink.append(ref.run_id, ref.task, ref.epoch, chunk.stream, chunk.data, chunk.ts)
            for f in self._followers.get((ref.run_id, ref.task), ()):
                f.queue.put_nowait(control_pb2.LogLine(attempt=ref.epoch, stream=chunk.stream,
                                                       data=chunk.data, ts=chunk.ts))

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
