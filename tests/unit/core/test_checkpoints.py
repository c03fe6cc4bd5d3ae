"""scheduler.core.checkpoints.Checkpoints alone: which reports are accepted, what is recorded.

The real lease table, state machine, registry and residency index around it; the journal
is a fake that keeps the transactions it was handed (no store, no thread).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from outrider.errors import FailedPrecondition, NotFound, StaleEpoch
from scheduler.core.checkpoints import Checkpoints
from scheduler.core.leases import LeaseTable
from scheduler.core.lifecycle import StateMachine
from scheduler.core.messages import Capabilities, Checkpoint, LeaseRef
from scheduler.core.model import Run, Task, TaskState
from scheduler.core.registry import AgentRegistry
from scheduler.core.residency import ResidencyIndex
from scheduler.core.spec import Needs, PipelineSpec, TaskSpec
from scheduler.core.txn import Txn
from scheduler.core.watch import Watchers
from scheduler.store.changes import Op
from tests.helpers.fake_clock import FakeClock

WALL0 = 1_700_000_000.0
D = ["%064x" % i for i in range(10)]


class FakeJournal:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.txns: list[Txn] = []

    def _done(self) -> asyncio.Future[None]:
        fut = self.loop.create_future()
        fut.set_result(None)
        return fut

    def commit(self, txn: Txn) -> asyncio.Future[None]:
        self.txns.append(txn)
        return self._done()

    def barrier(self) -> asyncio.Future[None]:
        return self._done()


class Harness:
    def __init__(self, zones: frozenset[str] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.wall = FakeClock(WALL0)
        self.uploaded: set[str] = set(D[:5])
        self.sm = StateMachine(Watchers(), wall=self.wall, rng=random.Random(0), on_ready=lambda r, t: None,
                               on_unready=lambda r, t: None)
        self.registry = AgentRegistry(max_clock_offset=1.0, wall=self.wall, kick=lambda: None)
        self.leases = LeaseTable(ttl=10.0, find=self.sm.find)
        self.residency = ResidencyIndex()
        self.journal = FakeJournal(self.loop)
        self.cps = Checkpoints(self.sm, self.registry, self.leases, self.residency, self.journal,  # type: ignore[arg-type]
                               wall=self.wall, artifact_exists=lambda d: d in self.uploaded)
        ts = TaskSpec("t", ("true",))
        needs = Needs(residency=zones)
        self.run = Run("r1", "p", PipelineSpec("p", (ts,)), "alice", WALL0, "tr", 1)
        self.t = Task("r1", "t", ts, needs, 0, needs)
        self.run.tasks["t"] = self.t
        self.sm.runs["r1"] = self.run
        for name in ("a1", "a2"):
            self.registry.register(name, "id", Capabilities(cpu_cores=2, slots=1), [], WALL0)

    def start(self, agent: str = "a1") -> None:
        self.leases.grant(Txn(), self.t, agent, 0.0, self.wall(), 0.0)
        self.t.state = TaskState.RUNNING

    def report(self, agent: str, epoch: int, seq: int, digest: str | None = None) -> str:
        cp = Checkpoint(LeaseRef("r1", "t", epoch), digest or D[seq], 10 * seq, "file", seq, WALL0 - 5)
        fut, note = self.cps.report(agent, cp)
        self.loop.run_until_complete(fut)
        return note


@pytest.fixture
def h() -> Any:
    harness = Harness()
    yield harness
    harness.loop.close()


def test_only_the_current_lease_may_report_and_only_uploaded_bytes(h: Harness) -> None:
    with pytest.raises(StaleEpoch):
        h.report("a1", 1, 1)  # the task is not running
    h.start()
    with pytest.raises(StaleEpoch):
        h.report("a2", 1, 1)  # not the holder
    with pytest.raises(StaleEpoch):
        h.report("a1", 2, 1)  # not the current epoch
    with pytest.raises(FailedPrecondition, match="upload"):
        h.report("a1", 1, 1, digest=D[9])
    with pytest.raises(NotFound):
        h.cps.report("a1", Checkpoint(LeaseRef("r1", "nope", 1), D[1], 1, "file", 1, 0.0))
    assert h.t.checkpoint is None and h.journal.txns == []


def test_a_newer_one_is_recorded_with_an_event_and_an_older_one_changes_nothing(h: Harness) -> None:
    h.start()
    assert h.report("a1", 1, 2) == ""
    (txn,) = h.journal.txns
    ops = [op for op, _ in txn.changes.records]
    assert ops == [Op.UPSERT_CHECKPOINT, Op.INSERT_EVENTS_MANY]
    assert txn.changes.records[1][1][0][4] == "checkpoint"
    assert (h.t.checkpoint.seq, h.t.checkpoint.digest, h.t.checkpoint.created_at) == (2, D[2], WALL0 - 5)
    assert "not newer" in h.report("a1", 1, 1)
    assert "not newer" in h.report("a1", 1, 2)  # a re-delivery
    assert len(h.journal.txns) == 1 and h.t.checkpoint.seq == 2
    # A new attempt: its first checkpoint supersedes the earlier attempt's later one.
    h.t.state = TaskState.READY
    h.start("a2")
    assert h.t.resumed_from is not None and h.t.resumed_from.seq == 2
    assert h.report("a2", 2, 1) == ""
    assert (h.t.checkpoint.lease.epoch, h.t.checkpoint.seq) == (2, 1)


def test_its_bytes_carry_the_residency_of_the_task() -> None:
    h = Harness(zones=frozenset({"eu"}))
    try:
        h.start()
        h.report("a1", 1, 1)
        assert h.residency.refusal("us-1", frozenset({"us"}), D[1]) is not None
        assert h.residency.refusal("eu-1", frozenset({"eu"}), D[1]) is None
        assert h.journal.txns[0].changes.records[0][1][-1] == "eu"  # stored with it
    finally:
        h.loop.close()
