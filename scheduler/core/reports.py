"""What agents report, applied: registration, heartbeats, completions, logs; and leases ending.

Every report goes through the lease check (:meth:`LeaseTable.check`): a completion
applies only to the current lease of a running task, a heartbeat renews only
current leases, and log chunks are kept from the current or just-ended attempt.
When a lease ends, for whatever reason (a completion, a cancel, expiry), its
agent's resources and its tenant's share are given back in one place
(:meth:`Reports.end_lease`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from outrider import logfmt
from outrider.protocol import ARTIFACT_KINDS, Outcome, is_digest
from scheduler.core import audit, stagemetrics
from scheduler.core.fairness import FairShare
from scheduler.core.instruments import I
from scheduler.core.leases import LeaseStatus, LeaseTable, lease_ref
from scheduler.core.lifecycle import StateMachine
from scheduler.core.messages import Capabilities, ClockSample, Completion, LeaseRef, LogChunk
from scheduler.core.model import AttemptState, Output, Task, TaskState
from scheduler.core.registry import AgentRegistry, AgentState
from scheduler.core.residency import ResidencyIndex
from scheduler.core.tracing import Tracer
from scheduler.core.txn import Journal, Txn
from scheduler.core.views import LogLine
from scheduler.core.watch import Watchers

log = logging.getLogger(__name__)


class LogSink(Protocol):
    """Where stage logs are kept (:class:`scheduler.logs.LogStore`)."""

    def append(self, run_id: str, task: str, attempt: int, stream: str, data: bytes, ts: float) -> None: ...

    def read(self, run_id: str, task: str, attempt: int) -> Iterable[tuple[float, str, bytes]]: ...


def check_outputs(t: Task, c: Completion, exists: Callable[[str], bool]) -> tuple[dict[str, Output], str | None]:
    """The outputs a completion reports, if they are what the task declared and were uploaded;
    else why the attempt must count as failed."""
    outputs = {}
    for ref in c.outputs:
        if ref.name not in t.spec.outputs:
            return {}, f"reported output {ref.name!r} was not declared"
        if not is_digest(ref.digest):
            return {}, f"output {ref.name!r} has a malformed digest {ref.digest!r}"
        if ref.kind not in ARTIFACT_KINDS:
            return {}, f"output {ref.name!r} has unknown kind {ref.kind!r}"
        if not exists(ref.digest):
            return {}, f"output {ref.name!r} ({ref.digest[:12]}) was never uploaded"
        outputs[ref.name] = Output(ref.name, ref.digest, ref.size, ref.kind)
    if c.outcome is Outcome.SUCCEEDED:
        missing = [o for o in t.spec.outputs if o not in outputs]
        if missing:
            return {}, "declared output(s) missing: " + ", ".join(missing)
    return outputs, None


class Reports:
    def __init__(
        self,
        sm: StateMachine,
        registry: AgentRegistry,
        leases: LeaseTable,
        fairness: FairShare,
        residency: ResidencyIndex,
        watchers: Watchers,
        journal: Journal,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        heartbeat_interval: float,
        artifact_exists: Callable[[str], bool],
        log_sink: LogSink | None,
        kick: Callable[[], None],
    ) -> None:
        self._sm = sm
        self._registry = registry
        self._leases = leases
        self._fairness = fairness
        self._residency = residency
        self._watchers = watchers
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self.heartbeat_interval = heartbeat_interval
        #: An agent not heard from for this long gets no new work until it is heard again: it
        #: missed a heartbeat, so its link may be down while its stream still looks open.
        self.silent_after = 2 * heartbeat_interval + 1.0
        self._artifact_exists = artifact_exists
        self.log_sink = log_sink
        self._kick = kick
        #: The dispatcher's (scheduler.core.tracing), set by the composition root (scheduler/server.py).
        self.tracer: Tracer | None = None

    # ------------------------------------------------------------------ agents

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
        """(Re)register an agent; returns the leases it listed that it must stop.

        Raises PermissionDenied, changing nothing, when it declares a zone outside those its
        certificate (``cert_zones``) or the configuration gives it (:mod:`~scheduler.core.zones`);
        FailedPrecondition, changing nothing, when another instance is connected
        under the name (:meth:`AgentRegistry.admit`). When a new instance takes over a
        name that is not connected, the old instance's leases expire at once: their
        processes belong to the old instance, which is gone.
        """
        caps = self._registry.zones.settle(name, cert_zones, caps)
        clocks = tuple(clocks)
        existing, replaced = self._registry.admit(name, instance_id)
        if existing is not None and replaced:
            why = f"agent {name} now runs as instance {instance_id}; instance {replaced} and its stages are gone"
            for key in sorted(existing.running):
                t = self._sm.runs[key[0]].tasks[key[1]]
                if t.state is TaskState.RUNNING and t.agent == name:
                    self.expire(t, why)
        now = self._wall()
        agent = self._registry.register(name, identity, caps, clocks, now, instance_id, peer)
        self._registry.heard(agent)
        txn = Txn()
        txn.changes.upsert_agent(name, identity, caps, now, agent.instance_id)
        self._journal.commit(txn)
        lost = self._renew(agent, leases)
        log.info(
            "agent %s registered (%d cpus, %d gpus, labels %s%s)",
            name,
            caps.cpu_cores,
            len(caps.gpus),
            dict(caps.labels),
            f", instance {instance_id}" if instance_id else "",
        )
        self._kick()
        return lost

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
        """Renew an agent's leases and take what it says of itself; returns the leases it
        no longer holds. Capabilities that claim a zone the agent is not attested for refuse
        the whole heartbeat (PermissionDenied), before anything in it is applied."""
        agent = self._registry.require(name)
        if caps is not None:
            caps = self._registry.zones.settle(name, cert_zones, caps)
        leases = list(leases)
        self._registry.observe_clocks(agent, tuple(clocks))
        if caps is not None:
            self._registry.apply_caps(agent, caps)
        self._registry.set_condition(agent, unhealthy, draining)
        agent.last_seen = self._wall()
        if self._registry.heard(agent, self.silent_after):
            self._kick()  # dispatch skipped it while it was silent
        lost = self._renew(agent, leases)
        # Leases we granted that the agent does not list never reached it (the stream
        # broke in between): expire them now rather than at TTL. The grace covers an
        # assignment still in flight when the heartbeat was sent.
        listed = {(r.run_id, r.task, r.epoch) for r in leases}
        grace = self._clock() - 2 * self.heartbeat_interval
        for key in list(agent.running):
            t = self._sm.runs[key[0]].tasks[key[1]]
            if (t.run_id, t.name, t.attempts) not in listed and t.leased_at < grace:
                self.expire(t, "the agent no longer holds this lease")
        return lost

    def _renew(self, agent: AgentState, refs: Iterable[LeaseRef]) -> list[LeaseRef]:
        renewed, lost = self._leases.renew(agent.name, agent.clock_uncertainty, refs, self._clock())
        for t in renewed:
            self._registry.hold(agent, t)  # after a scheduler restart, before the agent came back
        return lost

    # ------------------------------------------------------------------ completions and logs

    def complete(self, agent_name: str, c: Completion) -> asyncio.Future[None]:
        """Apply the end of an attempt; the future resolves once it is durable.

        Raises StaleEpoch (and changes nothing) unless the report comes from the
        agent holding the current lease of a running task.
        """
        status, t = self._leases.check(c.lease, agent_name)
        if (
            status is LeaseStatus.ENDED
            and t is not None
            and t.terminal
            and t.state is not TaskState.CANCELLED
            and (t.state is TaskState.SUCCEEDED) == (c.outcome is Outcome.SUCCEEDED)
        ):
            return self._journal.barrier()  # a re-delivery of what we already recorded
        if status is not LeaseStatus.CURRENT or t is None:
            raise self._leases.refusal(c.lease, agent_name, t)
        run = self._sm.runs[t.run_id]
        outputs, problem = check_outputs(t, c, self._artifact_exists)
        txn = Txn()
        now = self._wall()
        t.exit_code = c.exit_code
        agent = self._registry.get(agent_name)
        stagemetrics.record(txn, t, c, agent.sched_offset if agent is not None else 0.0)  # on this transaction
        if self.tracer is not None:  # its transfer, execution and commit spans ride this transaction
            self.tracer.completed(txn, run, t, c, agent.sched_offset if agent is not None else 0.0, now)
        if agent is not None and c.started_at and c.finished_at:
            # The agent's wall clock, corrected by its measured offset to ours, so a
            # run's timeline is consistent across machines.
            t.started_at = c.started_at + agent.sched_offset
            now = min(now, c.finished_at + agent.sched_offset)
        if c.outcome is Outcome.RELEASED:
            # Not the task's fault: run it again elsewhere without spending a retry.
            why = f"released by {agent_name}: {c.error or 'no reason given'}"
            self.end_lease(txn, t, AttemptState.RELEASED, now, c.exit_code, why)
            self._sm.lose_attempt(txn, run, t, why, released=True)
        elif c.outcome is Outcome.SUCCEEDED and problem is None:
            self.end_lease(txn, t, AttemptState.SUCCEEDED, now, c.exit_code, "")
            for o in outputs.values():  # outputs carry the residency of the data they came from
                o.residency = t.needs.residency
                self._residency.note(o)
                if agent is not None:
                    self._registry.note_cached(agent, o)
            self._sm.succeed(txn, run, t, outputs, now)
        else:
            error = problem or c.error or f"{c.outcome.value} (exit code {c.exit_code})"
            how = AttemptState(c.outcome.value) if problem is None else AttemptState.FAILED
            about = logfmt.about(t.run_id, t.name, t.attempts, run.trace_id)
            log.warning(
                "%s/%s attempt %d on %s %s: %s",
                t.run_id,
                t.name,
                t.attempts,
                agent_name,
                how.value,
                error[:500],
                extra=about,
            )
            self.end_lease(txn, t, how, now, c.exit_code, error)
            self._sm.fail_attempt(txn, run, t, error)
        self._kick()
        return self._journal.commit(txn)

    def append_logs(self, agent_name: str, chunks: Iterable[LogChunk]) -> None:
        agent = self._registry.get(agent_name)
        offset = agent.sched_offset if agent is not None else 0.0  # agent clock -> ours
        for chunk in chunks:
            ref = chunk.lease
            # Logs of an attempt are accepted from its agent even just after it ended.
            status, _ = self._leases.check(ref, agent_name)
            if status is not LeaseStatus.CURRENT and status is not LeaseStatus.ENDED:
                continue
            ts = chunk.ts + offset
            if self.log_sink is not None:
                self.log_sink.append(ref.run_id, ref.task, ref.epoch, chunk.stream, chunk.data, ts)
            self._watchers.log(ref.run_id, ref.task, LogLine(ref.epoch, chunk.stream, chunk.data, ts))

    # ------------------------------------------------------------------ leases ending

    def end_lease(self, txn: Txn, t: Task, how: AttemptState, when: float, exit_code: int, error: str) -> None:
        """The current attempt of ``t`` ended: its agent's resources and its tenant's share
        are given back, and how it ended is recorded."""
        if self._registry.release(t):
            self._fairness.release(self._sm.runs[t.run_id], t.needs)
        self._leases.end(txn, t, how, when, exit_code, error)

    def expire_due(self, mono: float) -> None:
        """Leases whose time ran out by ``mono``: their tasks run again elsewhere."""
        for t in self._leases.expired(mono):
            self.expire(t, f"lease expired: agent {t.agent} stopped renewing it")

    def expire(self, t: Task, why: str) -> None:
        """A lease ended without a report: requeue as a new attempt (no retry used)."""
        run = self._sm.runs[t.run_id]
        I.lease_expiries.inc()
        txn = Txn()
        target = audit.target_of(t.run_id, t.name, t.attempts)
        audit.record(txn, self._wall(), audit.SCHEDULER, audit.Action.LEASE_EXPIRY, target, detail=why)
        self.end_lease(txn, t, AttemptState.LOST, self._wall(), 0, why)
        self.push_cancel(t.agent, [lease_ref(t)])
        about = logfmt.about(t.run_id, t.name, t.attempts, run.trace_id)
        log.warning("lease %s/%s epoch %d on %s lost: %s", t.run_id, t.name, t.attempts, t.agent, why, extra=about)
        self._sm.lose_attempt(txn, run, t, why)
        self._journal.commit(txn)

    def push_cancel(self, agent_name: str, refs: list[LeaseRef]) -> None:
        """Tell an agent to stop these attempts (down each of its channels)."""
        agent = self._registry.get(agent_name)
        for ch in agent.channels if agent is not None else ():
            ch.push(cancel=refs)
