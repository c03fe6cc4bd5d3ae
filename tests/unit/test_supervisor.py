"""The supervisor: the stage table, leases and the watchdog tick(now), the outbox, drain.

Driven with a fake clock and a fake runner: no process runs, nothing sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import agent.supervisor as supervisor_mod
from agent.stage import StopReason
from agent.supervisor import Supervisor
from agent.uplink import Uplink
from outrider.v1 import agent_pb2
from tests.helpers.agents import FakeRunner, assignment
from tests.helpers.fake_clock import FakeClock

TTL = 15.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


class Rig:
    """A supervisor on fake clocks, its runner and its uplink."""

    def __init__(self, slots: int = 4, **kw: Any) -> None:
        self.mono = FakeClock(1000.0)
        self.wall = FakeClock(1_700_000_000.0)
        self.runner = FakeRunner()
        self.uplink = Uplink()
        self.sup = Supervisor(self.runner, self.uplink, slots, lease_ttl=TTL, monotonic=self.mono, wall=self.wall, **kw)

    def advance(self, seconds: float) -> None:
        self.mono.t += seconds
        self.wall.t += seconds

    async def killed(self, n: int = 1) -> None:
        """Wait until the runner was asked to kill ``n`` stages in all."""
        while len(self.runner.kills) < n:
            self.runner.killed.clear()
            await asyncio.wait_for(self.runner.killed.wait(), 5)


def key(task: str, epoch: int = 1) -> tuple[str, str, int]:
    return ("r1", task, epoch)


# --------------------------------------------------------------------------- the watchdog: tick(now)


def test_tick_stops_a_stage_whose_lease_lapsed() -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = rig.sup.start(assignment("a"))
        assert stage is not None and stage.last_renewed == 1000.0
        rig.advance(TTL)
        assert rig.sup.tick(rig.mono()) == []  # exactly one TTL: not lapsed yet
        assert stage.stop_reason is None
        rig.advance(0.1)
        assert rig.sup.tick(rig.mono()) == [stage]
        assert stage.stop_reason is StopReason.LEASE_EXPIRED
        await rig.killed()
        assert rig.runner.kills == [(key("a"), StopReason.LEASE_EXPIRED)]
        assert stage.task is not None
        await stage.task
        # Stopped, not reported: the scheduler has given the attempt away.
        assert rig.sup.stages == {} and rig.sup.outbox.items == {}
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 1 and list(msg.completions) == []
        # A later tick has nothing left to stop.
        rig.advance(100)
        assert rig.sup.tick(rig.mono()) == []

    run(scenario)


def test_a_renewed_lease_is_not_killed() -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        rig.advance(10)
        sent = rig.wall()
        rig.advance(0.5)  # the reply arrives half a second after the heartbeat left
        rig.sup.renewed(sent, lost=[])
        # Renewed as of when the heartbeat was sent, not when the reply came.
        assert stage.last_renewed == pytest.approx(1010.0)
        rig.advance(TTL - 0.5)  # one TTL after the send
        assert rig.sup.tick(rig.mono()) == []
        assert stage.stop_reason is None and rig.runner.kills == []
        rig.advance(0.1)
        assert rig.sup.tick(rig.mono()) == [stage]

    run(scenario)


def test_renewal_never_moves_backwards() -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        rig.advance(5)
        rig.sup.renewed(rig.wall(), lost=[])
        assert stage.last_renewed == pytest.approx(1005.0)
        rig.sup.renewed(rig.wall() - 3, lost=[])  # a late reply to an older heartbeat
        assert stage.last_renewed == pytest.approx(1005.0)
        rig.sup.renewed(0.0, lost=[])  # no client_time: says nothing about when
        assert stage.last_renewed == pytest.approx(1005.0)

    run(scenario)


def test_a_lost_lease_is_stopped_and_not_renewed() -> None:
    async def scenario() -> None:
        rig = Rig()
        a = rig.sup.start(assignment("a"))
        b = rig.sup.start(assignment("b"))
        assert a is not None and b is not None
        rig.advance(10)
        rig.sup.renewed(rig.wall(), lost=[b.lease])
        assert a.stop_reason is None and a.last_renewed == pytest.approx(1010.0)
        assert b.stop_reason is StopReason.LEASE_LOST and b.last_renewed == 1000.0
        await rig.killed()
        assert rig.runner.kills == [(key("b"), StopReason.LEASE_LOST)]

    run(scenario)


def test_register_renews_every_lease_and_stops_the_unknown_ones() -> None:
    async def scenario() -> None:
        rig = Rig()
        a = rig.sup.start(assignment("a"))
        b = rig.sup.start(assignment("b"))
        assert a is not None and b is not None
        assert [r.task for r in rig.sup.leases()] == ["a", "b"]
        rig.advance(12)  # reconnecting took a while
        rig.sup.registered(lost=[a.lease])
        assert a.stop_reason is StopReason.LEASE_UNKNOWN
        assert b.stop_reason is None and b.last_renewed == 1012.0
        rig.advance(TTL)
        assert rig.sup.tick(rig.mono()) == []  # b was renewed at registration

    run(scenario)


def test_a_stage_stopping_for_its_timeout_keeps_its_lease_in_heartbeats() -> None:
    async def scenario() -> None:
        rig = Rig()
        slow = rig.sup.start(assignment("slow", timeout_s=1))
        gone = rig.sup.start(assignment("gone"))
        assert slow is not None and gone is not None
        slow.stop_reason = StopReason.TIMEOUT  # as the runner sets it when the timeout hits
        rig.sup.cancelled([gone.lease])
        assert [r.task for r in rig.sup.held_leases()] == ["slow"]  # its result is coming
        assert [r.task for r in rig.sup.leases()] == ["slow", "gone"]  # Register claims both
        # The watchdog leaves a stage that is already stopping alone.
        rig.advance(TTL + 1)
        assert rig.sup.tick(rig.mono()) == []
        assert slow.stop_reason is StopReason.TIMEOUT
        # The timed-out stage's result is reported; the cancelled one's is not.
        rig.runner.exit(slow.key, -9)
        await rig.killed()
        assert slow.task is not None and gone.task is not None
        await asyncio.gather(slow.task, gone.task)
        assert list(rig.sup.outbox.items) == [slow.key]
        assert rig.sup.outbox.items[slow.key].completions[0].outcome == "timeout"
        msg = rig.uplink.take()
        assert msg is not None and [c.lease.task for c in msg.completions] == ["slow"] and msg.credits == 2

    run(scenario)


def test_the_first_stop_reason_wins_and_a_stage_is_killed_once() -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        rig.sup.cancelled([stage.lease])
        rig.sup.renewed(rig.wall(), lost=[stage.lease])
        rig.sup.registered(lost=[stage.lease])
        rig.advance(TTL + 1)
        rig.sup.tick(rig.mono())
        await rig.killed()
        assert stage.task is not None
        await stage.task
        assert stage.stop_reason is StopReason.CANCELLED
        assert rig.runner.kills == [(key("a"), StopReason.CANCELLED)]

    run(scenario)


def test_watch_ticks_with_the_injected_clock() -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        rig.advance(TTL + 1)  # only the fake clock moved
        watch = asyncio.ensure_future(rig.sup.watch(lambda: 0.001))
        try:
            await rig.killed()
        finally:
            watch.cancel()
        assert stage.stop_reason is StopReason.LEASE_EXPIRED

    run(scenario)


# --------------------------------------------------------------------------- stages, results, credits


def test_duplicate_delivery_starts_nothing() -> None:
    async def scenario() -> None:
        rig = Rig()
        first = rig.sup.start(assignment("a"))
        assert first is not None
        assert rig.sup.start(assignment("a")) is None
        assert rig.sup.start(assignment("a", epoch=2)) is not None  # a new attempt is not a duplicate
        assert len(rig.sup.stages) == 2 and rig.sup.free_slots() == 2

    run(scenario)


def test_results_stay_in_the_outbox_until_acknowledged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        rig = Rig(slots=2)
        assert rig.sup.credits() == 2
        ok = rig.sup.start(assignment("ok"))
        bad = rig.sup.start(assignment("bad"))
        assert ok is not None and bad is not None
        assert (rig.sup.free_slots(), rig.sup.credits()) == (0, 0)
        rig.runner.exit(ok.key, 0)
        rig.runner.exit(bad.key, 3)
        assert ok.task is not None and bad.task is not None
        await asyncio.gather(ok.task, bad.task)
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 2
        assert {c.lease.task: c.outcome for c in msg.completions} == {"ok": "succeeded", "bad": "failed"}
        assert rig.uplink.take() is None
        # Not acknowledged yet: a fresh stream sends them again.
        assert {m.completions[0].lease.task for m in rig.sup.undelivered()} == {"ok", "bad"}
        rig.sup.ack(agent_pb2.CompletionAck(lease=ok.lease))
        with caplog.at_level(logging.WARNING, logger="agent.supervisor"):
            rig.sup.ack(agent_pb2.CompletionAck(lease=bad.lease, code=10, message="stale epoch"))
        assert rig.sup.outbox.items == {} and rig.sup.undelivered() == []
        assert "scheduler refused the result of r1/bad attempt 1: stale epoch" in caplog.text

    run(scenario)


# --------------------------------------------------------------------------- stopping


def test_drain_asks_stages_to_stop_releases_them_and_finishes_when_acknowledged() -> None:
    async def scenario() -> None:
        drained = asyncio.Event()
        changes: list[bool] = []
        rig = Rig(on_drained=drained.set, drain_grace=42.0)
        rig.sup.on_change = lambda: changes.append(rig.sup.draining)
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        assert rig.sup.drain("test")
        assert not rig.sup.drain("again")  # already draining
        assert changes == [True]  # the session sends a heartbeat (draining=true) at once
        assert rig.sup.credits() == 0
        # Asked to checkpoint and stop: SIGTERM first (the fake runner's kill), with the drain grace.
        await rig.killed()
        assert rig.runner.kills == [(stage.key, StopReason.DRAINING)]
        assert stage.task is not None
        await stage.task
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 0
        assert [(c.outcome, c.error) for c in msg.completions] == [("released", "agent draining")]
        assert not drained.is_set()  # its release is not acknowledged yet
        rig.sup.ack(agent_pb2.CompletionAck(lease=stage.lease))
        await asyncio.wait_for(drained.wait(), 5)
        # Work that arrives while draining is released at once, unstarted.
        assert rig.sup.start(assignment("late")) is None
        await asyncio.sleep(0)
        msg = rig.uplink.take()
        assert msg is not None and [(c.lease.task, c.outcome) for c in msg.completions] == [("late", "released")]

    run(scenario)


def test_a_draining_stage_keeps_its_lease_until_released() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.runner.hold_kills = True  # the stage takes its time to checkpoint
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        rig.sup.drain("test")
        await rig.killed()
        assert [r.task for r in rig.sup.held_leases()] == ["a"]  # renewed while it checkpoints
        rig.advance(TTL + 1)
        assert rig.sup.tick(rig.mono()) == []  # the watchdog leaves a stopping stage alone
        rig.runner.exit(stage.key, -15)
        assert stage.task is not None
        await stage.task
        assert rig.sup.held_leases() == []

    run(scenario)


def test_drain_with_nothing_running_finishes_at_once() -> None:
    async def scenario() -> None:
        drained = asyncio.Event()
        rig = Rig(on_drained=drained.set)
        assert rig.sup.drain("test") and rig.sup.draining
        await asyncio.wait_for(drained.wait(), 5)

    run(scenario)


def test_drain_gives_up_waiting_for_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_mod, "DRAIN_ACK_TIMEOUT_S", 0.05)

    async def scenario() -> None:
        drained = asyncio.Event()
        rig = Rig(on_drained=drained.set)
        stage = rig.sup.start(assignment("a"))
        assert stage is not None
        rig.sup.drain("test")
        await asyncio.wait_for(drained.wait(), 5)
        assert list(rig.sup.outbox.items) == [stage.key]  # undelivered, and the agent stops anyway

    run(scenario)


def test_stopping_the_agent_kills_every_stage_without_reporting() -> None:
    async def scenario() -> None:
        rig = Rig()
        a = rig.sup.start(assignment("a"))
        b = rig.sup.start(assignment("b"))
        assert a is not None and b is not None
        b.stop_reason = StopReason.TIMEOUT
        rig.sup.mark_all(StopReason.AGENT_STOPPED)
        assert a.stop_reason is StopReason.AGENT_STOPPED
        assert b.stop_reason is StopReason.TIMEOUT  # the first reason wins
        rig.runner.exit(a.key)  # exits by itself meanwhile: still not reported
        await rig.sup.kill_all(StopReason.AGENT_STOPPED)
        assert a.task is not None and b.task is not None
        await asyncio.gather(a.task, b.task)
        assert rig.sup.stages == {}
        assert list(rig.sup.outbox.items) == [b.key]  # a timed-out stage's result still counts

    run(scenario)


# --------------------------------------------------------------------------- health (issue 7, fault 7)


def test_an_unhealthy_agent_withholds_its_slots_and_releases_new_work() -> None:
    async def scenario() -> None:
        rig = Rig(slots=2)
        changes: list[str] = []
        rig.sup.on_change = lambda: changes.append(rig.sup.unhealthy)
        a = rig.sup.start(assignment("a"))
        assert a is not None
        rig.sup.set_unhealthy("cannot make a work dir in /x: Not a directory")
        assert changes == ["cannot make a work dir in /x: Not a directory"]  # a heartbeat goes at once
        rig.runner.exit(a.key)
        assert a.task is not None
        await a.task
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 0  # its slot is withheld
        # Work already on its way is given back at once, unstarted and uncharged.
        assert rig.sup.start(assignment("late")) is None
        await asyncio.sleep(0)
        msg = rig.uplink.take()
        assert msg is not None and [(c.lease.task, c.outcome) for c in msg.completions] == [("late", "released")]
        assert "agent unhealthy: cannot make a work dir" in msg.completions[0].error
        rig.sup.set_healthy()
        assert changes[-1] == ""
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 2  # every slot offered again
        assert rig.sup.credits() == 2
        # A fresh stream while unhealthy offers nothing, and gives it all back once healthy.
        rig.sup.set_unhealthy("disk nearly full")
        assert rig.sup.credits() == 0
        rig.sup.set_healthy()
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 2

    run(scenario)


# --------------------------------------------------------------------------- attempts of one task (invariant 3)


async def _until(predicate: Callable[[], object]) -> None:
    """Let the event loop run (no time passes on the fake clocks) until ``predicate``."""
    while not predicate():
        await asyncio.sleep(0)


@pytest.mark.parametrize("began", [False, True], ids=["cancel-before-it-began", "cancel-while-it-runs"])
@pytest.mark.parametrize("renewed", [False, True], ids=["never-renewed", "renewed-once"])
def test_a_newer_attempt_never_runs_beside_an_older_one(began: bool, renewed: bool) -> None:
    """The fault suite's interleaving: after a partition healed, attempt 2 of a task reached
    the agent, the scheduler cancelled it (its lease had expired: a heartbeat that crossed the
    assignment did not list it) and granted attempt 3 to the same agent; attempt 2 still
    started, or ran on through its SIGTERM grace, beside attempt 3. Messages arrive in that
    order: assignment 2, cancel 2, assignment 3."""

    async def scenario() -> None:
        rig = Rig()
        rig.runner.hold_kills = True  # a stage asked to stop (SIGTERM) takes its time, as a checkpointing one does
        two = rig.sup.start(assignment("t", epoch=2))
        assert two is not None
        if began:
            await _until(lambda: two.key in rig.runner.running)
        if renewed:  # a heartbeat renewed its lease: a cancel now may be an ordinary one (a grace)
            rig.advance(1.0)
            rig.sup.renewed(rig.wall() - 0.5, lost=[])
        rig.sup.cancelled([two.lease])
        three = rig.sup.start(assignment("t", epoch=3))
        assert three is not None
        await _until(lambda: three.key in rig.runner.running)
        assert rig.runner.overlaps == []  # attempt 3 started only once attempt 2 was gone
        assert two.task is not None and two.task.done()
        # Attempt 2 is killed (SIGKILL, no grace) once attempt 3 is here, if not before.
        assert rig.runner.graces[-1] == 0.0 and rig.runner.kills[-1][0] == two.key
        if not began:
            assert rig.runner.started == [three.key]  # attempt 2 never started at all
        rig.runner.exit(three.key, 0)
        assert three.task is not None
        await three.task
        msg = rig.uplink.take()
        assert msg is not None and [c.lease.epoch for c in msg.completions] == [3]  # 2 is not reported

    run(scenario)


def test_an_older_attempt_arriving_after_a_newer_one_never_starts() -> None:
    async def scenario() -> None:
        rig = Rig(slots=2)
        three = rig.sup.start(assignment("t", epoch=3))
        assert three is not None
        assert rig.sup.start(assignment("t", epoch=2)) is None
        await _until(lambda: three.key in rig.runner.running)
        assert rig.runner.started == [three.key]
        msg = rig.uplink.take()
        assert msg is not None and msg.credits == 1  # its slot was never taken: offered again

    run(scenario)


def test_a_stage_whose_lease_is_gone_is_killed_without_a_grace() -> None:
    """Lost (heartbeat reply), unknown (Register), expired (the watchdog): another attempt
    may already run, so SIGKILL at once; a cancel of an attempt a heartbeat renewed keeps
    the runner's grace (SIGTERM first: the run may have been cancelled by a user)."""

    async def scenario() -> None:
        rig = Rig()
        lost, unknown, expired, cancelled = (rig.sup.start(assignment(t)) for t in ("l", "u", "e", "c"))
        assert lost and unknown and expired and cancelled
        rig.advance(1.0)
        rig.sup.renewed(rig.wall() - 0.5, lost=[lost.lease])
        rig.sup.registered(lost=[unknown.lease])
        rig.sup.cancelled([cancelled.lease])
        rig.advance(TTL + 1)
        rig.sup.tick(rig.mono())
        await rig.killed(4)
        graces = dict(zip([k for k, _ in rig.runner.kills], rig.runner.graces))
        assert graces == {lost.key: 0.0, unknown.key: 0.0, expired.key: 0.0, cancelled.key: None}

    run(scenario)



