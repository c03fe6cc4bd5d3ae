"""A submission's request id makes a retried submit answer with the run it made (issue 9: a submit
whose answer was lost in a failover must not start a second run). On both store backends."""
from __future__ import annotations

import asyncio

import pytest

from outrider.errors import FailedPrecondition, InvalidArgument
from outrider.pipeline import Pipeline
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
