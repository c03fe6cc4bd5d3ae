"""The stages running on this agent: starting them, their leases, their results, draining.

A stage's lifecycle, as this module enforces it::

     Assignment ─ draining or unhealthy ──────────────────────────────────────┐ released at once
         │ start()                                                             ▼
         ▼                                                              ┌────────────┐  ack   ┌──────┐
    ┌─────────┐ exits by itself (any exit code)                        │ in outbox  │───────▶│ done │
    │ running │───────────────────────────────────────────────────────▶│ (on disk,  │        └──────┘
    └─────────┘                                                        │  reported) │
     │  │  │ runs past its timeout: TIMEOUT ─▶ killed; outcome "timeout" └────────────┘
     │  │  │                                                                 ▲
     │  │  └ drain(): DRAINING ─▶ SIGTERM, drain grace, SIGKILL;             │
     │  │      its last checkpoint is reported first, then "released"        │
     │  │      (or "succeeded" if it finished) ────────────────────────────────┘
     │  │    (a stage stopping for TIMEOUT or DRAINING keeps its lease in heartbeats: its result is wanted)
     │  │
     │  │ the agent's own failure (no work dir, cannot spawn, disk full): "released", agent unhealthy
     │  │
     │  └ cancelled(): CANCELLED    renewed(): LEASE_LOST    registered(): LEASE_UNKNOWN
     │    tick(now), lease not renewed within the TTL: LEASE_EXPIRED (the keeper too, if we are gone)
     │    start() of a newer attempt of the same task: SUPERSEDED (the new one waits for its end)
     │    the agent stops: AGENT_STOPPED     the scheduler revoked the agent: REVOKED
     ▼
    ┌──────────┐ killed (SIGTERM to its process group, SIGKILL after the grace)  ┌─────────────────────┐
    │ stopping │─────────────────────────────────────────────────────────────────▶│ dropped: no report  │
    └──────────┘ (heartbeats no longer carry its lease; the scheduler moved on)   │ (checkpoints kept)  │
                                                                                  └─────────────────────┘

A stage is stopped at most once: the first :class:`~agent.stage.StopReason` wins (a newer
attempt arriving still turns a graceful stop into a kill). A stage whose lease is gone
(``StopReason.lease_gone``, or cancelled before any heartbeat renewed it) is killed at
once (SIGKILL): no grace, since another attempt may already be starting.

Invariant 3 on this agent: an assignment of an attempt older than one held here is never
started, and a newer one starts only once every older attempt of its task here is dead.
Every stage that leaves (reported or dropped) gives its slot back as a credit,
except while draining or unhealthy (then the credit is withheld until the agent
can take work again).

Invariant 3: a stage whose lease the agent could not renew within the lease TTL
is killed by the agent itself (:meth:`Supervisor.tick`), and by the keeper if the
agent is dead or frozen, so an old holder never runs beside a new attempt elsewhere.
The clocks are injectable, so a test drives ``tick(now)`` with a fake clock.

Durability (:mod:`agent.journal`): a stage still running after
:data:`LEASE_RECORD_DELAY_S` has its lease written down (assignment, pid, start),
so the next agent process can take it over or resume it; its result replaces that
record in one transaction and is sent only once on disk (:mod:`agent.outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from agent.journal import Journal, LeaseRecord
from agent.outbox import Outbox
from agent.stage import Stage, StageKey, StopReason
from agent.uplink import Uplink
from outrider.protocol import Outcome
from outrider.v1 import agent_pb2, common_pb2

__all__ = ["DRAIN_ACK_TIMEOUT_S", "LEASE_RECORD_DELAY_S", "StageRunner", "Supervisor"]

log = logging.getLogger(__name__)

#: A drained agent waits this long at most for its last results to be acknowledged.
DRAIN_ACK_TIMEOUT_S = 30.0
#: A stage's lease is written down once it has run this long: a shorter one is cheaper to
#: run again than to journal (its lease expires and it runs elsewhere if the agent dies).
LEASE_RECORD_DELAY_S = 0.5


class StageRunner(Protocol):
    """What the supervisor needs of :class:`agent.runner.Runner`."""

    async def run(self, stage: Stage) -> agent_pb2.Completion:
        """Run the stage to its end and say how it went."""
        ...

    async def kill(self, stage: Stage, grace: float | None = None) -> int:
        """Stop the stage's processes; returns its exit code."""
        ...


