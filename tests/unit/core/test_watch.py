"""scheduler.core.watch.Watchers alone: who is handed which event, and log followers.

Watchers' queues are asyncio queues; filling and draining them with ``put_nowait`` /
``get_nowait`` needs no running loop.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from scheduler.core.model import Run, RunState, Task, TaskState
from scheduler.core.spec import Needs, PipelineSpec, TaskSpec
from scheduler.core.views import LogLine, RunEvent
from scheduler.core.watch import Watchers

T = TypeVar("T")


def make_run(run_id: str = "r1") -> Run:
    ts = TaskSpec("a", ("true",))
    run = Run(run_id, "p", PipelineSpec("p", (ts,)), "alice", 1.0, "tr", 1)
    run.tasks["a"] = Task(run_id, "a", ts, Needs(), 0, Needs())
    return run


def drain(q: asyncio.Queue[T]) -> list[T]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_wants_says_whether_anyone_watches_for_such_an_event() -> None:
    ws = Watchers()
    assert not ws.wants("r1", task_event=False)
    run_only = ws.watch("r1", run_only=True)
    assert ws.wants("r1", task_event=False)
    assert not ws.wants("r1", task_event=True)
    full = ws.watch("r1", run_only=False)
    assert ws.wants("r1", task_event=True)
    assert not ws.wants("r2", task_event=False)
    ws.unwatch(full)
    assert not ws.wants("r1", task_event=True)
    ws.unwatch(run_only)
    ws.unwatch(run_only)  # twice: harmless
    assert not ws.wants("r1", task_event=False)


def test_run_only_watchers_skip_task_events() -> None:
    ws = Watchers()
    run = make_run()
    run_only, full = ws.watch("r1", run_only=True), ws.watch("r1", run_only=False)
    task_ev, run_ev = RunEvent("r1", "a", "running", 1, "ag"), RunEvent("r1", "", "running")
    ws.publish(run, task_ev)
    ws.publish(run, run_ev)
    assert drain(run_only.queue) == [run_ev]
    assert drain(full.queue) == [task_ev, run_ev]


def test_events_go_only_to_the_runs_own_watchers() -> None:
    ws = Watchers()
    mine, other = ws.watch("r1", run_only=False), ws.watch("r2", run_only=False)
    ws.publish(make_run("r1"), RunEvent("r1", "", "running"))
    assert len(drain(mine.queue)) == 1
    assert drain(other.queue) == []


def test_the_terminal_run_event_carries_a_snapshot_of_the_run() -> None:
    ws = Watchers()
    run = make_run()
    w = ws.watch("r1", run_only=False)
    ws.publish(run, RunEvent("r1", "", "running"))  # run still running: no snapshot
    run.tasks["a"].state = TaskState.SUCCEEDED
    run.state, run.finished_at = RunState.SUCCEEDED, 9.0
    ws.publish(run, RunEvent("r1", "a", "succeeded"))  # a task event: no snapshot
    ws.publish(run, RunEvent("r1", "", "succeeded"))
    first, task_ev, last = drain(w.queue)
    assert first.snapshot is None and task_ev.snapshot is None
    assert last.snapshot is not None
    assert (last.snapshot.state, last.snapshot.finished_at) == ("succeeded", 9.0)
    assert [(ts.name, ts.state) for ts in last.snapshot.tasks] == [("a", "succeeded")]


def test_log_followers_get_their_tasks_lines_then_none_when_it_ends() -> None:
    ws = Watchers()
    f = ws.follow("r1", "a")
    other = ws.follow("r1", "b")
    assert ws.following("r1", "a")
    assert not ws.following("r1", "c")
    line1, line2 = LogLine(1, "stdout", b"hello\n", 5.0), LogLine(1, "stderr", b"oops\n", 6.0)
    ws.log("r1", "a", line1)
    ws.log("r1", "a", line2)
    ws.task_ended("r1", "a")
    assert drain(f.queue) == [line1, line2, None]
    assert drain(other.queue) == []


def test_unfollow_stops_the_lines() -> None:
    ws = Watchers()
    f1, f2 = ws.follow("r1", "a"), ws.follow("r1", "a")
    ws.unfollow(f1)
    assert ws.following("r1", "a")
    ws.log("r1", "a", LogLine(1, "stdout", b"x", 1.0))
    assert drain(f1.queue) == []
    assert len(drain(f2.queue)) == 1
    ws.unfollow(f2)
    assert not ws.following("r1", "a")
    ws.log("r1", "a", LogLine(1, "stdout", b"y", 2.0))  # nobody follows: dropped, no error


def test_a_watcher_can_await_its_events_on_a_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        ws = Watchers()
        w = ws.watch("r1", run_only=True)
        ev = RunEvent("r1", "", "cancelled")

        async def wait_for_event() -> RunEvent:
            return await asyncio.wait_for(w.queue.get(), 5)

        fut = loop.create_task(wait_for_event())
        loop.call_soon(ws.publish, make_run(), ev)
        assert loop.run_until_complete(fut) is ev
    finally:
        loop.close()


# --------------------------------------------------------------------------- replay, then follow


def test_replay_then_follow_has_no_gap_and_no_duplicate_when_events_land_during_the_read() -> None:
    """Events committed while the history is being read reach both the read and the queue:
    each is yielded once, in seq order, and the stream ends with the run."""
    from scheduler.core.watch import replay_then_follow

    ws = Watchers()
    run = make_run()
    log = [RunEvent("r1", "", "running", seq=1), RunEvent("r1", "a", "ready", seq=2)]
    w = ws.watch("r1", run_only=False)

    async def barrier() -> None:
        return None

    async def history(after: int, limit: int) -> list[RunEvent]:
        # While the read runs, two more events are committed (into the log) and published.
        for ev in (RunEvent("r1", "a", "running", seq=3), RunEvent("r1", "a", "succeeded", seq=4)):
            if ev not in log:
                log.append(ev)
                ws.publish(run, ev)
        return [e for e in log if e.seq > after][:limit]

    async def main() -> list[int]:
        seen = []
        async for ev in replay_then_follow(w, run, 0, barrier, history):
            seen.append(ev.seq)
            if ev.seq == 4:  # then the run ends, live
                run.state, run.state_seq = RunState.SUCCEEDED, 5
                ws.publish(run, RunEvent("r1", "", "succeeded", seq=5))
        return seen

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]


def test_replay_of_an_ended_run_ends_after_its_last_event_and_resumes_after_a_seq() -> None:
    from scheduler.core.watch import replay_then_follow

    ws = Watchers()
    run = make_run()
    run.state, run.state_seq = RunState.FAILED, 3
    log = [RunEvent("r1", "", "running", seq=1), RunEvent("r1", "a", "failed", seq=2),
           RunEvent("r1", "", "failed", seq=3)]

    async def barrier() -> None:
        return None

    async def history(after: int, limit: int) -> list[RunEvent]:
        return [e for e in log if e.seq > after][:limit]

    async def collect(after: int, run_only: bool) -> list[int]:
        w = ws.watch("r1", run_only)
        return [ev.seq async for ev in replay_then_follow(w, run, after, barrier, history)]

    assert asyncio.run(collect(0, False)) == [1, 2, 3]
    assert asyncio.run(collect(1, False)) == [2, 3]
    assert asyncio.run(collect(0, True)) == [1, 3]
    assert asyncio.run(collect(3, False)) == []  # nothing after its last event: it ends at once
