"""The stages running on this agent: starting them, their leases, their results.

A stage's lifecycle, as this module enforces it::

     Assignment
         │ start()
         ▼
    ┌─────────┐ exits by itself (any exit code)               ┌────────────┐  ack   ┌──────┐
    │ running │──────────────────────────────────────────────▶│ in outbox  │───────▶│ done │
    └─────────┘                                               │ (reported) │        └──────┘
       │    │ runs past its timeout: StopReason.TIMEOUT       └────────────┘
       │    ▼                                                       ▲
       │  ┌───────────┐ killed; outcome "timeout"                   │
       │  │ timing out│─────────────────────────────────────────────┘
       │  └───────────┘ (heartbeats still carry its lease: the result is wanted)
       │
       │ cancelled(): CANCELLED          renewed(): LEASE_LOST       registered(): LEASE_UNKNOWN
       │ tick(now), lease not renewed within the TTL: LEASE_EXPIRED
       │ the agent stops: AGENT_STOPPED
       ▼
    ┌──────────┐ killed (SIGTERM to its process group, SIGKILL after the grace)  ┌─────────────────────┐
    │ stopping │─────────────────────────────────────────────────────────────────▶│ dropped: no report  │
    └──────────┘ (heartbeats no longer carry its lease; the scheduler moved on)   └─────────────────────┘

A stage is stopped at most once: the first :class:`~agent.stage.StopReason` wins.
Every stage that leaves (reported or dropped) gives its slot back as a credit,
except while draining.

Invariant 3: a stage whose lease the agent could not renew within the lease TTL
is killed by the agent itself (:meth:`Supervisor.tick`), so an old holder never
runs beside a new attempt elsewhere. The clocks are injectable, so a test drives
``tick(now)`` with a fake clock instead of waiting a TTL.

A completion stays in the outbox until the scheduler acknowledged it; a new
stream re-sends the whole outbox (:meth:`Supervisor.undelivered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from agent.stage import Stage, StageKey, StopReason
from agent.uplink import Uplink
from outrider.v1 import agent_pb2, common_pb2

__all__ = ["DRAIN_ACK_TIMEOUT_S", "StageRunner", "Supervisor"]

log = logging.getLogger(__name__)

#: A drained agent waits this long at most for its last results to be acknowledged.
DRAIN_ACK_TIMEOUT_S = 30.0


class StageRunner(Protocol):
    """What the supervisor needs of :class:`agent.runner.Runner`."""

    async def run(self, stage: Stage) -> agent_pb2.Completion:
        """Run the stage to its end and say how it went."""
        ...

    async def kill(self, stage: Stage) -> int:
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
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.uplink = uplink
        self.slots = slots
        self.lease_ttl = lease_ttl
        self.on_drained = on_drained
        self._monotonic = monotonic
        self._wall = wall
        self.stages: dict[StageKey, Stage] = {}
        self.outbox: dict[StageKey, agent_pb2.Completion] = {}
        self.draining = False
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        # Kills and the drain in flight: referenced so that they are not collected mid-way.
        self._background: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ stages

    def start(self, assignment: agent_pb2.Assignment) -> Stage | None:
        """Start running an assignment; None if it is a duplicate delivery."""
        stage = Stage(assignment, last_renewed=self._monotonic())
        if stage.key in self.stages:
            return None
        self.stages[stage.key] = stage
        stage.task = asyncio.ensure_future(self._run(stage))
        return stage

    async def _run(self, stage: Stage) -> None:
        ref = stage.lease
        try:
            completion = await self.runner.run(stage)
        finally:
            self.stages.pop(stage.key, None)
        reason = stage.stop_reason
        if reason is not None and not reason.reports_result:
            # Cancelled, lease lost, or the agent is stopping: the scheduler has moved on
            # (or will, when the lease expires); a report would be refused.
            log.info("%s/%s attempt %d stopped (%s)", ref.run_id, ref.task, ref.epoch, reason.value)
        else:
            self.outbox[stage.key] = completion
            self._outbox_empty.clear()
            self.uplink.complete(completion)
        if not self.draining:
            self.uplink.credit()
        if self.draining and not self.stages:
            self._spawn(self._finish_drain())

    def free_slots(self) -> int:
        """Slots not taken by a stage."""
        return max(0, self.slots - len(self.stages))

    def credits(self) -> int:
        """The credits a fresh work stream starts with: the free slots, none while draining."""
        return 0 if self.draining else self.free_slots()

    # ------------------------------------------------------------------ leases

    def leases(self) -> list[common_pb2.LeaseRef]:
        """Every stage's lease, stopping ones included (what Register claims)."""
        return [s.lease for s in self.stages.values()]

    def held_leases(self) -> list[common_pb2.LeaseRef]:
        """The leases a heartbeat renews: stages running, or stopping for their timeout
        (their result is coming)."""
        return [s.lease for s in self.stages.values() if s.stop_reason is None or s.stop_reason.reports_result]

    def registered(self, lost: Iterable[common_pb2.LeaseRef]) -> None:
        """The scheduler took our Register: every lease is renewed as of now, except
        those it listed in ``lost``, whose stages are stopped."""
        now = self._monotonic()
        for stage in self.stages.values():
            stage.last_renewed = now
        self._stop_refs(lost, StopReason.LEASE_UNKNOWN)

    def renewed(self, sent_at: float, lost: Iterable[common_pb2.LeaseRef]) -> None:
        """A heartbeat reply: the heartbeat sent at wall time ``sent_at`` renewed every
        lease but those in ``lost``, whose stages are stopped.

        Renewed as of when the heartbeat was *sent*: the conservative side.
        """
        lost = list(lost)
        if sent_at:
            gone = {_key(r) for r in lost}
            renewed_at = self._monotonic() - (self._wall() - sent_at)
            for key, stage in self.stages.items():
                if key not in gone:
                    stage.last_renewed = max(stage.last_renewed, renewed_at)
        self._stop_refs(lost, StopReason.LEASE_LOST)

    def cancelled(self, refs: Iterable[common_pb2.LeaseRef]) -> None:
        """The scheduler cancelled these attempts: stop their stages."""
        self._stop_refs(refs, StopReason.CANCELLED)

    def tick(self, now: float) -> list[Stage]:
        """One round of the lease watchdog at monotonic time ``now``: stop every running
        stage whose lease was not renewed within the TTL (invariant 3); returns them."""
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

    def _stop(self, stage: Stage, reason: StopReason) -> None:
        stage.stop_reason = reason
        self._spawn(self.runner.kill(stage))

    # ------------------------------------------------------------------ results

    def ack(self, ack: agent_pb2.CompletionAck) -> None:
        """The scheduler took (or refused, for good) a result: it leaves the outbox."""
        self.outbox.pop(_key(ack.lease), None)
        if not self.outbox:
            self._outbox_empty.set()
        if ack.code != 0:
            log.warning(
                "scheduler refused the result of %s/%s attempt %d: %s",
                ack.lease.run_id,
                ack.lease.task,
                ack.lease.epoch,
                ack.message,
            )

    def undelivered(self) -> list[agent_pb2.Completion]:
        """Results not acknowledged yet, to send again on a fresh stream."""
        return list(self.outbox.values())

    # ------------------------------------------------------------------ stopping

    def drain(self) -> bool:
        """Stop taking work and let the running stages finish; False (and nothing
        changes) when already draining or nothing runs, so there is nothing to drain."""
        if self.draining or not self.stages:
            return False
        self.draining = True
        return True

    async def _finish_drain(self) -> None:
        """Drained: wait (bounded) for the last results to be acknowledged, then say so."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox_empty.wait(), DRAIN_ACK_TIMEOUT_S)
        log.info("drained (%d results undelivered); stopping", len(self.outbox))
        if self.on_drained is not None:
            self.on_drained()

    def mark_all(self, reason: StopReason) -> None:
        """Give every stage not stopping yet ``reason``, without killing it yet: a stage
        that exits from now on is not reported (:meth:`kill_all` kills them)."""
        for stage in self.stages.values():
            if stage.stop_reason is None:
                stage.stop_reason = reason

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
