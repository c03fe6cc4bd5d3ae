"""Tests for scheduler.core.engine.Engine: the task and run state machines, leases, dispatch.

The engine is driven as the servicers drive it (protobuf converted at the edge by
tests.helpers.wire_engine), with a real SQLite store on a file in tmp_path,
fake monotonic and wall clocks (plain callables whose value the test sets) and
a seeded RNG. No processes, no network, no sleeping: the tests yield to the
event loop and await the store's commit futures, which resolve in FIFO order.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, Coroutine, Iterator

import pytest

from outrider.errors import FailedPrecondition, InvalidArgument, NotFound, StaleEpoch
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2, common_pb2
from scheduler.core.channel import Channel
from scheduler.core.engine import Engine
from scheduler.core.lifecycle import backoff_delay
from scheduler.core.model import RunState, TaskState
from scheduler.store.base import Store
from tests.helpers.backends import Backend, SqliteBackend
from tests.helpers.fake_clock import FakeClock
from tests.helpers.wire_engine import WireEngine, take

GiB = 2**30
TTL = 10.0
HB = 2.0
MONO0 = 1000.0
WALL0 = 1_700_000_000.0


class Harness:
    def __init__(self, db: Path | Backend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = SqliteBackend(db) if isinstance(db, Path) else db  # a path: a SQLite file
        self.loop = loop
        self.mono = FakeClock(MONO0)
        self.wall = FakeClock(WALL0)
        self.uploaded: set[str] | None = None  # None: every digest "exists"
        self.store, self.engine = self._build()

    def _build(self) -> tuple[Store, WireEngine]:
        store = self.backend.open()
        engine = Engine(
            store,
            lease_ttl=TTL,
            heartbeat_interval=HB,
            clock=self.mono,
            wall=self.wall,
            rng=random.Random(0),
            artifact_exists=lambda d: self.uploaded is None or d in self.uploaded,
        )
        return store, WireEngine(engine)

    def start(self) -> None:
        self.store.start(self.loop)
        self.engine.start(self.loop)

    def restart(self) -> None:
        """Crash-restart: a new Store and Engine on the same file, state reloaded."""
        self.store.close()
        self.mono.t += 500.0  # a new process: its monotonic clock has nothing to do with the old one
        self.wall.t += 30.0  # and a restart takes time (run ids embed the wall time)
        self.store, self.engine = self._build()
        self.engine.load()
        self.start()

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    async def settle(self) -> None:
        """Let kicked dispatch passes run and every queued commit (and its callbacks) land."""
        for _ in range(4):
            for _ in range(3):
                await asyncio.sleep(0)
            await self.store.barrier()

    # -- agents

    def register(
        self,
        name: str,
        *,
        cpus: int = 4,
        memory: int = 16 * GiB,
        gpus: int = 0,
        slots: int = 4,
        labels: dict[str, str] | None = None,
        uncertainty: float | None = None,
        leases: list[common_pb2.LeaseRef] | None = None,
    ) -> list[common_pb2.LeaseRef]:
        caps = common_pb2.Capabilities(
            cpu_cores=cpus,
            memory_bytes=memory,
            slots=slots,
            labels=labels or {},
            gpus=[common_pb2.Gpu(index=i, model="H100") for i in range(gpus)],
        )
        clocks = [] if uncertainty is None else [common_pb2.ClockSample(uncertainty_s=uncertainty, source="ntp:x")]
        return self.engine.register(name, f"spiffe://test.ml/agent/{name}", caps, clocks, leases or [])

    def connect(self, name: str, credits: int = 4, **caps: Any) -> Channel:
        if name not in self.engine.agents:
            self.register(name, **caps)
        ch = self.engine.attach(name)
        self.engine.add_credits(ch, credits)
        return ch

    # -- runs

    async def submit(self, p: Pipeline) -> str:
        run_id, _ = await self.engine.submit(p.to_proto(), "alice")
        return run_id

    def state(self, run_id: str, task: str) -> TaskState:
        return self.engine.runs[run_id].tasks[task].state

    def states(self, run_id: str) -> dict[str, str]:
        return {n: t.state.value for n, t in self.engine.runs[run_id].tasks.items()}

    def db_tasks(self, run_id: str) -> dict[str, tuple[Any, ...]]:
        rows = self.backend.read("SELECT name, state, attempts, failures, agent FROM tasks WHERE run_id=?", (run_id,))
        return {r[0]: r[1:] for r in rows}

    def db_one(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows read through a connection of the test's own: only what was committed."""
        return self.backend.read(sql, params)


@pytest.fixture
def h(backend: Backend) -> Iterator[Harness]:
    """An engine on a started store; every test that uses it runs on both backends."""
    loop = asyncio.new_event_loop()
    harness = Harness(backend, loop)
    harness.start()
    try:
        yield harness
    finally:
        harness.store.close()
        loop.close()


def ref(run_id: str, task: str, epoch: int) -> common_pb2.LeaseRef:
    return common_pb2.LeaseRef(run_id=run_id, task=task, epoch=epoch)


