"""The scheduler's side of issue 10's CLI views, without processes: the global event stream
(scheduler.core.events), lineage walks (scheduler.core.lineage), prefixes (scheduler.core.prefixes)
and the store's range reads behind them (SQLite)."""

from __future__ import annotations

import asyncio

import pytest

from outrider.errors import InvalidArgument, NotFound
from scheduler.core import lineage, prefixes
from scheduler.core.events import FEED_LIMIT, EventFeed, event_stream, placement_message, placement_score
from scheduler.core.model import Output, Placement, Run, Task, TaskState
from scheduler.core.spec import InputRef, Needs, PipelineSpec, TaskSpec
from scheduler.core.views import RunEvent
from scheduler.core.watch import Watchers
from scheduler.matcher import AgentView
from tests.helpers.backends import Backend

# ------------------------------------------------------------------ events


def ev(seq: int, run: str = "r1", task: str = "a", state: str = "running") -> RunEvent:
    return RunEvent(run, task, state, 1, "ag", "", float(seq), seq=seq)


def collect(agen, n: int) -> list[RunEvent]:  # type: ignore[no-untyped-def]
    async def go() -> list[RunEvent]:
        out = []
        async for e in agen:
            out.append(e)
            if len(out) == n:
                break
        await agen.aclose()
        return out

    return asyncio.run(asyncio.wait_for(go(), 10))


def test_history_then_live_each_once_in_order_and_filtered() -> None:
    recorded = [ev(1), ev(2, "r2"), ev(3)]
    feed = EventFeed()

    async def barrier() -> None:
        # Published after the subscription: 3 is in the history too (dropped), 4 and 5 are new.
        for e in (ev(3), ev(4, "r2"), ev(5)):
            feed.publish(e)

    async def history(after: int, limit: int) -> list[RunEvent]:
        return [e for e in recorded if e.seq > after][:limit]

    stream = event_stream(feed, 0, True, barrier, history, lambda e: e.run_id == "r1")
    got = collect(stream, 3)
    assert [e.seq for e in got] == [1, 3, 5]
    assert not feed, "the subscriber is gone once the stream is closed"


def test_without_follow_the_stream_ends_after_the_history() -> None:
    feed = EventFeed()

    async def barrier() -> None:
        return None

    async def history(after: int, limit: int) -> list[RunEvent]:
        return [ev(s) for s in range(after + 1, 6)][:limit]

    async def go() -> list[int]:
        return [e.seq async for e in event_stream(feed, 2, False, barrier, history, lambda e: True)]

    assert asyncio.run(go()) == [3, 4, 5]


def test_a_subscriber_that_falls_behind_catches_up_from_the_store() -> None:
    feed = EventFeed()
    recorded: list[RunEvent] = []
    n = FEED_LIMIT + 50

    async def barrier() -> None:
        return None

    async def history(after: int, limit: int) -> list[RunEvent]:
        return [e for e in recorded if e.seq > after][:limit]

    async def go() -> list[int]:
        stream = event_stream(feed, 0, True, barrier, history, lambda e: True)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # subscribed, waiting on its queue
        (sub,) = feed.subscribers
        for s in range(1, n + 1):  # recorded and published while the reader does not read
            recorded.append(ev(s))
            feed.publish(ev(s))
        assert sub.behind and sub.queue.qsize() == FEED_LIMIT + 1
        seqs = [(await first).seq]
        while seqs[-1] < n:
            seqs.append((await stream.__anext__()).seq)
        await stream.aclose()
        return seqs

    assert asyncio.run(go()) == list(range(1, n + 1))


def test_watchers_hand_every_event_to_the_feed() -> None:
    ws = Watchers()
    ts = TaskSpec("a", ("true",))
    run = Run("r1", "p", PipelineSpec("p", (ts,)), "alice", 1.0, "tr", 1)
    assert not ws.wants("r1", task_event=True)
    sub = ws.feed.subscribe()
    assert ws.wants("r1", task_event=True) and ws.wants("zz", task_event=False)
    ws.publish(run, ev(1))
    assert sub.queue.get_nowait().seq == 1
    ws.feed.unsubscribe(sub)
    assert not ws.wants("r1", task_event=True)


def test_a_placement_says_its_score_and_it_reads_back() -> None:
    view = AgentView("ag", 4.0, 0, 0, 0, {}, running=1, free_slots=3)
    msg = placement_message(Placement(), view)
    # No inputs: nothing to fetch (locality and transfer whole); a quarter busy.
    assert msg == "placed with score 3.375 (locality 2.000, transfer 1.000, affinity 0.000, load 0.375)", msg
    assert placement_score("running", msg) == pytest.approx(3.375)
    assert placement_score("succeeded", msg) == 0.0
    assert placement_score("running", "") == 0.0


