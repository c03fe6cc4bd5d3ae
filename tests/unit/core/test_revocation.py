"""Tests for scheduler.core.revocation: the deny-list of agent names and revoking one.

Driven through the engine (``engine.revocations``) with a real SQLite store on a file and
fake clocks, like tests/unit/test_engine.py, whose harness this reuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from outrider.errors import InvalidArgument
from outrider.pipeline import Pipeline
from outrider.protocol import revoked_message
from scheduler.core.model import TaskState
from scheduler.core.revocation import MAX_REASON, iso
from tests.helpers.backends import Backend
from tests.unit.test_engine import WALL0, Harness, assigned, take

ADMIN = "spiffe://test.ml/admin/root"


@pytest.fixture
def h(backend: Backend) -> Iterator[Harness]:
    """An engine whose caller is an admin, on each backend (the deny-list is durable state)."""
    loop = asyncio.new_event_loop()
    harness = Harness(backend, loop)
    harness.start()
    harness.engine.core.caller = lambda: ADMIN
    try:
        yield harness
    finally:
        harness.store.close()
        loop.close()


def one_task(name: str = "work") -> Pipeline:
    p = Pipeline("one")
    p.task(name, run="sleep 100")
    return p


def audit_rows(h: Harness) -> list[tuple[str, str, str, str]]:
    return [tuple(r) for r in h.db_one("SELECT identity, action, target, detail FROM audit WHERE action='revoke'")]


def test_revoking_a_working_agent_requeues_its_lease_without_spending_a_retry(h: Harness) -> None:
    async def go() -> None:
        a = h.connect("a", credits=1)
        run_id = await h.submit(one_task())
        await h.settle()
        assert set(assigned(a)) == {"work"}
        t = h.engine.runs[run_id].tasks["work"]
        assert t.state is TaskState.RUNNING and t.agent == "a"

        done = await h.engine.revocations.revoke("a", "stolen laptop")
        assert not done.already and done.known
        assert [(r.run_id, r.task, r.epoch) for r in done.requeued] == [(run_id, "work", 1)]
        # Refused from now on; its stream was told to cancel the lease, then closed.
        assert h.engine.revocations.is_revoked("a")
        assert h.engine.revocations.refusal("a") == revoked_message("a", iso(WALL0), ADMIN, "stolen laptop")
        msg = take(a)
        assert [(r.task, r.epoch) for r in msg.cancel] == [("work", 1)]
        assert a.closed and not h.engine.agents["a"].connected
        # The task runs again elsewhere, as attempt 2, with no failure counted.
        assert t.state is TaskState.READY and t.failures == 0
        b = h.connect("b", credits=1)
        await h.settle()
        assert assigned(b)["work"].lease.epoch == 2
        assert h.db_tasks(run_id)["work"][:4] == ("running", 2, 0, "b")
        assert h.db_one("SELECT state FROM attempts WHERE run_id=? AND attempt=1", (run_id,)) == [("lost",)]
        assert h.db_one("SELECT name, revoked_at, revoked_by, reason FROM revoked_agents") == [
            ("a", WALL0, ADMIN, "stolen laptop")
        ]
        [(who, action, target, detail)] = audit_rows(h)
        assert (who, action, target) == (ADMIN, "revoke", "a")
        assert "stolen laptop" in detail and f"{run_id}/work#1" in detail

    h.run(go())


def test_revoking_twice_is_idempotent_and_both_are_audited(h: Harness) -> None:
    async def go() -> None:
        h.connect("a")
        first = await h.engine.revocations.revoke("a", "first")
        h.wall.t += 60
        again = await h.engine.revocations.revoke("a", "second")
        assert again.already and not first.already
        assert again.revocation == first.revocation  # the first one stands: when, by whom, why
        assert again.requeued == ()
        assert h.db_one("SELECT count(*), max(reason) FROM revoked_agents") == [(1, "first")]
        rows = audit_rows(h)
        assert len(rows) == 2 and "already revoked at" in rows[1][3]

    h.run(go())


def test_a_name_never_seen_may_be_revoked(h: Harness) -> None:
    async def go() -> None:
        done = await h.engine.revocations.revoke("never-connected")
        assert not done.known and not done.already and done.requeued == ()
        assert h.engine.revocations.is_revoked("never-connected")
        assert h.engine.revocations.get("never-connected").revoked_by == ADMIN  # type: ignore[union-attr]
        assert not h.engine.revocations.is_revoked("other")
        assert h.engine.revocations.refusal("other") is None

    h.run(go())


def test_the_list_survives_a_restart_and_agents_show_as_revoked(h: Harness) -> None:
    async def go() -> None:
        h.connect("a")
        h.connect("b")
        await h.engine.revocations.revoke("a", "gone")
        await h.settle()

    h.run(go())
    h.restart()
    assert h.engine.revocations.is_revoked("a") and not h.engine.revocations.is_revoked("b")
    assert "revoked at" in (h.engine.revocations.refusal("a") or "")
    infos = {a.name: a for a in h.engine.list_agents()}
    assert infos["a"].revoked and infos["a"].revoked_by == ADMIN and infos["a"].revoked_at == WALL0
    assert not infos["b"].revoked and infos["b"].revoked_at == 0.0


@pytest.mark.parametrize(
    ("name", "reason", "words"),
    [
        ("", "", "invalid name"),
        ("../etc", "", "invalid name"),
        ("a" * 64, "", "invalid name"),
        ("a", "x" * (MAX_REASON + 1), "over the limit"),
        ("a", "two\nlines", "one line"),
    ],
)
def test_a_bad_name_or_reason_is_refused_and_changes_nothing(h: Harness, name: str, reason: str, words: str) -> None:
    async def go() -> None:
        with pytest.raises(InvalidArgument, match=words):
            await h.engine.revocations.revoke(name, reason)
        await h.settle()

    h.run(go())
    assert len(h.engine.revocations) == 0
    assert h.db_one("SELECT count(*) FROM revoked_agents") == [(0,)]
    assert audit_rows(h) == []