def digest(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()


def done(
    run_id: str, task: str, epoch: int, *outputs: str, outcome: str = "succeeded", exit_code: int = 0, error: str = ""
) -> agent_pb2.Completion:
    return agent_pb2.Completion(
        lease=ref(run_id, task, epoch),
        outcome=outcome,
        exit_code=exit_code,
        error=error,
        outputs=[
            common_pb2.ArtifactRef(name=o, digest=digest(f"{task}.{o}"), size=len(o), kind="file") for o in outputs
        ],
    )


def failed(run_id: str, task: str, epoch: int, exit_code: int = 1) -> agent_pb2.Completion:
    return done(run_id, task, epoch, outcome="failed", exit_code=exit_code)


def assigned(ch: Channel) -> dict[str, agent_pb2.Assignment]:
    """The assignments waiting on a channel, by task name."""
    return {a.lease.task: a for a in take(ch).assignments}


def chain() -> Pipeline:
    """a ─out─▶ b ─out─▶ c, and d runs after c (ordering only)."""
    p = Pipeline("chain")
    p.task("a", run="true", outputs=["out"])
    p.task("b", run="true", inputs={"x": "a.out"}, outputs=["out"])
    p.task("c", run="true", inputs={"y": "b.out"})
    p.task("d", run="true", after=["c"])
    return p


# --------------------------------------------------------------------------- happy path


def test_backoff_delay_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(0)
    assert backoff_delay(0, 3, rng) == 0.0
    for failures, full in ((1, 4.0), (2, 8.0), (3, 16.0)):
        d = backoff_delay(4.0, failures, rng)
        assert full * 0.5 <= d < full
    assert backoff_delay(100.0, 30, rng) < 300.0


def test_pipeline_runs_through_the_state_machine(h: Harness) -> None:
    async def body() -> None:
        run_id = await h.submit(chain())
        # Before any agent connects: roots are READY, the rest PENDING, all durable.
        assert h.states(run_id) == {"a": "ready", "b": "pending", "c": "pending", "d": "pending"}
        assert h.db_tasks(run_id)["a"][0] == "ready"
        assert h.engine.runs[run_id].state is RunState.RUNNING

        ch = h.connect("w1", credits=4)
        await h.settle()
        got = assigned(ch)
        assert list(got) == ["a"]
        assert got["a"].lease == ref(run_id, "a", 1)
        assert got["a"].pipeline == "chain"
        assert got["a"].lease_ttl_s == TTL
        t = h.engine.runs[run_id].tasks["a"]
        assert (t.state, t.attempts, t.agent) == (TaskState.RUNNING, 1, "w1")
        assert h.db_tasks(run_id)["a"] == ("running", 1, 0, "w1")  # durable before it was sent

        fut = h.engine.complete("w1", done(run_id, "a", 1, "out"))
        # Applied in memory at once; shown to the agent only after the commit.
        assert h.state(run_id, "a") is TaskState.SUCCEEDED
        assert h.state(run_id, "b") is TaskState.READY
        await fut
        await h.settle()
        got = assigned(ch)
        assert list(got) == ["b"]
        # b's input is a's output, by digest.
        assert [(i.name, i.digest) for i in got["b"].inputs] == [("x", digest("a.out"))]

        await h.engine.complete("w1", done(run_id, "b", 1, "out"))
        await h.settle()
        assert list(assigned(ch)) == ["c"]
        assert h.state(run_id, "d") is TaskState.PENDING  # `after` c: waits for it
        await h.engine.complete("w1", done(run_id, "c", 1))
        await h.settle()
        assert list(assigned(ch)) == ["d"]
        h.wall.t += 5
        await h.engine.complete("w1", done(run_id, "d", 1))
        await h.settle()

        run = h.engine.runs[run_id]
        assert run.state is RunState.SUCCEEDED
        assert run.finished_at == WALL0 + 5
        assert run.unfinished == 0
        assert h.db_one("SELECT state FROM runs WHERE run_id=?", (run_id,)) == [("succeeded",)]
        assert {n: s[0] for n, s in h.db_tasks(run_id).items()} == dict.fromkeys("abcd", "succeeded")
        assert h.db_one("SELECT count(*) FROM attempts WHERE run_id=? AND state='succeeded'", (run_id,)) == [(4,)]
        # The agent's resources were all given back.
        v = h.engine.agents["w1"].view
        assert (v.running, v.used_cpus, v.used_memory) == (0, 0.0, 0)
        # The last recorded event ends the run.
        events = h.store.events(run_id)
        assert (events[-1].task, events[-1].state) == ("", "succeeded")

    h.run(body())


def test_after_only_dependency_orders_without_data(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("order")
        p.task("first", run="true")
        p.task("second", run="true", after=["first"])
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=4)
        await h.settle()
        assert list(assigned(ch)) == ["first"]
        assert h.state(run_id, "second") is TaskState.PENDING
        await h.engine.complete("w1", done(run_id, "first", 1))
        await h.settle()
        second = assigned(ch)["second"]
        assert list(second.inputs) == []

    h.run(body())


def test_credits_bound_dispatch_and_are_capped_by_slots(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("wide")
        for i in range(6):
            p.task(f"t{i}", run="true", requires={"cpus": 0.5})
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=2, slots=3)
        await h.settle()
        assert len(assigned(ch)) == 2
        h.engine.add_credits(ch, 100)  # capped at the agent's 3 slots
        await h.settle()
        assert len(assigned(ch)) == 3
        with pytest.raises(InvalidArgument):
            h.engine.add_credits(ch, -1)
        assert sum(t.state is TaskState.RUNNING for t in h.engine.runs[run_id].tasks.values()) == 5

    h.run(body())


# --------------------------------------------------------------------------- retries and failure


def test_failure_with_retries_left_backs_off_then_retries(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("flaky")
        p.task("t", run="false", retries={"max": 2, "backoff": "10s"})
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=4)
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 1

        await h.engine.complete("w1", failed(run_id, "t", 1, exit_code=3))
        t = h.engine.runs[run_id].tasks["t"]
        assert (t.state, t.attempts, t.failures) == (TaskState.READY, 1, 1)
        assert WALL0 + 5 <= t.not_before < WALL0 + 10
        assert "exit code 3" in t.error
        assert h.db_tasks(run_id)["t"] == ("ready", 1, 1, "w1")

        # Credits are there, but the backoff holds the task back.
        h.engine.add_credits(ch, 1)
        await h.settle()
        assert not ch.has_assignments()
        h.engine.tick(mono=MONO0, wall=t.not_before - 0.01)
        await h.settle()
        assert not ch.has_assignments()
        h.engine.tick(mono=MONO0, wall=t.not_before)
        await h.settle()
        a = assigned(ch)["t"]
        assert a.lease.epoch == 2
        assert (t.state, t.attempts, t.failures) == (TaskState.RUNNING, 2, 1)

        # Second failure: the backoff doubles.
        h.wall.t = WALL0 + 100
        await h.engine.complete("w1", failed(run_id, "t", 2))
        assert t.failures == 2 and t.state is TaskState.READY
        assert h.wall.t + 10 <= t.not_before < h.wall.t + 20
        h.engine.tick(wall=t.not_before)
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 3

        # Third failure: no retries left.
        await h.engine.complete("w1", failed(run_id, "t", 3))
        await h.settle()
        assert (t.state, t.attempts, t.failures) == (TaskState.FAILED, 3, 3)
        assert h.engine.runs[run_id].state is RunState.FAILED
        assert h.db_one("SELECT attempt, state FROM attempts WHERE run_id=? ORDER BY attempt", (run_id,)) == [
            (1, "failed"),
            (2, "failed"),
            (3, "failed"),
        ]

    h.run(body())


def test_permanent_failure_fails_downstream_and_spares_independent_branch(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("branches")
        p.task("a", run="false", outputs=["out"])
        p.task("b", run="true", inputs={"x": "a.out"}, outputs=["out"])
        p.task("c", run="true", inputs={"y": "b.out"})
        p.task("d", run="true", outputs=["out"])
        p.task("e", run="true", inputs={"z": "d.out"})
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=4)
        await h.settle()
        assert set(assigned(ch)) == {"a", "d"}

        await h.engine.complete("w1", failed(run_id, "a", 1))
        await h.settle()
        assert h.states(run_id) == {
            "a": "failed",
            "b": "upstream_failed",
            "c": "upstream_failed",
            "d": "running",
            "e": "pending",
        }
        assert "'a'" in h.engine.runs[run_id].tasks["b"].error
        assert h.engine.runs[run_id].state is RunState.RUNNING  # d and e still to go

        await h.engine.complete("w1", done(run_id, "d", 1, "out"))
        await h.settle()
        assert list(assigned(ch)) == ["e"]
        await h.engine.complete("w1", done(run_id, "e", 1))
        await h.settle()
        run = h.engine.runs[run_id]
        assert run.state is RunState.FAILED
        assert h.states(run_id)["e"] == "succeeded"
        assert h.db_one("SELECT state FROM runs") == [("failed",)]
        assert h.db_tasks(run_id)["c"][0] == "upstream_failed"

    h.run(body())


def test_success_missing_declared_output_fails_the_attempt(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("outputs")
        p.task("t", run="true", outputs=["model", "metrics"])
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        await h.engine.complete("w1", done(run_id, "t", 1, "model"))
        t = h.engine.runs[run_id].tasks["t"]
        assert t.state is TaskState.FAILED
        assert "declared output(s) missing" in t.error and "metrics" in t.error
        assert t.outputs == {}
        assert h.db_one("SELECT state, error FROM attempts") == [("failed", t.error)]
        assert h.db_one("SELECT count(*) FROM outputs") == [(0,)]

    h.run(body())


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (common_pb2.ArtifactRef(name="other", digest="a" * 64, size=1, kind="file"), "was not declared"),
        (common_pb2.ArtifactRef(name="out", digest="XYZ", size=1, kind="file"), "malformed digest"),
        (common_pb2.ArtifactRef(name="out", digest="a" * 64, size=1, kind="socket"), "unknown kind"),
        (common_pb2.ArtifactRef(name="out", digest="b" * 64, size=1, kind="file"), "never uploaded"),
    ],
)
def test_bad_outputs_fail_the_attempt(h: Harness, output: common_pb2.ArtifactRef, problem: str) -> None:
    async def body() -> None:
        h.uploaded = {"a" * 64}
        p = Pipeline("outputs")
        p.task("t", run="true", outputs=["out"])
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        c = agent_pb2.Completion(lease=ref(run_id, "t", 1), outcome="succeeded", outputs=[output])
        await h.engine.complete("w1", c)
        t = h.engine.runs[run_id].tasks["t"]
        assert t.state is TaskState.FAILED
        assert problem in t.error

    h.run(body())