# ------------------------------------------------------------------ lineage


def _run(run_id: str, submitter: str = "alice", code: str = "c" * 64) -> Run:
    """prep -> train -> eval, all succeeded: prep makes d1, train d2 (from d1), eval d3 (from d2)."""
    specs = (
        TaskSpec("prep", ("python", "prep.py"), outputs=("data",)),
        TaskSpec("train", ("python", "train.py"), inputs=(("data", InputRef("prep", "data")),), outputs=("model",)),
        TaskSpec("eval", ("python", "eval.py"), inputs=(("model", InputRef("train", "model")),), outputs=("score",)),
    )
    run = Run(run_id, "pipe", PipelineSpec("pipe", specs, code_digest=code), submitter, 1.0, "tr", 1)
    for i, (ts, digest) in enumerate(zip(specs, ("1" * 64, "2" * 64, "3" * 64), strict=True)):
        t = Task(run_id, ts.name, ts, Needs(), i, Needs(), state=TaskState.SUCCEEDED, attempts=1, agent=f"ag{i}")
        t.outputs = {ts.outputs[0]: Output(ts.outputs[0], digest, 10 + i, "file")}
        run.tasks[ts.name] = t
    return run


def test_lineage_up_walks_to_the_raw_inputs() -> None:
    runs = {"r1": _run("r1")}
    lin = lineage.walk(runs, "3" * 64)
    assert [(s.task, s.depth) for s in lin.steps] == [("eval", 1), ("train", 2), ("prep", 3)]
    eval_step = lin.steps[0]
    assert eval_step.command == ("python", "eval.py") and eval_step.agent == "ag2" and eval_step.attempt == 1
    assert [(a.name, a.digest) for a in eval_step.inputs] == [("model", "2" * 64)]
    assert lin.raw_inputs == ["c" * 64] and not lin.truncated and lin.direction == "up"


def test_lineage_down_finds_everything_derived_across_runs() -> None:
    runs = {"r1": _run("r1"), "r2": _run("r2")}  # the same bytes made twice: both runs' tasks
    lin = lineage.walk(runs, "1" * 64, down=True)
    assert sorted((s.run_id, s.task, s.depth) for s in lin.steps) == [
        ("r1", "eval", 2),
        ("r1", "train", 1),
        ("r2", "eval", 2),
        ("r2", "train", 1),
    ]
    code = lineage.walk(runs, "c" * 64, down=True)  # a code bundle: every task shipped with it
    assert len(code.steps) == 6


def test_lineage_is_bounded_and_owner_scoped() -> None:
    runs = {"r1": _run("r1"), "r2": _run("r2", submitter="bob")}
    short = lineage.walk(runs, "3" * 64, max_depth=2)
    assert [s.task for s in short.steps] == ["eval", "eval", "train", "train"]
    assert "depth 2" in short.truncated
    few = lineage.walk(runs, "3" * 64, max_steps=3)
    assert len(few.steps) == 3 and "3 steps" in few.truncated
    bobs = lineage.walk(runs, "3" * 64, visible=lambda r: r.submitter == "bob")
    assert {s.run_id for s in bobs.steps} == {"r2"}
    with pytest.raises(NotFound, match="no artifact"):
        lineage.walk(runs, "3" * 64, visible=lambda r: r.submitter == "carol")
    with pytest.raises(NotFound):
        lineage.walk(runs, "f" * 64)


def test_lineage_survives_a_cycle() -> None:
    run = _run("r1")
    # A hand-made cycle (a run cannot have one): prep claims train's output as its input.
    prep = run.tasks["prep"]
    prep.spec = TaskSpec("prep", ("x",), inputs=(("m", InputRef("train", "model")),), outputs=("data",))
    lin = lineage.walk({"r1": run}, "3" * 64)
    assert sorted(s.task for s in lin.steps) == ["eval", "prep", "train"]


# ------------------------------------------------------------------ prefixes


