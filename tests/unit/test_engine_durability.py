"""The engine's side of issue 7: instance ids, unhealthy and draining agents, attempt history,
watch replay, and checkpoints.

Driven like tests/unit/test_engine.py (the same harness: a real SQLite file, fake clocks,
protobuf converted at the edge), with restarts where durability is the point.
"""
from __future__ import annotations

from typing import Any

import pytest

from outrider.errors import FailedPrecondition, NotFound, StaleEpoch
from outrider.pipeline import Pipeline
from outrider.protocol import Outcome
from outrider.v1 import common_pb2
from scheduler.api import wire
from scheduler.core.messages import Completion
from scheduler.core.model import AttemptState, TaskState
from scheduler.core.views import RunEvent
from tests.unit.test_engine import TTL, Harness, assigned, digest, done, h, ref  # noqa: F401  (h: fixture)

CAPS = common_pb2.Capabilities(cpu_cores=4, memory_bytes=2**34, slots=4)


def register(h: Harness, name: str, instance: str, leases: list[common_pb2.LeaseRef] | None = None) -> list[Any]:
    return h.engine.core.register(name, f"spiffe://test.ml/agent/{name}", wire.capabilities_from_proto(CAPS), (),
                                  wire.leases_from_proto(leases or []), instance)


def heartbeat(h: Harness, name: str, leases: list[common_pb2.LeaseRef], unhealthy: str = "",
              draining: bool = False) -> list[Any]:
    return h.engine.core.heartbeat(name, wire.leases_from_proto(leases), (), None, unhealthy, draining)


def one_task(name: str = "t", **kw: Any) -> Pipeline:
    p = Pipeline("p")
    p.task(name, run="true", **kw)
    return p


def info(h: Harness, name: str) -> Any:
    return next(a for a in h.engine.list_agents() if a.name == name)


# --------------------------------------------------------------------------- instance ids


def test_a_restarted_instance_takes_over_its_session_and_leases(h: Harness) -> None:
    async def body() -> None:
        register(h, "w1", "inst-A")
        old = h.engine.attach("w1")
        h.engine.add_credits(old, 1)
        run_id = await h.submit(one_task())
        await h.settle()
        lease = assigned(old)["t"].lease
        # The same instance registers again (its process restarted): the stale stream is closed,
        # its lease carries on.
        lost = register(h, "w1", "inst-A", leases=[lease])
        assert lost == []
        assert old.closed and h.engine.agents["w1"].channels == []
        t = h.engine.runs[run_id].tasks["t"]
        assert (t.state, t.attempts, t.agent) == (TaskState.RUNNING, 1, "w1")
        await h.engine.complete("w1", done(run_id, "t", 1))
        assert t.state is TaskState.SUCCEEDED

    h.run(body())


def test_another_instance_under_a_connected_name_is_refused_naming_both(h: Harness) -> None:
    async def body() -> None:
        register(h, "w1", "inst-A")
        ch = h.engine.attach("w1")
        with pytest.raises(FailedPrecondition) as info_:
            register(h, "w1", "inst-B")
        msg = str(info_.value)
        assert "inst-A" in msg and "inst-B" in msg and "w1" in msg
        assert h.engine.agents["w1"].instance_id == "inst-A" and not ch.closed  # nothing changed
        await h.settle()
        assert h.db_one("SELECT instance_id FROM agents WHERE name='w1'") == [("inst-A",)]

    h.run(body())


def test_a_new_instance_of_a_disconnected_name_takes_over_and_the_old_leases_end_at_once(h: Harness) -> None:
    async def body() -> None:
        register(h, "w1", "inst-A")
        ch = h.engine.attach("w1")
        h.engine.add_credits(ch, 1)
        run_id = await h.submit(one_task())
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 1
        h.engine.detach(ch)  # the old instance is gone (its machine rebooted with a fresh disk)
        register(h, "w1", "inst-B")
        t = h.engine.runs[run_id].tasks["t"]
        # At once, not at lease expiry: its stage died with the old instance.
        assert (t.state, t.attempts, t.failures) == (TaskState.READY, 1, 0)
        assert t.history[-1].state is AttemptState.LOST and "inst-A" in t.history[-1].error
        assert h.engine.agents["w1"].instance_id == "inst-B"
        await h.settle()
        assert h.db_one("SELECT instance_id FROM agents WHERE name='w1'") == [("inst-B",)]
        h.restart()
        assert h.engine.agents["w1"].instance_id == "inst-B"
        with pytest.raises(FailedPrecondition):  # once connected, the name is inst-B's
            h.engine.attach("w1")
            register(h, "w1", "inst-C")

    h.run(body())


