"""Placement policy of scheduler.core.engine.Engine, driven directly with fake clocks.

Delay scheduling for data locality, priorities, fair share between tenants,
per-run concurrency, admission control, infeasible tasks, residency travelling
with data, clock_suspect agents, and what ``explain`` says about each.

As in test_engine.py: a real Store on a SQLite file, fake monotonic and wall
clocks the test moves by hand, a seeded RNG; no processes, no network, no
sleeping. An agent that finishes a task asks for work again, as the real agent
does: :meth:`Harness.finish` completes the task and returns the slot's credit.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path
from typing import Any, Coroutine, Iterator

import pytest

from outrider.errors import FailedPrecondition, ResourceExhausted
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2, common_pb2
from scheduler.core.channel import Channel
from scheduler.core.engine import Engine
from scheduler.core.model import RunState, TaskState
from scheduler.store.sqlite import SqliteStore as Store
from tests.helpers.fake_clock import FakeClock
from tests.helpers.wire_engine import WireEngine, take

GiB = 2**30
MB = 10**6
MONO0 = 1000.0
WALL0 = 1_700_000_000.0
WAIT = 5.0


class Harness:
    def __init__(self, db: Path, loop: asyncio.AbstractEventLoop, **engine_kw: Any) -> None:
        self.loop = loop
        self.mono = FakeClock(MONO0)
        self.wall = FakeClock(WALL0)
        self.store = Store(db)
        kw: dict[str, Any] = {"placement_wait": WAIT, **engine_kw}
        self.engine = WireEngine(Engine(self.store, lease_ttl=10.0, heartbeat_interval=2.0, clock=self.mono,
                                        wall=self.wall, rng=random.Random(0), **kw))
        self.store.start(loop)
        self.engine.start(loop)
        self.channels: dict[str, Channel] = {}

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    async def settle(self) -> None:
        for _ in range(4):
            for _ in range(3):
                await asyncio.sleep(0)
            await self.store.barrier()

    def advance(self, seconds: float) -> None:
        self.mono.t += seconds
        self.wall.t += seconds
        self.engine.tick()

    def register(self, name: str, *, cpus: int = 4, slots: int = 4, labels: dict[str, str] | None = None,
                 zones: tuple[str, ...] = (), cached: dict[str, int] | None = None,
                 clocks: list[common_pb2.ClockSample] | None = None, bandwidth: float = 0.0) -> None:
        caps = common_pb2.Capabilities(
            cpu_cores=cpus, memory_bytes=16 * GiB, disk_free_bytes=100 * GiB, slots=slots, labels=labels or {},
            zones=list(zones), bandwidth_bps=bandwidth,
            cached=[common_pb2.ArtifactRef(digest=d, size=s, kind="file") for d, s in (cached or {}).items()],
        )
        self.engine.register(name, f"spiffe://test.ml/agent/{name}", caps, clocks or [], [])

    def connect(self, name: str, credits: int | None = None, **caps: Any) -> Channel:
        if name not in self.engine.agents:
            self.register(name, **caps)
        ch = self.engine.attach(name)
        self.engine.add_credits(ch, caps.get("slots", 4) if credits is None else credits)
        self.channels[name] = ch
        return ch

    async def submit(self, p: Pipeline, submitter: str = "alice") -> str:
        run_id, _ = await self.engine.submit(p.to_proto(), submitter)
        return run_id

    async def finish(self, agent: str, run_id: str, task: str, *outputs: tuple[str, str, int]) -> None:
        """Complete the task's current attempt as succeeded and give its slot back."""
        t = self.engine.runs[run_id].tasks[task]
        c = agent_pb2.Completion(
            lease=common_pb2.LeaseRef(run_id=run_id, task=task, epoch=t.attempts), outcome="succeeded",
            outputs=[common_pb2.ArtifactRef(name=n, digest=d, size=s, kind="file") for n, d, s in outputs],
        )
        await self.engine.complete(agent, c)
        self.engine.add_credits(self.channels[agent], 1)
        await self.settle()