def test_prefixes_are_checked() -> None:
    assert prefixes.normalise("run", "18f3") == "run-18f3"
    assert prefixes.normalise("run", "run-18f3a") == "run-18f3a"
    assert prefixes.normalise("artifact", "sha256:ABCD") == "abcd"
    for kind, bad, why in (
        ("run", "run-1", "too short"),
        ("run", "x!yz", "no run id"),
        ("artifact", "abc", "too short"),
        ("artifact", "xyz12", "no artifact digest"),
        ("blob", "abcd", "kind must be"),
        ("artifact", "a" * 200, "over the limit"),
    ):
        with pytest.raises(InvalidArgument, match=why):
            prefixes.normalise(kind, bad)


def _lookup(keys: list[str]):  # type: ignore[no-untyped-def]
    async def lookup(prefix: str, after: str, limit: int) -> list[str]:
        low, high = prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return sorted(k for k in keys if low <= k < high and k > after)[:limit]

    return lookup


def test_resolve_unique_ambiguous_unseen_and_too_many() -> None:
    keys = ["abcd" + "0" * 60, "abce" + "0" * 60, "abce" + "1" * 60]
    go = asyncio.run
    assert go(prefixes.resolve("artifact", "abcd", _lookup(keys), lambda k: True)) == keys[0]
    with pytest.raises(InvalidArgument, match="ambiguous: 2 match") as exc:
        go(prefixes.resolve("artifact", "abce", _lookup(keys), lambda k: True))
    assert keys[1] in str(exc.value) and keys[2] in str(exc.value)
    # Another's keys are not seen: one left is unique; none left reads as absent.
    assert go(prefixes.resolve("artifact", "abce", _lookup(keys), lambda k: k != keys[1])) == keys[2]
    with pytest.raises(NotFound, match="no artifact 'abce'"):
        go(prefixes.resolve("artifact", "abce", _lookup(keys), lambda k: False))
    runs = ["run-18f3a-abcdef", "run-18f3a-abcd00", "run-18f3b-000000"]
    asked: list[str] = []

    async def lookup(prefix: str, after: str, limit: int) -> list[str]:
        asked.append(prefix)
        return await _lookup(runs)(prefix, after, limit)

    assert go(prefixes.resolve("run", "18f3a-abcde", lookup, lambda k: True)) == runs[0]
    with pytest.raises(InvalidArgument, match="ambiguous: 2 match"):
        go(prefixes.resolve("run", "run-18f3a-", lookup, lambda k: True))
    assert asked[-1] == "run-18f3a"  # read without the trailing dash, filtered with it
    many = [f"abcd{i:060x}" for i in range(prefixes.PAGE * prefixes.PAGES + 5)]
    with pytest.raises(InvalidArgument, match="more than 2000"):
        go(prefixes.resolve("artifact", "abcd", _lookup(many), lambda k: k == many[-1]))
    with pytest.raises(InvalidArgument, match="more than 10 match"):
        go(prefixes.resolve("artifact", "abcd", _lookup(many), lambda k: True))


def test_the_store_reads_prefix_ranges_and_every_event(backend: Backend) -> None:
    store = backend.open()
    try:
        for d in ("abcd" + "0" * 60, "abce" + "0" * 60, "abcf" + "0" * 60, "abd0" + "0" * 60):
            backend.execute(
                "INSERT INTO artifacts(digest, size, kind, created_at) VALUES (?,?,?,?)", (d, 1, "file", 1.0)
            )
        for seq, run in ((1, "r1"), (2, "r2"), (3, "r1")):
            backend.execute(
                "INSERT INTO events(seq, ts, run_id, task, state, attempt, agent, detail) VALUES (?,?,?,?,?,?,?,?)",
                (seq, 1.0, run, "a", "running", 1, "ag", "placed with score 1.000 (load 1.000)"),
            )
        assert store.with_prefix("artifact", "abce", "", 10) == ["abce" + "0" * 60]
        assert store.with_prefix("artifact", "abc", "", 2) == ["abcd" + "0" * 60, "abce" + "0" * 60]
        assert store.with_prefix("artifact", "abc", "abce" + "0" * 60, 10) == ["abcf" + "0" * 60]
        assert store.with_prefix("run", "run-1", "", 10) == []
        assert [e.seq for e in store.all_events(1, 10)] == [2, 3]
        assert [e.run_id for e in store.all_events(0, 2)] == ["r1", "r2"]
        if backend.name == "sqlite":  # a range on the primary key's index, not a scan
            plan = backend.read(
                "EXPLAIN QUERY PLAN SELECT digest FROM artifacts WHERE digest >= ? AND digest < ? AND digest > ?"
                " ORDER BY digest LIMIT ?",
                ("abc", "abd", "", 10),
            )
            assert any("SEARCH" in str(r) for r in plan), plan
    finally:
        store.close()