def test_agents_without_an_instance_id_register_as_before(h: Harness) -> None:
    async def body() -> None:
        register(h, "w1", "")
        h.engine.attach("w1")
        register(h, "w1", "")
        register(h, "w1", "inst-A")  # adopted: nothing to compare against
        assert h.engine.agents["w1"].instance_id == "inst-A"

    h.run(body())


# --------------------------------------------------------------------------- unhealthy, draining


def test_an_unhealthy_agent_gets_no_work_and_says_why_until_it_recovers(h: Harness) -> None:
    async def body() -> None:
        sick = h.connect("sick", credits=2)
        heartbeat(h, "sick", [], unhealthy="disk full: cannot create work dir")
        assert info(h, "sick").unhealthy == "disk full: cannot create work dir"
        assert wire.agent_info_to_proto(info(h, "sick")).unhealthy.startswith("disk full")
        run_id = await h.submit(one_task())
        await h.settle()
        assert assigned(sick) == {}
        assert h.engine.explain(run_id, "t").reason == "no_free_slot"
        heartbeat(h, "sick", [])  # healthy again: its credits count again
        await h.settle()
        assert list(assigned(sick)) == ["t"]

    h.run(body())


def test_drain_stops_new_work_tells_the_agent_and_lasts_until_it_says_so(h: Harness) -> None:
    async def body() -> None:
        ch = h.connect("w1", credits=2)
        with pytest.raises(NotFound):
            h.engine.drain("nope")
        shown = h.engine.drain("w1")
        assert shown.draining
        msg = wire.scheduler_message(ch.take())
        assert msg.drain
        run_id = await h.submit(one_task())
        await h.settle()
        assert assigned(ch) == {}
        # A heartbeat sent before the drain arrived says "not draining": still draining.
        heartbeat(h, "w1", [], draining=False)
        assert info(h, "w1").draining
        # Reconnecting before it heard: told again.
        h.engine.detach(ch)
        ch2 = h.engine.attach("w1")
        assert wire.scheduler_message(ch2.take()).drain
        heartbeat(h, "w1", [], draining=True)  # it heard
        assert info(h, "w1").draining and not h.engine.agents["w1"].drain_requested
        # The agent restarted and drains no more: it takes work again.
        heartbeat(h, "w1", [], draining=False)
        h.engine.add_credits(ch2, 1)
        await h.settle()
        assert list(assigned(ch2)) == ["t"]
        assert h.engine.runs[run_id].tasks["t"].agent == "w1"

    h.run(body())


# --------------------------------------------------------------------------- attempt history


def test_a_lost_attempt_says_what_happened_in_the_history_and_after_a_restart(h: Harness) -> None:
    async def body() -> None:
        ch = h.connect("w1", credits=1)
        run_id = await h.submit(one_task())
        await h.settle()
        assigned(ch)
        h.mono.t += TTL + 1
        h.engine.tick()  # the lease expires: the attempt is lost, the task runs again
        ch2 = h.connect("w2", credits=1)
        await h.settle()
        assert assigned(ch2)["t"].lease.epoch == 2
        await h.engine.complete("w2", done(run_id, "t", 2))
        await h.settle()

        def check() -> None:
            (t,) = h.engine.run_status(run_id).tasks
            assert [(a.attempt, a.agent, a.state.value) for a in t.history] == [
                (1, "w1", "lost"), (2, "w2", "succeeded")]
            assert "lease expired" in t.history[0].error
            proto = wire.run_status_to_proto(h.engine.run_status(run_id)).tasks[0]
            assert [a.state for a in proto.history] == ["lost", "succeeded"]

        check()
        h.restart()
        check()

    h.run(body())