# --------------------------------------------------------------------------- fencing


def test_stale_epoch_wrong_agent_and_unknown_are_refused_and_change_nothing(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("fence")
        p.task("t", run="true", outputs=["out"], retries=2)
        run_id = await h.submit(p)
        h.connect("w1")
        h.register("w2")
        await h.settle()
        t = h.engine.runs[run_id].tasks["t"]
        before = h.db_tasks(run_id)
        for agent, epoch in (("w1", 0), ("w1", 2), ("w2", 1)):
            with pytest.raises(StaleEpoch) as exc:
                h.engine.complete(agent, done(run_id, "t", epoch, "out"))
            assert f"epoch {epoch}" in str(exc.value)
            assert (t.state, t.attempts, t.failures, t.agent) == (TaskState.RUNNING, 1, 0, "w1")
            with pytest.raises(StaleEpoch):
                h.engine.complete(agent, failed(run_id, "t", epoch))
            assert t.failures == 0 and t.outputs == {}
        with pytest.raises(NotFound):
            h.engine.complete("w1", done("run-nope", "t", 1))
        with pytest.raises(NotFound):
            h.engine.complete("w1", done(run_id, "nope", 1))
        with pytest.raises(InvalidArgument, match="outcome"):
            h.engine.complete("w1", done(run_id, "t", 1, "out", outcome="exploded"))
        await h.settle()
        assert h.db_tasks(run_id) == before
        assert t.state is TaskState.RUNNING
        # The right holder still can.
        await h.engine.complete("w1", done(run_id, "t", 1, "out"))
        assert t.state is TaskState.SUCCEEDED

    h.run(body())


def test_completion_after_cancel_is_stale(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("fence")
        p.task("t", run="true")
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        await h.engine.cancel(run_id)
        with pytest.raises(StaleEpoch):
            h.engine.complete("w1", done(run_id, "t", 1))
        with pytest.raises(StaleEpoch):
            h.engine.complete("w1", failed(run_id, "t", 1))
        assert h.state(run_id, "t") is TaskState.CANCELLED
        await h.settle()
        assert h.db_tasks(run_id)["t"][0] == "cancelled"

    h.run(body())


def test_duplicate_completion_is_idempotent(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("dup")
        p.task("t", run="true", outputs=["out"])
        p.task("u", run="false")
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        await h.engine.complete("w1", done(run_id, "t", 1, "out"))
        t = h.engine.runs[run_id].tasks["t"]
        finished, outputs = t.finished_at, dict(t.outputs)
        h.wall.t += 60
        await h.engine.complete("w1", done(run_id, "t", 1, "out"))  # a re-delivery: accepted
        assert (t.state, t.finished_at, t.outputs) == (TaskState.SUCCEEDED, finished, outputs)
        # ...but not a contradicting one.
        with pytest.raises(StaleEpoch):
            h.engine.complete("w1", failed(run_id, "t", 1))
        # A terminal failure re-delivered is accepted too.
        await h.engine.complete("w1", failed(run_id, "u", 1))
        await h.engine.complete("w1", failed(run_id, "u", 1))
        assert h.engine.runs[run_id].tasks["u"].failures == 1
        await h.settle()
        assert h.db_one("SELECT count(*) FROM attempts") == [(2,)]
        assert h.db_one("SELECT count(*) FROM events WHERE task='t' AND state='succeeded'") == [(1,)]

    h.run(body())


# --------------------------------------------------------------------------- leases


def test_lease_expiry_requeues_without_counting_a_failure(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("lease")
        p.task("t", run="sleep 100", retries=0)
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=2)
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 1
        t = h.engine.runs[run_id].tasks["t"]
        assert t.lease_expires == MONO0 + TTL

        h.engine.tick(mono=MONO0 + TTL - 0.01)
        assert t.state is TaskState.RUNNING
        h.engine.tick(mono=MONO0 + TTL)
        assert (t.state, t.failures) == (TaskState.READY, 0)
        assert "lost" in t.error
        await h.settle()
        msg = take(ch)
        assert list(msg.cancel) == [ref(run_id, "t", 1)]  # the old holder is told to stop
        assert [a.lease.epoch for a in msg.assignments] == [2]  # a new attempt, new epoch
        assert (t.state, t.attempts, t.failures) == (TaskState.RUNNING, 2, 0)
        assert h.db_one("SELECT attempt, state FROM attempts ORDER BY attempt") == [(1, "lost"), (2, "running")]
        # Even with max_attempts 1 the task was not failed: losing an agent is not its fault.
        with pytest.raises(StaleEpoch):
            h.engine.complete("w1", done(run_id, "t", 1))
        await h.engine.complete("w1", done(run_id, "t", 2))
        assert h.engine.runs[run_id].state is RunState.SUCCEEDED

    h.run(body())


def test_lease_expiry_is_padded_by_clock_uncertainty(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("lease")
        p.task("t", run="true")
        run_id = await h.submit(p)
        h.register("w1", uncertainty=3.0)
        h.connect("w1")
        await h.settle()
        t = h.engine.runs[run_id].tasks["t"]
        assert t.lease_expires == MONO0 + TTL + 3.0
        h.engine.tick(mono=MONO0 + TTL + 1)
        assert t.state is TaskState.RUNNING
        h.engine.tick(mono=MONO0 + TTL + 3)
        assert t.state is TaskState.READY

    h.run(body())


def test_heartbeat_renews_leases_and_returns_lost_ones(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("hb")
        p.task("t", run="true")
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        t = h.engine.runs[run_id].tasks["t"]
        h.mono.t = MONO0 + 8
        bogus = [ref(run_id, "t", 7), ref(run_id, "nope", 1), ref("run-nope", "t", 1)]
        lost = h.engine.heartbeat("w1", [ref(run_id, "t", 1), *bogus], [])
        assert list(lost) == bogus
        assert t.lease_expires == MONO0 + 8 + TTL
        h.engine.tick(mono=MONO0 + TTL + 1)  # past the first expiry: the renewal holds
        assert t.state is TaskState.RUNNING
        h.engine.tick(mono=MONO0 + 8 + TTL)
        assert t.state is TaskState.READY
        # Another agent cannot renew (or learn about) w1's lease.
        h.register("w2")
        assert list(h.engine.heartbeat("w2", [ref(run_id, "t", 1)], [])) == [ref(run_id, "t", 1)]
        with pytest.raises(FailedPrecondition):
            h.engine.heartbeat("ghost", [], [])

    h.run(body())


def test_heartbeat_expires_granted_lease_the_agent_does_not_hold(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("hb")
        p.task("t", run="true")
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        t = h.engine.runs[run_id].tasks["t"]
        # Within the in-flight grace (2 heartbeat intervals) an unlisted lease is kept...
        h.mono.t = MONO0 + 2 * HB - 0.5
        h.engine.heartbeat("w1", [], [])
        assert t.state is TaskState.RUNNING
        # ...after it, the assignment evidently never arrived: requeue now, not at TTL.
        h.mono.t = MONO0 + 2 * HB + 0.5
        h.engine.heartbeat("w1", [], [])
        assert (t.state, t.failures) == (TaskState.READY, 0)

    h.run(body())


# --------------------------------------------------------------------------- cancel and retry


def test_cancel_cancels_everything_unfinished(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("cancel")
        p.task("a", run="true", outputs=["out"])
        p.task("b", run="true", inputs={"x": "a.out"})
        p.task("c", run="true")
        p.task("done", run="true")
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=3)
        await h.settle()
        assert set(assigned(ch)) == {"a", "c", "done"}
        await h.engine.complete("w1", done(run_id, "done", 1))
        run = await h.engine.cancel(run_id)
        assert run.state is RunState.CANCELLED
        assert h.states(run_id) == {"a": "cancelled", "b": "cancelled", "c": "cancelled", "done": "succeeded"}
        assert sorted((r.task, r.epoch) for r in take(ch).cancel) == [("a", 1), ("c", 1)]
        v = h.engine.agents["w1"].view
        assert (v.running, v.used_cpus) == (0, 0.0)
        assert h.db_one("SELECT state FROM runs") == [("cancelled",)]
        assert sorted(h.db_one("SELECT task, state FROM attempts WHERE state='cancelled'")) == [
            ("a", "cancelled"),
            ("c", "cancelled"),
        ]
        # Cancelling again is a no-op; nothing is dispatched from a cancelled run.
        assert (await h.engine.cancel(run_id)) is run
        h.engine.add_credits(ch, 3)
        await h.settle()
        assert not ch.has_assignments()

    h.run(body())


def test_cancel_of_ended_run_is_refused(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("one")
        p.task("t", run="true")
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        await h.engine.complete("w1", done(run_id, "t", 1))
        with pytest.raises(FailedPrecondition):
            await h.engine.cancel(run_id)
        with pytest.raises(NotFound):
            await h.engine.cancel("run-nope")

    h.run(body())


def test_cancel_records_no_failed_run_state(h: Harness) -> None:
    """A cancelled run goes RUNNING -> CANCELLED; it must never be recorded (or
    shown to watchers) as FAILED on the way."""

    async def body() -> None:
        p = Pipeline("cancel")
        p.task("a", run="true")
        p.task("b", run="true", after=["a"])
        run_id = await h.submit(p)
        watcher, _ = h.engine.watch(run_id, run_only=True)
        h.connect("w1")
        await h.settle()
        await h.engine.cancel(run_id)
        await h.settle()
        recorded = [r.state for r in h.store.events(run_id) if not r.task]
        seen = []
        while not watcher.queue.empty():
            seen.append(watcher.queue.get_nowait().state)
        assert h.engine.runs[run_id].state is RunState.CANCELLED
        assert (recorded, seen) == (["running", "cancelled"], ["cancelled"]), f"recorded={recorded} watched={seen}"

    h.run(body())


def test_retry_reruns_only_what_did_not_succeed(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("retry")
        p.task("a", run="true", outputs=["out"])
        p.task("b", run="false", inputs={"x": "a.out"}, outputs=["out"])
        p.task("c", run="true", inputs={"y": "b.out"})
        p.task("side", run="true", outputs=["out"])
        run_id = await h.submit(p)
        ch = h.connect("w1")
        await h.settle()
        assert set(assigned(ch)) == {"a", "side"}
        with pytest.raises(FailedPrecondition):
            await h.engine.retry(run_id)  # still running
        await h.engine.complete("w1", done(run_id, "a", 1, "out"))
        await h.engine.complete("w1", done(run_id, "side", 1, "out"))
        await h.settle()
        assert list(assigned(ch)) == ["b"]
        await h.engine.complete("w1", failed(run_id, "b", 1))
        await h.settle()
        assert h.engine.runs[run_id].state is RunState.FAILED
        a_out = dict(h.engine.runs[run_id].tasks["a"].outputs)

        retrying = asyncio.ensure_future(h.engine.retry(run_id))
        await asyncio.sleep(0)  # retry has applied its change in memory, its commit is pending
        run = h.engine.runs[run_id]
        assert run.state is RunState.RUNNING and run.finished_at == 0.0
        assert h.states(run_id) == {"a": "succeeded", "b": "ready", "c": "pending", "side": "succeeded"}
        b = run.tasks["b"]
        assert (b.failures, b.error, b.attempts) == (0, "", 1)
        assert (await retrying) is run
        assert run.tasks["a"].outputs == a_out
        await h.settle()
        got = assigned(ch)
        assert list(got) == ["b"]
        assert got["b"].lease.epoch == 2  # epochs keep growing across retries
        assert [(i.name, i.digest) for i in got["b"].inputs] == [("x", digest("a.out"))]
        await h.engine.complete("w1", done(run_id, "b", 2, "out"))
        h.engine.add_credits(ch, 4)  # the agent hands its freed slots back
        await h.settle()
        assert assigned(ch)["c"].lease.epoch == 1
        await h.engine.complete("w1", done(run_id, "c", 1))
        await h.settle()
        assert run.state is RunState.SUCCEEDED
        assert (run.tasks["a"].attempts, run.tasks["side"].attempts) == (1, 1)
        with pytest.raises(FailedPrecondition):
            await h.engine.retry(run_id)  # succeeded: nothing to retry

    h.run(body())


def test_retry_after_cancel_reruns_cancelled_tasks(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("retry")
        p.task("a", run="true")
        run_id = await h.submit(p)
        ch = h.connect("w1")
        await h.settle()
        assigned(ch)
        await h.engine.cancel(run_id)
        ch.take()
        await h.engine.retry(run_id)
        await h.settle()
        assert assigned(ch)["a"].lease.epoch == 2
        assert h.engine.runs[run_id].state is RunState.RUNNING

    h.run(body())


# --------------------------------------------------------------------------- placement


def test_tasks_only_go_to_agents_that_fit(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("place")
        p.task("gpu", run="true", requires={"gpus": 1})
        p.task("label", run="true", requires={"labels": {"tier": "gpu"}})
        p.task("mem", run="true", requires={"memory": "16GiB"})
        p.task("cpus", run="true", requires={"cpus": 4})
        p.task("any", run="true")
        run_id = await h.submit(p)
        small = h.connect("small", credits=8, cpus=2, memory=4 * GiB, slots=8, labels={"tier": "edge"})
        await h.settle()
        assert list(assigned(small)) == ["any"]
        big = h.connect("big", credits=8, cpus=16, memory=64 * GiB, gpus=1, slots=8, labels={"tier": "gpu"})
        await h.settle()
        assert set(assigned(big)) == {"gpu", "label", "mem", "cpus"}
        for name, t in h.engine.runs[run_id].tasks.items():
            assert t.agent == ("small" if name == "any" else "big")

    h.run(body())


def test_dispatch_never_overcommits_an_agent(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("gpus")
        for i in range(3):
            p.task(f"g{i}", run="true", requires={"gpus": 1, "cpus": 1})
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=4, cpus=8, gpus=2, slots=4)
        await h.settle()
        first = assigned(ch)
        assert len(first) == 2
        v = h.engine.agents["w1"].view
        assert (v.used_gpus, v.running) == (2, 2)
        h.engine.add_credits(ch, 2)  # credits alone do not make GPUs free
        await h.settle()
        assert not ch.has_assignments()
        name = next(iter(first))
        await h.engine.complete("w1", done(run_id, name, 1))
        await h.settle()
        assert len(assigned(ch)) == 1
        assert v.used_gpus == 2

    h.run(body())


def test_plan_lists_feasible_agents_and_reasons(h: Harness) -> None:
    async def body() -> None:
        h.register("small", cpus=2, memory=4 * GiB, labels={"tier": "edge"})
        h.register("big", cpus=16, memory=64 * GiB, gpus=1, labels={"tier": "gpu"})
        p = Pipeline("plan")
        p.task("train", run="true", requires={"gpus": 1, "labels": {"tier": "gpu"}})
        p.task("prep", run="true")
        p.task("huge", run="true", requires={"cpus": 64})
        plans = {tp.task: tp for tp in h.engine.plan(p.to_proto())}
        assert list(plans["train"].feasible_agents) == ["big"]
        assert plans["train"].agents_considered == 2
        why = plans["train"].rejections["small"]
        assert "insufficient gpus" in why and "needs 1 gpus, agent has 0" in why
        assert "label mismatch" in why and "tier=edge" in why
        assert list(plans["prep"].feasible_agents) == ["big", "small"]
        assert dict(plans["prep"].rejections) == {}
        assert list(plans["huge"].feasible_agents) == []
        assert "needs 64 cpus, agent has 16" in plans["huge"].rejections["big"]
        # Submitting warns about the task no agent can run, and still records the run.
        run_id, warnings = await h.engine.submit(p.to_proto(), "alice")
        assert len(warnings) == 1 and "'huge'" in warnings[0] and "insufficient cpus" in warnings[0]
        assert run_id in h.engine.runs

    h.run(body())


# --------------------------------------------------------------------------- submit validation


@pytest.mark.parametrize(
    ("tasks", "problem"),
    [
        (
            [
                common_pb2.TaskSpec(name="a", argv=["x"], after=["b"]),
                common_pb2.TaskSpec(name="b", argv=["x"], after=["a"]),
            ],
            "cycle",
        ),
        ([common_pb2.TaskSpec(name="a", argv=["x"], inputs={"i": "nope.out"})], "nope"),
        ([common_pb2.TaskSpec(name="a", argv=["x"], after=["ghost"])], "ghost"),
    ],
)
def test_submit_rejects_invalid_spec_and_stores_nothing(h: Harness, tasks: list[Any], problem: str) -> None:
    async def body() -> None:
        spec = common_pb2.PipelineSpec(name="bad", tasks=tasks)
        with pytest.raises(InvalidArgument) as exc:
            await h.engine.submit(spec, "alice")
        assert problem in str(exc.value)
        assert h.engine.runs == {} and h.engine.ready_count == 0
        await h.settle()
        assert h.db_one("SELECT count(*) FROM runs") == [(0,)]
        assert h.db_one("SELECT count(*) FROM tasks") == [(0,)]
        assert h.db_one("SELECT count(*) FROM events") == [(0,)]

    h.run(body())


def test_submit_rejects_code_bundle_never_uploaded(h: Harness) -> None:
    async def body() -> None:
        h.uploaded = set()
        p = Pipeline("code")
        p.task("t", run="true")
        with pytest.raises(InvalidArgument, match="code bundle"):
            await h.engine.submit(p.to_proto(code_digest="c" * 64), "alice")
        assert h.engine.runs == {}

    h.run(body())


# --------------------------------------------------------------------------- restart


def test_restart_restores_runs_tasks_outputs_and_leases(h: Harness) -> None:
    async def body() -> None:
        p = chain()
        p.task("flaky", run="false", retries={"max": 3, "backoff": "60s"})
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=4)
        await h.settle()
        assert set(assigned(ch)) == {"a", "flaky"}
        await h.engine.complete("w1", done(run_id, "a", 1, "out"))
        await h.engine.complete("w1", failed(run_id, "flaky", 1))
        await h.settle()
        assert list(assigned(ch)) == ["b"]
        flaky_not_before = h.engine.runs[run_id].tasks["flaky"].not_before
        assert flaky_not_before > h.wall.t

        h.restart()
        e = h.engine
        run = e.runs[run_id]
        assert run.state is RunState.RUNNING
        assert h.states(run_id) == {"a": "succeeded", "b": "running", "c": "pending", "d": "pending", "flaky": "ready"}
        a, b, flaky = run.tasks["a"], run.tasks["b"], run.tasks["flaky"]
        assert a.outputs["out"].digest == digest("a.out")
        assert (b.attempts, b.agent) == (1, "w1")
        assert (flaky.attempts, flaky.failures, flaky.not_before) == (1, 1, flaky_not_before)
        assert run.unfinished == 4
        assert not e.agents["w1"].connected
        # The agent comes back and claims its lease.
        lost = h.register("w1", leases=[ref(run_id, "b", 1), ref(run_id, "c", 1)])
        assert list(lost) == [ref(run_id, "c", 1)]
        assert e.agents["w1"].view.running == 1
        ch = h.connect("w1", credits=3)
        await h.settle()
        assert not ch.has_assignments()  # flaky is still backing off
        await e.complete("w1", done(run_id, "b", 1, "out"))
        await h.settle()
        got = assigned(ch)
        assert list(got) == ["c"]
        assert [i.digest for i in got["c"].inputs] == [digest("b.out")]
        e.tick(wall=flaky_not_before)
        await h.settle()
        assert assigned(ch)["flaky"].lease.epoch == 2
        # Epochs are never reused, and the new process's run sequence continues.
        run2 = await h.submit(chain())
        assert e.runs[run2].seq == run.seq + 1

    h.run(body())


def test_restart_unclaimed_lease_expires_after_grace(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("one")
        p.task("t", run="true")
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        h.restart()
        t = h.engine.runs[run_id].tasks["t"]
        assert t.state is TaskState.RUNNING
        start = h.mono.t
        h.engine.tick(mono=start + TTL + 1)  # a full TTL plus grace to reconnect
        assert t.state is TaskState.RUNNING
        h.engine.tick(mono=start + 2 * TTL)
        assert (t.state, t.failures) == (TaskState.READY, 0)
        ch = h.connect("w2")
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 2

    h.run(body())


def test_restart_after_run_ended_keeps_it_ended(h: Harness) -> None:
    async def body() -> None:
        p = Pipeline("one")
        p.task("t", run="true", outputs=["out"])
        run_id = await h.submit(p)
        h.connect("w1")
        await h.settle()
        await h.engine.complete("w1", done(run_id, "t", 1, "out"))
        await h.settle()
        h.restart()
        run = h.engine.runs[run_id]
        assert run.state is RunState.SUCCEEDED and run.unfinished == 0
        assert run.tasks["t"].outputs["out"].size == 3
        assert h.engine.ready_count == 0

    h.run(body())


# --------------------------------------------------------------------------- agents


def test_attach_requires_registration_and_detach_disconnects(h: Harness) -> None:
    async def body() -> None:
        with pytest.raises(FailedPrecondition):
            h.engine.attach("ghost")
        ch = h.connect("w1")
        assert h.engine.agents["w1"].view.connected
        h.engine.detach(ch)
        assert ch.closed
        assert not h.engine.agents["w1"].view.connected
        assert await ch.next_message() is None
        p = Pipeline("one")
        p.task("t", run="true")
        run_id = await h.submit(p)
        await h.settle()
        assert h.state(run_id, "t") is TaskState.READY  # nobody to run it

    h.run(body())


def test_register_persists_agent(h: Harness) -> None:
    async def body() -> None:
        h.register("w1", cpus=3, labels={"site": "lab"})
        await h.settle()
        rows = h.db_one("SELECT name, identity FROM agents")
        assert rows == [("w1", "spiffe://test.ml/agent/w1")]
        caps = common_pb2.Capabilities.FromString(h.db_one("SELECT capabilities FROM agents")[0][0])
        assert caps.cpu_cores == 3 and dict(caps.labels) == {"site": "lab"}
        # Re-registering updates capabilities in place.
        h.register("w1", cpus=5)
        assert h.engine.agents["w1"].view.cpus == 5

    h.run(body())


def test_released_attempt_runs_again_without_spending_a_retry(h: Harness) -> None:
    """An agent that could not run a stage (or is draining) gives the attempt back: the task
    runs again as a new attempt, its retries untouched, and the history says why."""

    async def body() -> None:
        p = Pipeline("give-back")
        p.task("t", run="true", retries=0)
        run_id = await h.submit(p)
        ch = h.connect("w1", credits=2)
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 1
        fut = h.engine.complete("w1", done(run_id, "t", 1, outcome="released", error="cannot create work dir"))
        t = h.engine.runs[run_id].tasks["t"]
        assert (t.state, t.attempts, t.failures) == (TaskState.READY, 1, 0)
        assert "released" in t.error and "cannot create work dir" in t.error
        await fut
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 2  # the same retries=0 task runs again
        assert h.db_one("SELECT attempt, state, error FROM attempts WHERE run_id=?", (run_id,))[0][:2] == (
            1,
            "released",
        )
        assert [r.state for r in h.store.events(run_id) if r.task == "t"][-2:] == ["released", "running"]

    h.run(body())


def test_an_agent_silent_past_a_heartbeat_gets_no_new_work_until_heard(h: Harness) -> None:
    """Its stream may look open while its link is down: new work waits for a sign of life
    instead of going to an agent whose lease on it would only be lost again."""

    async def body() -> None:
        ch = h.connect("w1", credits=2)
        h.mono.t += 2 * HB + 1.5  # no heartbeat for longer than two intervals
        p = Pipeline("quiet")
        p.task("t", run="true")
        run_id = await h.submit(p)
        await h.settle()
        assert not ch.has_assignments() and h.state(run_id, "t") is TaskState.READY
        h.engine.heartbeat("w1", [], [])  # heard again: dispatch looks at once
        await h.settle()
        assert assigned(ch)["t"].lease.epoch == 1

    h.run(body())