def _key(ref: common_pb2.LeaseRef) -> StageKey:
    return (ref.run_id, ref.task, ref.epoch)


class Supervisor:
    """The table of running stages, the outbox of undelivered results, the lease watchdog.

    Args:
        runner: runs and kills stages.
        uplink: where results and freed slots (credits) go.
        slots: how many stages may run at once.
        lease_ttl: the lease TTL until the scheduler says otherwise (seconds).
        on_drained: called once a drain finished (every stage done, results
            acknowledged or :data:`DRAIN_ACK_TIMEOUT_S` passed).
        journal: where leases and results are kept (None: memory only).
        drain_grace: how long a draining stage has after SIGTERM to checkpoint and exit.
        monotonic, wall: the clocks (``time.monotonic``, ``time.time``), injectable
            so that tests drive :meth:`tick` and :meth:`renewed` with a fake clock.
    """

    def __init__(
        self,
        runner: StageRunner,
        uplink: Uplink,
        slots: int,
        *,
        lease_ttl: float = 15.0,
        on_drained: Callable[[], None] | None = None,
        journal: Journal | None = None,
        drain_grace: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.uplink = uplink
        self.slots = slots
        self.lease_ttl = lease_ttl
        self.on_drained = on_drained
        self.journal = journal
        self.drain_grace = drain_grace
        self._monotonic = monotonic
        self._wall = wall
        self.stages: dict[StageKey, Stage] = {}
        self.outbox = Outbox(uplink, journal)
        self.draining = False
        #: Why the agent takes no work (empty: it can): its own failure, until the self-check passes.
        self.unhealthy = ""
        self._withheld = 0
        #: Called when draining or health changed (the session sends a heartbeat at once).
        self.on_change: Callable[[], None] | None = None
        #: Called with (stage keys, monotonic renewal time, TTL) whenever leases are renewed (the keeper).
        self.on_renew: Callable[[list[Stage], float, float], None] | None = None
        #: Awaited before a stage's result other than success is reported: its last checkpoint goes first.
        self.before_report: Callable[[Stage], Awaitable[None]] | None = None
        #: Called with a stage whose end is dealt with, and its outcome ("" when not reported).
        self.on_done: Callable[[Stage, str], None] | None = None
        # Kills and the drain in flight: referenced so that they are not collected mid-way.
        self._background: set[asyncio.Future[Any]] = set()
        self._recorded: set[StageKey] = set()
        #: Stages whose lease is not written down yet, in start order, with when it is due.
        self._unrecorded: dict[StageKey, tuple[float, Stage]] = {}
        self._record_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ stages

    def start(self, assignment: agent_pb2.Assignment) -> Stage | None:
        """Start running an assignment; None if it is a duplicate delivery, an older attempt
        of a task a newer attempt of which is here, or refused (draining or unhealthy: it is
        released at once)."""
        key = _key(assignment.lease)
        if key in self.stages or key in self.outbox:
            return None
        if self._stale(key):
            self._give_credit()  # (its slot was never taken)
            return None
        older = self._supersede(key)
        if self.draining or self.unhealthy:
            why = StopReason.DRAINING.value if self.draining else f"agent unhealthy: {self.unhealthy}"
            self._release_unstarted(assignment, why)
            return None
        now = self._monotonic()
        stage = Stage(assignment, last_renewed=now, assigned_at=now)
        self._launch(stage, self.runner.run, older)
        return stage

    def adopt(self, stage: Stage, run: Callable[[Stage], Awaitable[agent_pb2.Completion]]) -> None:
        """Take over a stage of a previous agent process (its lease is on disk already)."""
        if self._stale(stage.key):
            if self.journal is not None:
                self.journal.write_later(deletes=[Journal.lease_key(stage.key)])
            return
        self._recorded.add(stage.key)
        self._launch(stage, run, self._supersede(stage.key))

    def _stale(self, key: StageKey) -> bool:
        """Whether a newer attempt of the task is here: this one must never start (invariant 3)."""
        newer = [s.key[2] for s in self.stages.values() if s.key[:2] == key[:2] and s.key[2] > key[2]]
        if newer:
            log.warning("not starting %s/%s attempt %d: attempt %d of it is here", *key, max(newer))
        return bool(newer)

    def _supersede(self, key: StageKey) -> list[Stage]:
        """A newer attempt of a task arrived: its older attempts here lost their lease. Each
        is killed at once (SIGKILL, no grace: the new attempt must not wait, nor run beside
        it), a graceful stop under way included; the new one starts once they are gone."""
        older = [s for s in self.stages.values() if s.key[:2] == key[:2] and s.key[2] < key[2]]
        for s in older:
            log.info("stopping %s/%s attempt %d: attempt %d of it arrived", *s.key, key[2])
            if s.stop_reason is None or s.stop_reason.reports_result:
                s.stop_reason = StopReason.SUPERSEDED
            self._spawn(self.runner.kill(s, 0.0))
        return older

    def _launch(
        self, stage: Stage, run: Callable[[Stage], Awaitable[agent_pb2.Completion]], after: Iterable[Stage] = ()
    ) -> None:
        self.stages[stage.key] = stage
        stage.task = asyncio.ensure_future(self._run(stage, run, [s.task for s in after if s.task is not None]))
        if self.journal is not None and stage.key not in self._recorded:
            loop = asyncio.get_running_loop()
            due = loop.time() + LEASE_RECORD_DELAY_S
            self._unrecorded[stage.key] = (due, stage)
            if self._record_timer is None:
                self._record_timer = loop.call_at(due, self._record_due)

    def _record_due(self) -> None:
        """Write down the leases of the stages still running :data:`LEASE_RECORD_DELAY_S`
        after their start. One timer for all of them (in start order), not one per stage:
        most stages are gone before theirs would fire."""
        self._record_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._unrecorded:
            key, (due, stage) = next(iter(self._unrecorded.items()))
            if due > now:
                self._record_timer = loop.call_at(due, self._record_due)
                return
            del self._unrecorded[key]
            self._record(stage)

    def _record(self, stage: Stage) -> None:
        """Write down the lease of a stage that is still running (see LEASE_RECORD_DELAY_S)."""
        if self.journal is None or self.stages.get(stage.key) is not stage or stage.stop_reason is not None:
            return
        rec = LeaseRecord(stage.assignment, stage.started_at, stage.pid, str(stage.workdir or ""))
        self.journal.write_later({Journal.lease_key(stage.key): rec.encode()})
        self._recorded.add(stage.key)
        self._note_renewal(self._wall())

    async def _run(
        self, stage: Stage, run: Callable[[Stage], Awaitable[agent_pb2.Completion]], after: list[asyncio.Task[Any]]
    ) -> None:
        ref = stage.lease
        outcome = ""
        try:
            if after:  # older attempts of the task, being killed: this one starts once they are gone
                await asyncio.wait(after)
            if stage.stop_reason is not None and not stage.stop_reason.reports_result:
                completion = agent_pb2.Completion(lease=ref, outcome=Outcome.CANCELLED.value)  # stopped before it began
            else:
                completion = await run(stage)
            reason = stage.stop_reason
            recorded = stage.key in self._recorded
            if reason is not None and not reason.reports_result:
                # Cancelled, lease lost, or the agent is stopping: the scheduler has moved on
                # (or will, when the lease expires); a report would be refused.
                log.info("%s/%s attempt %d stopped (%s)", ref.run_id, ref.task, ref.epoch, reason.value)
                if recorded and self.journal is not None and reason is not StopReason.AGENT_STOPPED:
                    self.journal.write_later(deletes=[Journal.lease_key(stage.key)])
            else:
                if completion.outcome != Outcome.SUCCEEDED.value and self.before_report is not None:
                    # Its last checkpoint is reported first (the lease is held meanwhile).
                    await self.before_report(stage)
                # On disk (grouped with whatever else is being written), then sent with its
                # slot's credit: one message for both.
                await self.outbox.put(stage.key, completion, self.uplink.take_logs(ref), lease=recorded)
                outcome = completion.outcome
        finally:
            self.stages.pop(stage.key, None)
            self._recorded.discard(stage.key)
            self._unrecorded.pop(stage.key, None)
            self._give_credit()
            if self.on_done is not None:
                # The rest of the bookkeeping (work dir, keeper, checkpoints) after the
                # result and its credit have gone up: the uplink's sender runs first.
                asyncio.get_running_loop().call_soon(self.on_done, stage, outcome)
        if self.draining and not self.stages:
            self._spawn(self._finish_drain())

    def _release_unstarted(self, assignment: agent_pb2.Assignment, why: str) -> None:
        ref = assignment.lease
        log.info("releasing %s/%s attempt %d unstarted: %s", ref.run_id, ref.task, ref.epoch, why)
        now = self._wall()
        c = agent_pb2.Completion(lease=ref, outcome=Outcome.RELEASED.value, error=why, started_at=now, finished_at=now)
        self._spawn(self.outbox.put(_key(ref), c, lease=False))
        self._give_credit()

    def free_slots(self) -> int:
        """Slots not taken by a stage."""
        return max(0, self.slots - len(self.stages))

    def credits(self) -> int:
        """The credits a fresh work stream starts with: the free slots, none while draining
        or unhealthy (those are withheld until the agent can take work)."""
        if self.draining:
            return 0
        if self.unhealthy:
            self._withheld = self.free_slots()
            return 0
        self._withheld = 0
        return self.free_slots()

    def _give_credit(self) -> None:
        if self.draining:
            return
        if self.unhealthy:
            self._withheld += 1
        else:
            self.uplink.credit()

    # ------------------------------------------------------------------ health

    def set_unhealthy(self, reason: str) -> None:
        """The agent itself failed (``reason``): take no work until :meth:`set_healthy`."""
        if self.unhealthy:
            self.unhealthy = reason
            return
        log.error("agent unhealthy: %s; taking no work until a self-check passes", reason)
        self.unhealthy = reason
        if self.on_change is not None:
            self.on_change()

    def set_healthy(self) -> None:
        """The self-check passed: offer the withheld slots again."""
        if not self.unhealthy:
            return
        log.info("agent healthy again (was: %s); taking work", self.unhealthy)
        self.unhealthy = ""
        if not self.draining and self._withheld:
            self.uplink.credit(self._withheld)
        self._withheld = 0
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ leases

    def leases(self) -> list[common_pb2.LeaseRef]:
        """Every stage's lease, stopping ones included (what Register claims)."""
        return [s.lease for s in self.stages.values()]

    def held_leases(self) -> list[common_pb2.LeaseRef]:
        """The leases a heartbeat renews: stages running, or stopping with a result to come
        (a timeout, a drain)."""
        return [s.lease for s in self.stages.values() if s.stop_reason is None or s.stop_reason.reports_result]

    def registered(self, lost: Iterable[common_pb2.LeaseRef]) -> None:
        """The scheduler took our Register: every lease is renewed as of now, except
        those it listed in ``lost``, whose stages are stopped."""
        now = self._monotonic()
        gone = {_key(r) for r in lost}
        for stage in self.stages.values():
            stage.last_renewed = now
        self._stop_refs(lost, StopReason.LEASE_UNKNOWN)
        self._renewed([s for k, s in self.stages.items() if k not in gone], now)

    def renewed(self, sent_at: float, lost: Iterable[common_pb2.LeaseRef]) -> None:
        """A heartbeat reply: the heartbeat sent at wall time ``sent_at`` renewed every
        lease but those in ``lost``, whose stages are stopped.

        Renewed as of when the heartbeat was *sent*: the conservative side.
        """
        lost = list(lost)
        if sent_at:
            gone = {_key(r) for r in lost}
            renewed_at = self._monotonic() - (self._wall() - sent_at)
            kept = []
            for key, stage in self.stages.items():
                if key not in gone:
                    stage.last_renewed = max(stage.last_renewed, renewed_at)
                    kept.append(stage)
            self._renewed(kept, renewed_at)
        self._stop_refs(lost, StopReason.LEASE_LOST)

    def _renewed(self, stages: list[Stage], at: float) -> None:
        if stages and self.on_renew is not None:
            self.on_renew(stages, at, self.lease_ttl)
        if self._recorded:
            self._note_renewal(self._wall() - (self._monotonic() - at))

    def _note_renewal(self, wall: float) -> None:
        """Write down when the leases were last renewed (a restart judges them by it)."""
        if self.journal is not None:
            self.journal.write_later({"renewed": json.dumps({"wall": wall, "ttl": self.lease_ttl}).encode()})

    def cancelled(self, refs: Iterable[common_pb2.LeaseRef]) -> None:
        """The scheduler cancelled these attempts: stop their stages."""
        self._stop_refs(refs, StopReason.CANCELLED)

    def tick(self, now: float) -> list[Stage]:
        """One round of the lease watchdog at monotonic time ``now``: stop every running
        stage whose lease was not renewed within the TTL (invariant 3); returns them.
        Its checkpoints stay on disk (a later attempt here can resume from them)."""
        expired: list[Stage] = []
        for stage in list(self.stages.values()):
            if stage.stop_reason is None and now - stage.last_renewed > self.lease_ttl:
                log.warning(
                    "lease of %s/%s attempt %d not renewed for %.1fs; stopping the stage",
                    stage.lease.run_id,
                    stage.lease.task,
                    stage.lease.epoch,
                    now - stage.last_renewed,
                )
                self._stop(stage, StopReason.LEASE_EXPIRED)
                expired.append(stage)
        return expired

    async def watch(self, period: Callable[[], float]) -> None:
        """Run :meth:`tick` every ``period()`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(period())
            self.tick(self._monotonic())

    def _stop_refs(self, refs: Iterable[common_pb2.LeaseRef], reason: StopReason) -> None:
        for ref in refs:
            stage = self.stages.get(_key(ref))
            if stage is not None and stage.stop_reason is None:
                log.info("stopping %s/%s attempt %d: %s", ref.run_id, ref.task, ref.epoch, reason.value)
                self._stop(stage, reason)

    def _stop(self, stage: Stage, reason: StopReason, grace: float | None = None) -> None:
        stage.stop_reason = reason
        if reason.lease_gone or (reason is StopReason.CANCELLED and stage.last_renewed <= stage.assigned_at):
            # Its lease is gone: no grace. So is that of an attempt no heartbeat renewed yet
            # when the scheduler cancels it: it does so when a heartbeat that crossed the
            # assignment did not list it (the lease counts as lost), and may grant the next
            # attempt at once, here or on another agent.
            grace = 0.0
        self._spawn(self.runner.kill(stage, grace))

    # ------------------------------------------------------------------ results

    def ack(self, ack: agent_pb2.CompletionAck) -> None:
        """The scheduler took (or refused, for good) a result: it leaves the outbox."""
        self.outbox.ack(ack)

    def undelivered(self) -> list[agent_pb2.AgentMessage]:
        """Results not acknowledged yet, to send again on a fresh stream."""
        return self.outbox.undelivered()

    # ------------------------------------------------------------------ stopping

    def drain(self, reason: str) -> bool:
        """Take no more work, and ask every running stage to checkpoint and stop (SIGTERM,
        then SIGKILL after the drain grace); their leases are released once their last
        checkpoints are reported. False (and nothing changes) when already draining."""
        if self.draining:
            return False
        self.draining = True
        log.warning(
            "draining (%s): no new work; %d running stage(s) asked to checkpoint and stop within %gs",
            reason,
            len(self.stages),
            self.drain_grace,
        )
        for stage in list(self.stages.values()):
            if stage.stop_reason is None:
                self._stop(stage, StopReason.DRAINING, self.drain_grace)
        if self.on_change is not None:
            self.on_change()
        if not self.stages:
            self._spawn(self._finish_drain())
        return True

    async def _finish_drain(self) -> None:
        """Drained: wait (bounded) for the last results to be acknowledged, then say so."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.outbox.empty.wait(), DRAIN_ACK_TIMEOUT_S)
        log.info("drained (%d results undelivered)", len(self.outbox))
        if self.on_drained is not None:
            self.on_drained()

    def mark_all(self, reason: StopReason) -> None:
        """Give every stage not stopping yet ``reason``, without killing it yet: a stage
        that exits from now on is not reported (:meth:`kill_all` kills them)."""
        for stage in self.stages.values():
            if stage.stop_reason is None or stage.stop_reason is StopReason.DRAINING:
                stage.stop_reason = reason

    def revoked(self) -> None:
        """Revoked: stop every stage (SIGTERM, SIGKILL after the kill grace; a draining one too), none reported."""
        for stage in [s for s in self.stages.values() if s.stop_reason is None or s.stop_reason.reports_result]:
            self._stop(stage, StopReason.REVOKED)  # (the scheduler requeued them; no more work comes)

    async def kill_all(self, reason: StopReason) -> None:
        """Kill every stage (those not stopping yet get ``reason``) and wait for each."""
        for stage in list(self.stages.values()):
            if stage.stop_reason is None:
                stage.stop_reason = reason
            await self.runner.kill(stage)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        fut = asyncio.ensure_future(coro)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
