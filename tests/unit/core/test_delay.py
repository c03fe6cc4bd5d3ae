"""scheduler.core.delay.DelayScheduler alone: hold a task back from an agent clearly worse
than another connected one, for at most ``placement_wait``, and look again when the wait ends.

A real :class:`AgentRegistry` holds two connected agents, ``A`` and ``B``; tasks are
built by hand in the state the ready queues leave them (placement worked out,
``ready_at`` set). Clocks are plain values the tests move.
"""

from __future__ import annotations

from scheduler.core.delay import DelayScheduler, Worse
from scheduler.core.messages import ArtifactRef, Capabilities, ClockSample
from scheduler.core.model import NO_PLACEMENT, Placement, Task, TaskState
from scheduler.core.registry import AgentRegistry, AgentState
from scheduler.core.spec import Expr, Needs, TaskSpec
from tests.helpers.fake_clock import FakeClock

WAIT = 5.0
MONO0 = 1000.0
WALL0 = 1_700_000_000.0
GB = 10**9
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
ON_GPU_BOX = Expr("box", "=", ("gpu",))
NEEDS = Needs(cpus=1)


def caps(cached: tuple[str, ...] = (), labels: dict[str, str] | None = None) -> Capabilities:
    return Capabilities(
        cpu_cores=4,
        memory_bytes=8 * GB,
        slots=2,
        labels=labels or {},
        cached=tuple(ArtifactRef("", d, GB) for d in cached),
        bandwidth_bps=100e6,
    )


class Harness:
    def __init__(self, a_caps: Capabilities, b_caps: Capabilities | None = None) -> None:
        self.wall = FakeClock(WALL0)
        self.kicks = 0
        self.reg = AgentRegistry(max_clock_offset=1.0, wall=self.wall, kick=lambda: None)
        self.delay = DelayScheduler(self.reg, placement_wait=WAIT, kick=self._kick)
        self.a = self.reg.register("A", "id-a", a_caps, [ClockSample(0.01, 0.01, "ntp:x")], WALL0)
        self.b = self.reg.register("B", "id-b", b_caps or caps(), [ClockSample(0.01, 0.01, "ntp:x")], WALL0)
        self.channels = {"A": self.reg.attach("A", 1), "B": self.reg.attach("B", 1)}

    def _kick(self) -> None:
        self.kicks += 1

    def waits(self, t: Task, agent: AgentState, mono: float, worse: Worse | None = None) -> bool:
        """Does ``t`` skip ``agent`` at ``mono``? (A fresh dispatch pass unless ``worse`` is given.)"""
        return self.delay.should_wait(t, agent, mono, self.wall(), {} if worse is None else worse)


def task(
    name: str = "t",
    inputs: tuple[tuple[str, int], ...] = ((D1, GB),),
    affinities: tuple[tuple[Expr, float], ...] = (),
    needs: Needs = NEEDS,
) -> Task:
    placement = Placement(inputs, affinities) if inputs or affinities else NO_PLACEMENT
    return Task(
        run_id="r1",
        name=name,
        spec=TaskSpec(name, ("true",)),
        needs=needs,
        order=0,
        spec_needs=needs,
        state=TaskState.READY,
        placement=placement,
        queued=True,
        ready_at=MONO0,
    )


# --------------------------------------------------------------------------- waiting for the data


def test_a_task_whose_input_is_cached_only_on_a_waits_when_b_asks() -> None:
    h = Harness(caps(cached=(D1,)))
    t = task()
    assert h.waits(t, h.b, MONO0 + 1.0)
    assert (t.wait_for, t.wait_until) == ("A", WALL0 + WAIT - 1.0)
    assert h.kicks == 0


def test_the_agent_holding_the_data_gets_the_task_at_once() -> None:
    h = Harness(caps(cached=(D1,)))
    t = task()
    assert not h.waits(t, h.a, MONO0)
    assert (t.wait_for, t.wait_until) == ("", 0.0)


def test_no_wait_past_placement_wait() -> None:
    h = Harness(caps(cached=(D1,)))
    t = task()
    assert h.waits(t, h.b, MONO0 + WAIT - 0.001)
    assert not h.waits(t, h.b, MONO0 + WAIT)
    assert not h.waits(task(), h.b, MONO0 + 60.0)


def test_never_waits_without_inputs_or_preferences() -> None:
    h = Harness(caps(cached=(D1,)))
    t = task(inputs=())
    assert t.placement is NO_PLACEMENT
    assert not h.waits(t, h.b, MONO0)
    assert t.wait_for == ""


def test_no_wait_when_no_agent_holds_the_data() -> None:
    h = Harness(caps())
    assert not h.waits(task(inputs=((D2, GB),)), h.b, MONO0)


def test_no_wait_when_the_asking_agent_holds_the_data_too() -> None:
    h = Harness(caps(cached=(D1,)), caps(cached=(D1,)))
    assert not h.waits(task(), h.b, MONO0)
    assert not h.waits(task(), h.a, MONO0)


