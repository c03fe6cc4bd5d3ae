"""scheduler.core.queues.ReadyQueues alone: queueing, retry backoff, removal, and the
effective needs and placement worked out when a task is queued.

Runs are built with :meth:`StateMachine.build` (a pure constructor) and tasks put in
the state the queues expect by hand; both clocks are fakes.
"""

from __future__ import annotations

import pytest

from scheduler.core.lifecycle import StateMachine
from scheduler.core.model import NO_PLACEMENT, Needs, Output, Run, Task, TaskState
from scheduler.core.queues import ReadyQueues
from scheduler.core.spec import Affinity, Expr, InputRef, PipelineSpec, TaskSpec
from tests.helpers.fake_clock import FakeClock

MONO0 = 1000.0
WALL0 = 1_700_000_000.0
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
PREFER_FAST = Affinity(Expr("speed", "=", ("fast",)), 2.0)


def spec(
    name: str,
    *,
    inputs: tuple[tuple[str, InputRef], ...] = (),
    residency: tuple[str, ...] = (),
    cpus: float = 1.0,
    affinities: tuple[Affinity, ...] = (),
) -> TaskSpec:
    return TaskSpec(
        name=name,
        argv=("true",),
        inputs=inputs,
        outputs=("out",),
        requires=Needs(cpus=cpus, residency=frozenset(residency) if residency else None),
        affinities=affinities,
    )


class Harness:
    def __init__(self) -> None:
        self.mono = FakeClock(MONO0)
        self.wall = FakeClock(WALL0)
        self.kicks = 0
        self.q = ReadyQueues(clock=self.mono, wall=self.wall, kick=self._kick)

    def _kick(self) -> None:
        self.kicks += 1

    def run(self, *tasks: TaskSpec, run_id: str = "r1") -> Run:
        return StateMachine.build(run_id, PipelineSpec("p", tasks), "alice", WALL0, "tr", 1, self.q.intern)

    def ready(self, run: Run, name: str, not_before: float = 0.0) -> Task:
        """Make ``name`` READY (as the state machine would) and hand it to the queues."""
        t = run.tasks[name]
        t.state = TaskState.READY
        t.not_before = not_before
        self.q.put(run, t)
        return t


def produced(run: Run, name: str, digest: str, size: int, residency: frozenset[str] | None = None) -> None:
    t = run.tasks[name]
    t.state = TaskState.SUCCEEDED
    t.outputs["out"] = Output("out", digest, size, "file", residency)


# --------------------------------------------------------------------------- put and backoff


def test_put_queues_a_task_whose_backoff_has_passed() -> None:
    h = Harness()
    run = h.run(spec("a"))
    h.mono.t = MONO0 + 7
    t = h.ready(run, "a", not_before=WALL0)  # not_before == now: due
    assert t.queued
    assert t.ready_at == MONO0 + 7
    assert list(run.queues[t.needs]) == [t]
    assert (run.queued, h.q.count, h.q.backoff) == (1, 1, 0)
    assert list(h.q.runs()) == [run]
    assert h.kicks == 1


def test_put_holds_a_task_in_backoff_until_release_due() -> None:
    h = Harness()
    run = h.run(spec("a"))
    t = h.ready(run, "a", not_before=WALL0 + 30)
    assert not t.queued
    assert (h.q.count, h.q.backoff, h.kicks) == (0, 1, 0)
    assert list(h.q.runs()) == []

    h.q.release_due(WALL0 + 29.9)
    assert not t.queued
    h.mono.t = MONO0 + 30
    h.q.release_due(WALL0 + 30)
    assert t.queued
    assert t.ready_at == MONO0 + 30  # the wait for an agent starts now, not at put
    assert (h.q.count, h.q.backoff, h.kicks) == (1, 0, 1)
    assert list(h.q.runs()) == [run]


def test_release_due_releases_in_not_before_order_and_only_what_is_due() -> None:
    h = Harness()
    run = h.run(spec("a"), spec("b"), spec("c"))
    a = h.ready(run, "a", not_before=WALL0 + 20)
    b = h.ready(run, "b", not_before=WALL0 + 10)
    c = h.ready(run, "c", not_before=WALL0 + 30)
    h.q.release_due(WALL0 + 25)
    assert (a.queued, b.queued, c.queued) == (True, True, False)
    assert list(run.queues[a.needs]) == [b, a]
    assert h.q.backoff == 1


def test_a_task_that_left_ready_during_its_backoff_is_not_queued() -> None:
    h = Harness()
    run = h.run(spec("a"))
    t = h.ready(run, "a", not_before=WALL0 + 10)
    t.state = TaskState.CANCELLED
    h.q.release_due(WALL0 + 10)
    assert not t.queued
    assert (h.q.count, h.q.backoff) == (0, 0)


def test_a_stale_backoff_entry_does_not_queue_a_task_whose_backoff_was_extended() -> None:
    h = Harness()
    run = h.run(spec("a"))
    t = h.ready(run, "a", not_before=WALL0 + 10)
    t.not_before = WALL0 + 40  # it ran and failed again meanwhile: a longer backoff
    h.q.put(run, t)
    h.q.release_due(WALL0 + 10)
    assert not t.queued
    h.q.release_due(WALL0 + 40)
    assert t.queued
    assert h.q.count == 1


# --------------------------------------------------------------------------- remove