@pytest.mark.parametrize("draining", [False, True])
def test_revoked_stops_every_stage_with_the_kill_grace_and_reports_none(draining: bool) -> None:
    """Revoked: every stage gets SIGTERM with the runner's kill grace (not SIGKILL at once, not the
    drain grace), a draining one too; none is reported (the scheduler requeued them)."""

    async def scenario() -> None:
        rig = Rig(drain_grace=42.0)
        rig.runner.hold_kills = True
        stages = [rig.sup.start(assignment("a")), rig.sup.start(assignment("b"))]
        assert all(s is not None for s in stages)
        if draining:
            rig.sup.drain("a preemption notice")
            await rig.killed(2)
        before = len(rig.runner.kills)
        rig.sup.revoked()
        await rig.killed(before + 2)
        assert rig.runner.kills[before:] == [(s.key, StopReason.REVOKED) for s in stages]  # type: ignore[union-attr]
        assert rig.runner.graces[before:] == [None, None]
        assert rig.sup.held_leases() == []  # no longer renewed: nothing of theirs is wanted
        for stage in stages:
            assert stage is not None and stage.task is not None
            rig.runner.exit(stage.key, -15)
            await stage.task
        assert rig.sup.stages == {} and rig.sup.outbox.items == {}
        msg = rig.uplink.take()
        assert msg is None or list(msg.completions) == []

    run(scenario)
