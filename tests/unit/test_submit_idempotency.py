"""A submission's request id makes a retried submit answer with the run it made (issue 9: a submit
whose answer was lost in a failover must not start a second run). On both store backends."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from outrider.errors import FailedPrecondition, InvalidArgument
from outrider.pipeline import Pipeline
from scheduler.api import wire
from scheduler.core.spec import PipelineSpec
from tests.unit.test_engine import Harness, h  # noqa: F401  (h: fixture)


def pipeline(cmd: str = "true") -> Pipeline:
    p = Pipeline("p")
    p.task("t", run=cmd)
    return p


def test_a_retried_request_id_answers_with_the_first_run_and_records_nothing(h: Harness) -> None:
    async def body() -> None:
        first, _ = await h.engine.submit(pipeline().to_proto(), "alice", request_id="req-1")
        again, warnings = await h.engine.submit(pipeline().to_proto(), "alice", request_id="req-1")
        await h.settle()
        assert again == first and warnings == []
        assert len(h.engine.runs) == 1
        assert h.db_one("SELECT run_id, submit_key FROM runs") == [(first, "req-1")]
        # Audited once: the retry changed nothing.
        assert h.db_one("SELECT count(*) FROM audit WHERE action='submit'") == [(1,)]

    h.run(body())


def test_keys_are_per_submitter_and_no_key_means_a_new_run_each_time(h: Harness) -> None:
    async def body() -> None:
        a, _ = await h.engine.submit(pipeline().to_proto(), "alice", request_id="same")
        b, _ = await h.engine.submit(pipeline().to_proto(), "bob", request_id="same")
        c, _ = await h.engine.submit(pipeline().to_proto(), "alice")
        d, _ = await h.engine.submit(pipeline().to_proto(), "alice")
        assert len({a, b, c, d}) == 4

    h.run(body())


def test_a_key_reused_for_another_pipeline_is_refused_naming_the_run(h: Harness) -> None:
    async def body() -> None:
        first, _ = await h.engine.submit(pipeline().to_proto(), "alice", request_id="k")
        with pytest.raises(FailedPrecondition) as info:
            await h.engine.submit(pipeline("false").to_proto(), "alice", request_id="k")
        assert first in str(info.value) and "different pipeline" in str(info.value)
        assert len(h.engine.runs) == 1

    h.run(body())


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", "ünï"])
def test_a_bad_request_id_is_refused_and_changes_nothing(h: Harness, bad: str) -> None:
    async def body() -> None:
        with pytest.raises(InvalidArgument, match="request_id"):
            await h.engine.submit(pipeline().to_proto(), "alice", request_id=bad)
        assert h.engine.runs == {}

    h.run(body())


def test_concurrent_submissions_with_one_key_make_one_run(h: Harness) -> None:
    async def body() -> None:
        ids = await asyncio.gather(
            *(h.engine.submit(pipeline().to_proto(), "alice", request_id="burst") for _ in range(5))
        )
        assert len({run_id for run_id, _ in ids}) == 1
        assert len(h.engine.runs) == 1

    h.run(body())


def test_the_key_survives_a_restart(h: Harness) -> None:
    async def before() -> None:
        first, _ = await h.engine.submit(pipeline().to_proto(), "alice", request_id="durable")
        await h.settle()
        h.first = first  # type: ignore[attr-defined]

    h.run(before())
    h.restart()

    async def after() -> None:
        again, _ = await h.engine.submit(pipeline().to_proto(), "alice", request_id="durable")
        assert again == h.first  # type: ignore[attr-defined]
        assert len(h.engine.runs) == 1

    h.run(after())


def test_a_retry_whose_maps_arrive_in_another_order_is_the_same_pipeline(h: Harness) -> None:
    """Protobuf maps (inputs, env) have no order: the spec of a retry decoded from its request
    may list them in another order than the run's (decoded from the store after a failover)."""

    def spec(order: list[int]) -> PipelineSpec:
        p = Pipeline("p")
        for i in range(4):
            p.task(f"t{i}", run="true", outputs=["o"])
        p.task("join", run="true", inputs={f"i{i}": f"t{i}.o" for i in range(4)}, env={f"E{i}": "v" for i in range(4)})
        s = wire.check_pipeline(p.to_proto())
        join = s.tasks[-1]
        join = dataclasses.replace(
            join, inputs=tuple(join.inputs[i] for i in order), env=tuple(join.env[i] for i in order)
        )
        return dataclasses.replace(s, tasks=(*s.tasks[:-1], join))

    async def body() -> None:
        first, _ = await h.engine.core.submit(spec([0, 1, 2, 3]), "alice", False, "maps")
        again, _ = await h.engine.core.submit(spec([3, 1, 0, 2]), "alice", False, "maps")
        assert again == first and len(h.engine.runs) == 1

    h.run(body())


def test_a_try_that_made_no_run_leaves_the_key_free(h: Harness) -> None:
    """Refused (here: strict, with no agent that could run it), a submission records no key: the
    next one with that key, made at once or later, makes the run."""

    h.register("small", cpus=1)
    big = Pipeline("p")
    big.task("t", run="true", requires={"cpus": 8})

    async def body() -> None:
        refused, made = await asyncio.gather(
            h.engine.submit(big.to_proto(), "alice", strict=True, request_id="k2"),
            h.engine.submit(big.to_proto(), "alice", request_id="k2"),
            return_exceptions=True,
        )
        assert isinstance(refused, FailedPrecondition) and "strict" in str(refused)
        assert isinstance(made, tuple) and list(h.engine.runs) == [made[0]]
        again, _ = await h.engine.submit(big.to_proto(), "alice", request_id="k2")
        assert again == made[0]

    h.run(body())


def test_a_caller_hanging_up_mid_commit_leaves_its_run_to_the_retry_waiting(h: Harness) -> None:
    """The first try's caller goes away while its run is being committed; the retry waiting on it
    answers with that run (no second run, no second row under the key)."""

    async def body() -> None:
        first = asyncio.ensure_future(h.engine.submit(pipeline().to_proto(), "alice", request_id="k3"))
        while not h.engine.runs:  # built and handed to the store: the first try awaits its commit
            await asyncio.sleep(0)
        retry = asyncio.ensure_future(h.engine.submit(pipeline().to_proto(), "alice", request_id="k3"))
        await asyncio.sleep(0)
        first.cancel()
        (run_id, _), = await asyncio.gather(retry)
        assert list(h.engine.runs) == [run_id]
        await h.settle()
        assert h.db_one("SELECT run_id FROM runs WHERE submit_key='k3'") == [(run_id,)]

    h.run(body())
