"""scheduler.core.leases.LeaseTable alone: the one check, grant, renew, expiry and grace.

Tasks live in a plain dict the table finds them in; the monotonic clock is a
:class:`FakeClock` the tests move by hand.
"""

from __future__ import annotations

import pytest

from outrider.errors import NotFound, StaleEpoch
from scheduler.core.leases import LeaseStatus, LeaseTable, lease_ref
from scheduler.core.messages import LeaseRef
from scheduler.core.model import Attempt, AttemptState, Needs, Task, TaskState
from scheduler.core.spec import TaskSpec
from scheduler.core.txn import Txn
from scheduler.store.changes import Op
from tests.helpers.fake_clock import FakeClock

TTL = 10.0
MONO0 = 1000.0
WALL0 = 1_700_000_000.0


class Tasks:
    """The tasks the lease table can find, by (run id, name)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Task] = {}

    def add(self, name: str, run_id: str = "r1") -> Task:
        t = Task(run_id=run_id, name=name, spec=TaskSpec(name, ("true",)), needs=Needs(), order=0, spec_needs=Needs())
        self.by_key[t.key] = t
        return t

    def find(self, run_id: str, name: str) -> Task | None:
        return self.by_key.get((run_id, name))


class Harness:
    def __init__(self) -> None:
        self.mono = FakeClock(MONO0)
        self.tasks = Tasks()
        self.table = LeaseTable(ttl=TTL, find=self.tasks.find)

    def running(self, name: str, agent: str = "a1", uncertainty: float = 0.0) -> Task:
        """A task granted to ``agent`` now and moved to RUNNING (the state machine's part)."""
        t = self.tasks.by_key.get(("r1", name)) or self.tasks.add(name)
        self.table.grant(Txn(), t, agent, uncertainty, WALL0, self.mono())
        t.state = TaskState.RUNNING
        return t

    def expired(self) -> list[str]:
        return [t.name for t in self.table.expired(self.mono())]


# --------------------------------------------------------------------------- check and current


def test_check_relates_a_report_to_the_current_lease() -> None:
    h = Harness()
    t = h.running("t", agent="a1")  # epoch 1
    cur = LeaseRef("r1", "t", 1)

    assert h.table.check(cur, "a1") == (LeaseStatus.CURRENT, t)
    assert h.table.check(LeaseRef("r1", "t", 0), "a1") == (LeaseStatus.STALE, t)  # an older epoch
    assert h.table.check(LeaseRef("r1", "t", 2), "a1") == (LeaseStatus.STALE, t)  # a future one
    assert h.table.check(cur, "a2") == (LeaseStatus.STALE, t)  # right epoch, wrong agent
    assert h.table.check(LeaseRef("r1", "nope", 1), "a1") == (LeaseStatus.UNKNOWN, None)
    assert h.table.check(LeaseRef("r9", "t", 1), "a1") == (LeaseStatus.UNKNOWN, None)
    t.state = TaskState.SUCCEEDED
    assert h.table.check(cur, "a1") == (LeaseStatus.ENDED, t)  # latest epoch, no longer running
    assert h.table.check(cur, "a2") == (LeaseStatus.STALE, t)


def test_current_returns_the_task_for_the_current_lease() -> None:
    h = Harness()
    t = h.running("t")
    assert h.table.current(lease_ref(t), "a1") is t


def test_current_raises_not_found_for_an_unknown_task() -> None:
    h = Harness()
    with pytest.raises(NotFound, match="no task 'x' in run 'r1'"):
        h.table.current(LeaseRef("r1", "x", 1), "a1")


def test_current_raises_stale_epoch_naming_both_epochs_for_a_superseded_lease() -> None:
    h = Harness()
    h.running("t", agent="a1")
    h.running("t", agent="a2")  # epoch 2 on another agent
    with pytest.raises(StaleEpoch, match="epoch 1 held by a1 is stale: the task is running at epoch 2 on a2"):
        h.table.current(LeaseRef("r1", "t", 1), "a1")


def test_current_raises_stale_epoch_for_an_ended_lease() -> None:
    h = Harness()
    t = h.running("t")
    t.state = TaskState.READY
    with pytest.raises(StaleEpoch, match=r"epoch 1 .* the task is ready at epoch 1"):
        h.table.current(lease_ref(t), "a1")


# --------------------------------------------------------------------------- grant


@pytest.mark.parametrize(("uncertainty", "pad"), [(0.0, 0.0), (0.25, 0.25), (TTL * 3, TTL)])
def test_grant_starts_the_next_epoch_padded_by_the_clock_uncertainty(uncertainty: float, pad: float) -> None:
    h = Harness()
    t = h.tasks.add("t")
    t.attempts, t.finished_at = 4, WALL0 - 5  # earlier attempts
    txn = Txn()
    h.table.grant(txn, t, "a1", uncertainty, WALL0, MONO0)
    assert t.attempts == 5
    assert (t.agent, t.started_at, t.finished_at, t.leased_at) == ("a1", WALL0, 0.0, MONO0)
    assert t.lease_expires == MONO0 + TTL + pad  # the pad never exceeds one TTL
    no_checkpoint = (0, 0, "", 0, "", 0.0)
    assert txn.changes.records == [
        (Op.INSERT_ATTEMPT, ("r1", "t", 5, "a1", AttemptState.RUNNING.value, WALL0, *no_checkpoint)),
        # the audit record commits with the grant (scheduler.core.audit)
        (Op.INSERT_AUDIT, (int(WALL0 * 1_000_000), "scheduler", "lease_grant", "r1/t#5", "ok", "agent a1")),
    ]
    assert t.history[-1] == Attempt(5, "a1", AttemptState.RUNNING, WALL0)
    assert len(h.table) == 1


def test_end_records_how_the_attempt_ended() -> None:
    h = Harness()
    t = h.running("t")
    txn = Txn()
    LeaseTable.end(txn, t, AttemptState.LOST, WALL0 + 3, 0, "agent gone")
    assert txn.changes.records == [(Op.FINISH_ATTEMPT, ("lost", WALL0 + 3, 0, "agent gone", "r1", "t", 1))]


# --------------------------------------------------------------------------- renew


def test_renew_extends_only_current_leases_and_returns_the_others_as_lost() -> None:
    h = Harness()
    mine = h.running("mine", agent="a1")
    other = h.running("other", agent="a2")
    superseded = h.running("superseded", agent="a1")
    h.running("superseded", agent="a1")  # now at epoch 2
    ended = h.running("ended", agent="a1")
    ended.state = TaskState.SUCCEEDED
    before = {t.name: t.lease_expires for t in (other, superseded, ended)}
    h.mono.t += 4.0

    refs = [
        lease_ref(mine),
        LeaseRef("r1", "other", 1),  # another agent's lease
        LeaseRef("r1", "superseded", 1),
        lease_ref(ended),
        LeaseRef("r1", "gone", 1),
    ]
    renewed, lost = h.table.renew("a1", 0.5, refs, h.mono())

    assert renewed == [mine]
    assert mine.lease_expires == h.mono() + TTL + 0.5
    assert lost == refs[1:]
    assert {t.name: t.lease_expires for t in (other, superseded, ended)} == before


# --------------------------------------------------------------------------- expiry, on a moving clock


def test_a_lease_expires_exactly_when_its_expiry_passes() -> None:
    h = Harness()
    h.running("t", uncertainty=0.5)  # expires at MONO0 + TTL + 0.5
    h.mono.t = MONO0 + TTL + 0.5 - 1e-6
    assert h.expired() == []
    h.mono.t = MONO0 + TTL + 0.5
    assert h.expired() == ["t"]
    h.mono.t += 100.0
    assert h.expired() == []  # each expiry is reported once


def test_a_renewed_lease_is_not_expired_by_its_old_heap_entry() -> None:
    h = Harness()
    t = h.running("t")  # expires at MONO0 + TTL
    h.mono.t = MONO0 + 6.0
    h.table.renew("a1", 0.0, [lease_ref(t)], h.mono())  # now expires at MONO0 + 6 + TTL
    h.mono.t = MONO0 + TTL
    assert h.expired() == []
    h.mono.t = MONO0 + 6.0 + TTL - 1e-6
    assert h.expired() == []
    h.mono.t = MONO0 + 6.0 + TTL
    assert h.expired() == ["t"]


def test_an_old_epochs_expiry_does_not_expire_the_new_lease() -> None:
    h = Harness()
    h.running("t", agent="a1")  # epoch 1, expires at MONO0 + TTL
    h.mono.t = MONO0 + 5.0
    h.running("t", agent="a2")  # epoch 2, expires at MONO0 + 5 + TTL
    h.mono.t = MONO0 + TTL
    assert h.expired() == []
    h.mono.t = MONO0 + 5.0 + TTL
    assert h.expired() == ["t"]


def test_a_lease_that_ended_does_not_expire() -> None:
    h = Harness()
    t = h.running("t")
    t.state = TaskState.SUCCEEDED
    h.mono.t += 2 * TTL
    assert h.expired() == []
    assert len(h.table) == 0  # its heap entry is gone too


def test_expired_reports_several_leases_in_expiry_order() -> None:
    h = Harness()
    h.running("late", uncertainty=2.0)
    h.running("early")
    h.mono.t = MONO0 + TTL + 2.0
    assert h.expired() == ["early", "late"]


# --------------------------------------------------------------------------- grace after a restart


def test_grace_gives_a_restored_lease_two_ttls_and_its_agent_can_renew_it() -> None:
    h = Harness()
    t = h.tasks.add("t")
    t.state, t.attempts, t.agent = TaskState.RUNNING, 3, "a1"  # as loaded from the store
    h.table.grace(t, h.mono())
    assert (t.lease_expires, t.leased_at) == (MONO0 + 2 * TTL, MONO0)
    h.mono.t = MONO0 + 2 * TTL - 1e-6
    assert h.expired() == []
    h.mono.t = MONO0 + 2 * TTL
    assert h.expired() == ["t"]

    h2 = Harness()
    t2 = h2.tasks.add("t")
    t2.state, t2.attempts, t2.agent = TaskState.RUNNING, 3, "a1"
    h2.table.grace(t2, h2.mono())
    h2.mono.t = MONO0 + 15.0
    renewed, lost = h2.table.renew("a1", 0.0, [LeaseRef("r1", "t", 3)], h2.mono())
    assert (renewed, lost) == ([t2], [])
    h2.mono.t = MONO0 + 2 * TTL
    assert h2.expired() == []  # the renewal, not the grace, decides now
    h2.mono.t = MONO0 + 15.0 + TTL
    assert h2.expired() == ["t"]