def test_remove_is_idempotent_and_the_run_leaves_runs_with_its_last_task() -> None:
    h = Harness()
    run = h.run(spec("a"), spec("b"))
    a, b = h.ready(run, "a"), h.ready(run, "b")
    assert (run.queued, h.q.count) == (2, 2)

    h.q.remove(run, a)
    h.q.remove(run, a)
    assert not a.queued
    assert (run.queued, h.q.count) == (1, 1)
    assert list(h.q.runs()) == [run]

    h.q.remove(run, b)
    assert (run.queued, h.q.count) == (0, 0)
    assert run.queues == {}
    assert list(h.q.runs()) == []
    h.q.remove(run, b)
    assert (run.queued, h.q.count) == (0, 0)


def test_remove_of_a_task_never_queued_changes_nothing() -> None:
    h = Harness()
    run = h.run(spec("a"), spec("b"))
    h.ready(run, "a")
    h.q.remove(run, run.tasks["b"])
    assert (run.queued, h.q.count) == (1, 1)


def test_queues_of_several_runs() -> None:
    h = Harness()
    r1, r2 = h.run(spec("a"), run_id="r1"), h.run(spec("a"), run_id="r2")
    h.ready(r1, "a")
    t2 = h.ready(r2, "a")
    assert list(h.q.runs()) == [r1, r2]
    h.q.remove(r2, t2)
    assert list(h.q.runs()) == [r1]


# --------------------------------------------------------------------------- needs and placement


def test_a_queued_task_has_its_needs_narrowed_by_its_inputs_residency() -> None:
    h = Harness()
    run = h.run(
        spec("up1"),
        spec("up2"),
        spec(
            "down",
            residency=("eu", "ap"),
            inputs=(("x", InputRef("up1", "out")), ("y", InputRef("up2", "out"))),
        ),
    )
    produced(run, "up1", D1, 100, frozenset({"eu", "us"}))
    produced(run, "up2", D2, 300, None)  # anywhere: narrows nothing
    t = h.ready(run, "down")
    assert t.needs.residency == frozenset({"eu"})
    assert t.spec_needs.residency == frozenset({"eu", "ap"})  # as the spec states them
    assert list(run.queues) == [t.needs]
    assert t.placement.inputs == ((D1, 100), (D2, 300))
    assert t.placement.input_bytes == 400


def test_an_input_residency_narrows_a_task_that_states_none() -> None:
    h = Harness()
    run = h.run(spec("up"), spec("down", inputs=(("x", InputRef("up", "out")),)))
    produced(run, "up", D1, 1, frozenset({"us"}))
    t = h.ready(run, "down")
    assert t.needs.residency == frozenset({"us"})


def test_a_queued_task_carries_its_preferences_in_its_placement() -> None:
    h = Harness()
    run = h.run(spec("up"), spec("down", inputs=(("x", InputRef("up", "out")),), affinities=(PREFER_FAST,)))
    produced(run, "up", D1, 5)
    t = h.ready(run, "down")
    assert t.placement.inputs == ((D1, 5),)
    assert t.placement.affinities == ((PREFER_FAST.expr, 2.0),)


def test_a_task_without_inputs_or_preferences_has_no_placement() -> None:
    h = Harness()
    run = h.run(spec("a"))
    assert h.ready(run, "a").placement is NO_PLACEMENT


def test_alike_tasks_with_preferences_only_share_one_placement_object() -> None:
    h = Harness()
    run = h.run(spec("a", affinities=(PREFER_FAST,)), spec("b", affinities=(PREFER_FAST,)))
    a, b = h.ready(run, "a"), h.ready(run, "b")
    assert a.placement == b.placement
    assert a.placement is b.placement


def test_queueing_resets_a_previous_wait_for_a_better_agent() -> None:
    h = Harness()
    run = h.run(spec("a"))
    t = run.tasks["a"]
    t.wait_for, t.wait_until = "agent-x", WALL0 + 3
    h.ready(run, "a")
    assert (t.wait_for, t.wait_until) == ("", 0.0)


# --------------------------------------------------------------------------- interning


def test_intern_returns_one_shared_object_for_equal_needs() -> None:
    h = Harness()
    n1, n2 = Needs(cpus=2, labels=(("pool", "x"),)), Needs(cpus=2, labels=(("pool", "x"),))
    assert n1 == n2 and n1 is not n2
    assert h.q.intern(n1) is n1
    assert h.q.intern(n2) is n1
    assert h.q.intern(Needs(cpus=3)) is not n1


def test_tasks_with_equal_effective_needs_share_one_queue() -> None:
    h = Harness()
    run = h.run(
        spec("up"),
        spec("x", residency=("eu",)),
        spec("y", residency=("eu", "us"), inputs=(("i", InputRef("up", "out")),)),  # narrowed to x's
        spec("z", cpus=2),
    )
    produced(run, "up", D1, 1, frozenset({"eu", "ap"}))
    x, y, z = h.ready(run, "x"), h.ready(run, "y"), h.ready(run, "z")
    assert x.needs is y.needs
    assert x.needs is not z.needs
    assert len(run.queues) == 2
    assert list(run.queues[x.needs]) == [x, y]


@pytest.mark.parametrize("not_before", [0.0, WALL0 - 1, WALL0])
def test_kick_is_called_each_time_a_task_is_queued(not_before: float) -> None:
    h = Harness()
    run = h.run(spec("a"), spec("b"))
    h.ready(run, "a", not_before=not_before)
    h.ready(run, "b", not_before=not_before)
    assert h.kicks == 2
    h.q.put(run, run.tasks["a"])  # already queued: not queued again, no kick
    assert (h.kicks, run.queued) == (2, 2)