# --------------------------------------------------------------------------- watch replay


async def collect(it: Any, n: int) -> list[RunEvent]:
    out = []
    async for ev in it:
        out.append(ev)
        if len(out) == n:
            break
    return out


def test_a_watch_replays_the_durable_history_then_follows_live_without_gaps_or_duplicates(h: Harness) -> None:
    async def body() -> None:
        ch = h.connect("w1", credits=2)
        p = Pipeline("two")
        p.task("a", run="true")
        p.task("b", run="true", after=["a"])
        run_id = await h.submit(p)
        await h.settle()
        assigned(ch)
        await h.engine.complete("w1", done(run_id, "a", 1))
        await h.settle()
        recorded = [r.seq for r in h.store.events(run_id)]
        # Attach late: everything so far comes from the log, in order, each once.
        watcher, run = h.engine.watch(run_id, False)
        it = h.engine.follow(watcher, run, 0).__aiter__()
        replayed = await collect(it, len(recorded))
        assert [e.seq for e in replayed] == recorded
        # Then live: b completes, the run ends, and the stream with it.
        assigned(ch)
        await h.engine.complete("w1", done(run_id, "b", 1))
        rest = [e async for e in it]
        assert [e.seq for e in replayed + rest] == [r.seq for r in h.store.events(run_id)]
        assert (rest[-1].task, rest[-1].state) == ("", "succeeded")
        h.engine.unwatch(watcher)
        # Resume after a given event: only what came after it; a finished run ends the stream.
        watcher, run = h.engine.watch(run_id, False)
        again = [e async for e in h.engine.follow(watcher, run, recorded[2])]
        assert [e.seq for e in again] == [r.seq for r in h.store.events(run_id) if r.seq > recorded[2]]
        watcher, run = h.engine.watch(run_id, True)  # run-level only
        assert {e.task for e in [e async for e in h.engine.follow(watcher, run, 0)]} == {""}

    h.run(body())


def test_a_watch_survives_a_restart_by_resuming_after_its_last_event(h: Harness) -> None:
    async def body() -> None:
        ch = h.connect("w1", credits=1)
        run_id = await h.submit(one_task())
        await h.settle()
        assigned(ch)
        watcher, run = h.engine.watch(run_id, False)
        seen = await collect(h.engine.follow(watcher, run, 0), 3)  # running, ready, running
        h.restart()
        register(h, "w1", "", leases=[ref(run_id, "t", 1)])
        await h.engine.complete("w1", done(run_id, "t", 1))
        watcher, run = h.engine.watch(run_id, False)
        rest = [e async for e in h.engine.follow(watcher, run, seen[-1].seq)]
        assert [e.seq for e in seen + rest] == [r.seq for r in h.store.events(run_id)]
        assert rest[-1].state == "succeeded" and len({e.seq for e in seen + rest}) == len(seen + rest)
        # After another restart, a watch that already saw the end ends at once.
        await h.settle()
        h.restart()
        watcher, run = h.engine.watch(run_id, False)
        assert run.state_seq == rest[-1].seq
        assert [e async for e in h.engine.follow(watcher, run, rest[-1].seq)] == []

    h.run(body())


# --------------------------------------------------------------------------- checkpoints


def cp(run_id: str, epoch: int, seq: int, data: str = "ckpt", task: str = "t") -> Any:
    return wire.checkpoint_from_proto(common_pb2.Checkpoint(
        lease=ref(run_id, task, epoch), digest=digest(f"{data}{seq}"), size=10 * seq, kind="file", seq=seq,
        created_at=1_700_000_000.0))