def test_no_wait_for_a_holder_that_could_not_run_the_task() -> None:
    h = Harness(caps(cached=(D1,)), caps(labels={"box": "gpu"}))
    t = task(needs=Needs(cpus=1, labels=(("box", "gpu"),)))  # only B has the label
    assert not h.waits(t, h.b, MONO0)


def test_the_wait_ends_when_the_holder_disconnects() -> None:
    h = Harness(caps(cached=(D1,)))
    t = task()
    assert h.waits(t, h.b, MONO0 + 1.0)
    h.reg.detach(h.channels["A"])
    assert not h.waits(t, h.b, MONO0 + 2.0)


def test_a_holder_that_appears_later_is_waited_for() -> None:
    h = Harness(caps())
    t = task()
    assert not h.waits(t, h.b, MONO0)
    h.reg.apply_caps(h.a, caps(cached=(D1,)))  # A's heartbeat now lists the blob
    assert h.waits(t, h.b, MONO0 + 1.0)
    assert t.wait_for == "A"


# --------------------------------------------------------------------------- waiting for a preferred agent


def test_a_task_waits_for_the_agent_its_preferences_favour() -> None:
    h = Harness(caps(labels={"box": "gpu"}))
    t = task(inputs=(), affinities=((ON_GPU_BOX, 1.0),))
    assert not h.waits(t, h.a, MONO0)
    assert h.waits(t, h.b, MONO0)
    assert t.wait_for == "A"


def test_a_task_avoiding_an_agent_waits_for_the_other() -> None:
    h = Harness(caps(labels={"box": "gpu"}))
    t = task(inputs=(), affinities=((ON_GPU_BOX, -1.0),))
    assert h.waits(t, h.a, MONO0)
    assert t.wait_for == "B"
    assert not h.waits(t, h.b, MONO0)


# --------------------------------------------------------------------------- one dispatch pass


def test_alike_tasks_share_the_answer_within_a_pass() -> None:
    h = Harness(caps(cached=(D1,)))
    worse: Worse = {}
    first, second = task("first"), task("second")
    assert h.waits(first, h.b, MONO0, worse)
    assert list(worse.values()) == ["A"]
    assert h.waits(second, h.b, MONO0, worse)
    assert second.wait_for == "A"


# --------------------------------------------------------------------------- looking again when a wait ends


def test_due_kicks_dispatch_once_a_wait_has_ended() -> None:
    h = Harness(caps(cached=(D1,)))
    assert h.waits(task(), h.b, MONO0 + 1.0)  # the wait ends at MONO0 + WAIT
    h.delay.due(MONO0 + WAIT - 0.001)
    assert h.kicks == 0
    h.delay.due(MONO0 + WAIT)
    assert h.kicks == 1
    h.delay.due(MONO0 + WAIT + 10.0)
    assert h.kicks == 1  # each wakeup once


def test_due_kicks_for_each_wait_that_ended() -> None:
    h = Harness(caps(cached=(D1,)))
    early, late = task("early"), task("late")
    late.ready_at = MONO0 + 2.0
    assert h.waits(late, h.b, MONO0 + 2.5)
    assert h.waits(early, h.b, MONO0 + 2.5)
    h.delay.due(MONO0 + WAIT)
    assert h.kicks == 1
    h.delay.due(MONO0 + 2.0 + WAIT)
    assert h.kicks == 2


# --------------------------------------------------------------------------- the best-quality cache


def test_best_quality_names_the_best_connected_feasible_agent() -> None:
    h = Harness(caps(cached=(D1,)))
    t = task()
    best, agent = h.delay.best_quality(t, 0.0)
    assert agent == "A"
    assert best > 2.0  # all of the locality term, and no transfer to wait for
    assert h.delay.best_quality(t, best + 1.0) == (best + 1.0, "")  # nobody beats the floor


def test_a_holder_with_a_suspect_clock_is_not_waited_for_by_a_task_that_bounds_skew() -> None:
    needs = Needs(cpus=1, max_clock_skew=0.5)
    h = Harness(caps(cached=(D1,)))
    h.reg.observe_clocks(h.a, (ClockSample(3.0, 0.0, "ntp:x"),))  # suspect before anything was cached
    assert not h.waits(task(needs=needs), h.b, MONO0)


def test_a_holder_whose_clock_turned_suspect_is_not_waited_for_by_a_task_that_bounds_skew() -> None:
    needs = Needs(cpus=1, max_clock_skew=0.5)
    h = Harness(caps(cached=(D1,)))
    assert h.waits(task("first", needs=needs), h.b, MONO0)
    h.reg.observe_clocks(h.a, (ClockSample(3.0, 0.0, "ntp:x"),))  # A can no longer run it
    assert not h.waits(task("second", needs=needs), h.b, MONO0)