def taken(ch: Channel) -> list[tuple[str, str]]:
    """(run id, task) of the assignments waiting on a channel, in order."""
    return [(a.lease.run_id, a.lease.task) for a in take(ch).assignments]


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture
def make(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    made: list[Harness] = []

    def factory(**engine_kw: Any) -> Harness:
        h = Harness(tmp_path / f"sched{len(made)}.db", loop, **engine_kw)
        made.append(h)
        return h

    try:
        yield factory
    finally:
        for h in made:
            h.store.close()


# --------------------------------------------------------------------------- delay scheduling


def producer_consumer() -> Pipeline:
    p = Pipeline("locality")
    p.task("make", run="true", outputs=["big"], requires={"labels": {"owner": "a"}})
    p.task("use", run="true", inputs={"big": "make.big"}, requires={"labels": {"pool": "x"}})
    return p


def test_task_waits_for_the_agent_holding_its_data_while_another_polls(make: Any) -> None:
    h = make()

    async def body() -> None:
        run_id = await h.submit(producer_consumer())
        a = h.connect("a", slots=1, labels={"pool": "x", "owner": "a"})
        b = h.connect("b", slots=2, labels={"pool": "x", "owner": "b"})
        await h.settle()
        assert taken(a) == [(run_id, "make")] and taken(b) == []
        # The output (200 MB) is in a's cache once it completes; b asks for work first.
        await h.engine.complete("a", agent_pb2.Completion(
            lease=common_pb2.LeaseRef(run_id=run_id, task="make", epoch=1), outcome="succeeded",
            outputs=[common_pb2.ArtifactRef(name="big", digest=digest("big"), size=200 * MB, kind="file")]))
        await h.settle()
        assert h.engine.runs[run_id].tasks["use"].state is TaskState.READY
        assert taken(b) == []  # b has credit, but "use" waits for a
        ex = h.engine.explain(run_id, "use")
        assert ex.reason == "waiting_for_better_agent", ex
        assert "waiting for a," in ex.message
        assert ex.until == pytest.approx(WALL0 + WAIT)
        h.advance(1.0)
        h.engine.add_credits(a, 1)  # a's slot comes back before the bound
        await h.settle()
        assert taken(a) == [(run_id, "use")]
        assert h.engine.runs[run_id].tasks["use"].agent == "a"
        ex = h.engine.explain(run_id, "use")
        assert ex.reason == "placed" and ex.agent == "a" and "running on a" in ex.message

    h.run(body())


def test_task_goes_to_a_worse_agent_once_the_wait_bound_passes(make: Any) -> None:
    h = make()

    async def body() -> None:
        run_id = await h.submit(producer_consumer())
        a = h.connect("a", slots=1, labels={"pool": "x", "owner": "a"})
        b = h.connect("b", slots=2, labels={"pool": "x", "owner": "b"})
        await h.settle()
        assert taken(a) == [(run_id, "make")]
        # a completes but its slot stays busy (no credit back): a is busy.
        await h.engine.complete("a", agent_pb2.Completion(
            lease=common_pb2.LeaseRef(run_id=run_id, task="make", epoch=1), outcome="succeeded",
            outputs=[common_pb2.ArtifactRef(name="big", digest=digest("big"), size=200 * MB, kind="file")]))
        await h.settle()
        assert taken(b) == []
        h.advance(WAIT - 0.5)
        await h.settle()
        assert taken(b) == []
        assert h.engine.explain(run_id, "use").reason == "waiting_for_better_agent"
        h.advance(0.5)
        await h.settle()
        assert taken(b) == [(run_id, "use")]
        assert h.engine.runs[run_id].tasks["use"].agent == "b"

    h.run(body())


def test_task_without_inputs_or_preferences_never_waits(make: Any) -> None:
    h = make()

    async def body() -> None:
        p = Pipeline("plain")
        p.task("x", run="true")
        run_id = await h.submit(p)
        b = h.connect("b", slots=1)
        await h.settle()
        assert taken(b) == [(run_id, "x")]

    h.run(body())


def test_preferred_agent_is_waited_for_then_given_up(make: Any) -> None:
    h = make()

    async def body() -> None:
        a = h.connect("a", credits=0, slots=1, labels={"site": "fast"})
        b = h.connect("b", slots=1, labels={"site": "slow"})
        p = Pipeline("pref")
        p.task("x", run="true", prefer=["site = fast"])
        run_id = await h.submit(p)
        await h.settle()
        assert taken(b) == []
        assert h.engine.explain(run_id, "x").reason == "waiting_for_better_agent"
        h.advance(WAIT)
        await h.settle()
        assert taken(b) == [(run_id, "x")]
        assert not a.has_assignments()

    h.run(body())


def test_avoided_agent_waits_for_one_it_does_not_avoid_then_gives_up(make: Any) -> None:
    h = make()

    async def body() -> None:
        good = h.connect("good", credits=0, slots=1, labels={"tier": "gpu"})
        edge = h.connect("edge", slots=1, labels={"tier": "edge"})
        p = Pipeline("avoid")
        p.task("x", run="true", avoid=["tier = edge"])
        run_id = await h.submit(p)
        await h.settle()
        assert taken(edge) == []  # edge polled, but the task avoids it while `good` exists
        why = h.engine.explain(run_id, "x")
        assert why.reason == "waiting_for_better_agent" and "good" in why.message
        h.advance(WAIT)
        await h.settle()
        assert taken(edge) == [(run_id, "x")]  # good stayed busy: the avoided agent takes it
        assert not good.has_assignments()

    h.run(body())


# --------------------------------------------------------------------------- priority, fair share, concurrency


def one(name: str, *, priority: int = 0, tenant: str = "", n: int = 1, concurrency: int | None = None) -> Pipeline:
    p = Pipeline(name, priority=priority, tenant=tenant, concurrency=concurrency)
    for i in range(n):
        p.task(f"t{i}", run="true")
    return p


def test_higher_priority_run_goes_first_when_a_slot_frees(make: Any) -> None:
    h = make()

    async def body() -> None:
        w = h.connect("w", slots=1)
        busy = await h.submit(one("busy"))
        await h.settle()
        assert taken(w) == [(busy, "t0")]
        low = await h.submit(one("low", priority=-5))
        mid = await h.submit(one("mid"))
        high = await h.submit(one("high", priority=10))
        ex = h.engine.explain(low, "t0")
        assert ex.reason == "no_free_slot", ex
        await h.finish("w", busy, "t0")
        assert taken(w) == [(high, "t0")]
        await h.finish("w", high, "t0")
        assert taken(w) == [(mid, "t0")]
        await h.finish("w", mid, "t0")
        assert taken(w) == [(low, "t0")]

    h.run(body())


@pytest.mark.parametrize("slots", [1, 2])
def test_fair_share_does_not_starve_a_small_tenant_behind_a_big_one(make: Any, slots: int) -> None:
    """Tenant a submits 50 tasks, then tenant b 3: b's tasks start within the first few
    placements after b's submission, with an agent of one slot as with two."""
    h = make()

    async def body() -> None:
        w = h.connect("w", slots=slots, cpus=4)
        await h.submit(one("big", tenant="a", n=50), submitter="alice")
        await h.settle()
        running = taken(w)
        assert len(running) == slots
        small = await h.submit(one("small", tenant="b", n=3), submitter="bob")
        await h.settle()
        order: list[str] = []
        while running and len(order) < 12:
            run_id, task = running.pop(0)
            await h.finish("w", run_id, task)
            got = taken(w)
            order += ["b" if r == small else "a" for r, _ in got]
            running += got
        # The first placements after b's submission include all of b's tasks, interleaved.
        assert order[:8].count("b") == 3, order

    h.run(body())


def test_concurrency_limit_caps_a_runs_running_tasks(make: Any) -> None:
    h = make()

    async def body() -> None:
        w = h.connect("w", slots=4, cpus=8)
        run_id = await h.submit(one("capped", n=3, concurrency=1))
        await h.settle()
        first = taken(w)
        assert len(first) == 1
        waiting = next(f"t{i}" for i in range(3) if (run_id, f"t{i}") not in first)
        ex = h.engine.explain(run_id, waiting)
        assert ex.reason == "concurrency_limit", ex
        await h.finish("w", *first[0])
        assert len(taken(w)) == 1

    h.run(body())


# --------------------------------------------------------------------------- admission, infeasible


def test_admission_control_refuses_past_max_queue_depth_and_records_nothing(make: Any) -> None:
    h = make(max_queue_depth=5)

    async def body() -> None:
        await h.submit(one("p1", n=2))
        await h.submit(one("p2", n=2))
        with pytest.raises(ResourceExhausted, match="max_queue_depth"):
            await h.submit(one("p3", n=2))
        assert len(h.engine.runs) == 2
        await h.submit(one("p4", n=1))  # exactly at the limit is fine
        assert len(h.engine.runs) == 3

    h.run(body())


def test_infeasible_task_warns_then_fails_after_the_timeout(make: Any) -> None:
    h = make(infeasible_timeout=2.0)

    async def body() -> None:
        h.connect("w", slots=1, labels={"tier": "cpu"})
        p = Pipeline("gpu")
        p.task("train", run="true", requires={"labels": {"tier": "gpu"}})
        with pytest.raises(FailedPrecondition, match="tier=gpu"):
            await h.engine.submit(p.to_proto(), "alice", strict=True)
        assert h.engine.runs == {}
        run_id, warnings = await h.engine.submit(p.to_proto(), "alice")
        assert len(warnings) == 1 and "tier=gpu" in warnings[0], warnings
        await h.settle()
        ex = h.engine.explain(run_id, "train")
        assert ex.reason == "no_feasible_agent" and list(ex.plan.suggestions), ex
        assert ex.until == pytest.approx(WALL0 + 2.0)
        h.advance(1.0)
        await h.settle()
        assert h.engine.runs[run_id].tasks["train"].state is TaskState.READY
        h.advance(1.5)
        await h.settle()
        t = h.engine.runs[run_id].tasks["train"]
        assert t.state is TaskState.FAILED and "tier=gpu" in t.error, t.error
        assert h.engine.runs[run_id].state is RunState.FAILED

    h.run(body())


# --------------------------------------------------------------------------- residency, clocks


def test_outputs_carry_residency_to_consumers_and_downloads(make: Any) -> None:
    h = make()

    async def body() -> None:
        eu = h.connect("eu", slots=2, zones=("eu",))
        us = h.connect("us", slots=2, zones=("us",))
        p = Pipeline("res")
        p.task("make", run="true", outputs=["d"], requires={"residency": ["eu"]})
        p.task("use", run="true", inputs={"d": "make.d"})
        run_id = await h.submit(p)
        await h.settle()
        assert taken(eu) == [(run_id, "make")] and taken(us) == []
        await h.finish("eu", run_id, "make", ("d", digest("eu-data"), 10))
        h.advance(WAIT + 1)  # no delay-scheduling wait can explain it: residency is a hard rule
        await h.settle()
        assert taken(us) == []
        assert taken(eu) == [(run_id, "use")]
        assert h.engine.may_download("us", digest("eu-data")) is not None
        assert h.engine.may_download("eu", digest("eu-data")) is None

        bad = Pipeline("res-bad")
        bad.task("make", run="true", outputs=["d"], requires={"residency": ["eu"]})
        bad.task("use", run="true", inputs={"d": "make.d"}, requires={"residency": ["us"]})
        plans = {tp.task: tp for tp in h.engine.plan(bad.to_proto())}
        assert list(plans["use"].residency_conflicts), plans["use"]
        assert "input d from make" in plans["use"].residency_conflicts[0]
        assert not list(plans["use"].feasible_agents)

    h.run(body())


def test_clock_suspect_agent_gets_no_skew_bounded_task(make: Any) -> None:
    h = make(max_clock_offset=1.0)

    async def body() -> None:
        bad = h.connect("bad", slots=1,
                        clocks=[common_pb2.ClockSample(source="ntp:x", offset_s=5.0, uncertainty_s=0.001)])
        good = h.connect("good", credits=0, slots=1,
                         clocks=[common_pb2.ClockSample(source="ntp:x", offset_s=0.01, uncertainty_s=0.001)])
        assert h.engine.agents["bad"].view.clock_suspect
        assert not h.engine.agents["good"].view.clock_suspect
        p = Pipeline("clock")
        p.task("stamp", run="true", requires={"max_clock_skew": "500ms"})
        run_id = await h.submit(p)
        await h.settle()
        assert taken(bad) == []
        plan = h.engine.explain(run_id, "stamp").plan
        assert "clock suspect" in plan.rejections["bad"]
        h.engine.add_credits(good, 1)
        await h.settle()
        assert taken(good) == [(run_id, "stamp")]

    h.run(body())