def test_checkpoints_are_fenced_by_the_current_lease_and_the_next_attempt_resumes_from_the_latest(h: Harness) -> None:
    async def body() -> None:
        h.uploaded = set()
        ch = h.connect("w1", credits=1)
        run_id = await h.submit(one_task())
        await h.settle()
        assert not assigned(ch)["t"].HasField("resume_from")
        with pytest.raises(FailedPrecondition, match="upload"):
            h.engine.report_checkpoint("w1", cp(run_id, 1, 1))  # its bytes are not in the store
        h.uploaded |= {digest("ckpt1"), digest("ckpt2"), digest("ckpt3")}
        fut, note = h.engine.report_checkpoint("w1", cp(run_id, 1, 2))
        await fut
        assert note == ""
        fut, note = h.engine.report_checkpoint("w1", cp(run_id, 1, 1))  # older: answered, nothing changes
        await fut
        assert "not newer" in note
        t = h.engine.runs[run_id].tasks["t"]
        assert (t.checkpoint.lease.epoch, t.checkpoint.seq) == (1, 2)
        with pytest.raises(StaleEpoch):
            h.engine.report_checkpoint("w1", cp(run_id, 2, 3))  # not the current epoch
        with pytest.raises(StaleEpoch):
            h.engine.report_checkpoint("w2", cp(run_id, 1, 3))  # not the holder
        await h.settle()
        assert [r.state for r in h.store.events(run_id) if r.task == "t"][-1] == "checkpoint"
        # The agent is lost: the next attempt, elsewhere, resumes from the latest checkpoint.
        h.mono.t += TTL + 1
        h.engine.tick()
        ch2 = h.connect("w2", credits=1)
        await h.settle()
        a = assigned(ch2)["t"]
        assert (a.lease.epoch, a.resume_from.lease.epoch, a.resume_from.seq, a.resume_from.digest) == (
            2, 1, 2, digest("ckpt2"))
        # A checkpoint from the zombie first attempt is refused now.
        with pytest.raises(StaleEpoch):
            h.engine.report_checkpoint("w1", cp(run_id, 1, 3))
        status = wire.run_status_to_proto(h.engine.run_status(run_id)).tasks[0]
        assert (status.checkpoint.seq, status.resumed_from.seq, status.resumed_from.lease.epoch) == (2, 2, 1)
        h.restart()
        t = h.engine.runs[run_id].tasks["t"]
        assert (t.checkpoint.seq, t.resumed_from.digest, t.history[-1].resumed_from.seq) == (2, digest("ckpt2"), 2)
        assert h.engine.run_status(run_id).tasks[0].resumed_from == t.resumed_from

    h.run(body())


def test_checkpoint_bytes_carry_the_residency_of_their_task(h: Harness) -> None:
    async def body() -> None:
        h.register("eu1")
        eu = h.engine.attach("eu1")
        h.engine.core.registry.apply_caps(h.engine.agents["eu1"], wire.capabilities_from_proto(
            common_pb2.Capabilities(cpu_cores=4, memory_bytes=2**34, slots=2, zones=["eu"])))
        h.engine.add_credits(eu, 1)
        h.register("us1")
        p = Pipeline("resident")
        p.task("t", run="true", requires={"residency": ["eu"]})
        run_id = await h.submit(p)
        await h.settle()
        assert assigned(eu)["t"].lease.epoch == 1
        fut, _ = h.engine.report_checkpoint("eu1", cp(run_id, 1, 1))
        await fut
        assert h.engine.may_download("eu1", digest("ckpt1")) is None
        assert "zones" in (h.engine.may_download("us1", digest("ckpt1")) or "")
        h.restart()
        assert "zones" in (h.engine.may_download("us1", digest("ckpt1")) or "")

    h.run(body())


def test_a_refused_commit_shows_nothing_of_its_change(h: Harness) -> None:
    """Belt and braces: were a bad value to get past the edge, the store refuses that one change,
    its ack fails (INTERNAL), and the scheduler goes on."""
    from scheduler.store.base import WriteRefused

    async def body() -> None:
        ch = h.connect("w1", credits=1)
        run_id = await h.submit(one_task())
        await h.settle()
        assigned(ch)
        bad = Completion(lease=wire.lease_from_proto(ref(run_id, "t", 1)), outcome=Outcome.SUCCEEDED,
                         started_at=float("nan"), finished_at=1.0)  # as if the edge had let it through
        h.engine.agents["w1"].sched_offset = 0.0
        fut = h.engine.core.complete("w1", bad)
        with pytest.raises(WriteRefused):
            await fut
        assert h.store.refused == 1
        other = await h.submit(one_task("u"))  # the scheduler goes on
        assert other in h.engine.runs

    h.run(body())
