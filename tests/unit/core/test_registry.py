"""scheduler.core.registry.AgentRegistry alone: registration, version counters, clocks,
channels and credits, what agents hold, the cache index and feasibility memo.

A fake wall clock and a counting ``kick``; channels are created by the registry
(no event loop is needed to create, credit or close one).
"""

from __future__ import annotations

import dataclasses

import pytest

from outrider.errors import FailedPrecondition, InvalidArgument
from scheduler.core.messages import ArtifactRef, Capabilities, ClockSample, Gpu
from scheduler.core.model import Needs, Output, Task
from scheduler.core.registry import AgentRegistry
from scheduler.core.spec import TaskSpec
from scheduler.store.base import AgentRow
from tests.helpers.fake_clock import FakeClock

GiB = 2**30
WALL0 = 1_700_000_000.0
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def caps(
    cpus: int = 4,
    memory: int = 8 * GiB,
    gpus: int = 0,
    slots: int = 2,
    labels: dict[str, str] | None = None,
    cached: tuple[str, ...] = (),
    bandwidth: float = 0.0,
    zones: tuple[str, ...] = (),
) -> Capabilities:
    return Capabilities(
        cpu_cores=cpus,
        memory_bytes=memory,
        gpus=tuple(Gpu(index=i, model="H100", memory_bytes=80 * GiB) for i in range(gpus)),
        slots=slots,
        labels=labels or {},
        cached=tuple(ArtifactRef("", d, 100) for d in cached),
        bandwidth_bps=bandwidth,
        zones=zones,
    )


def ntp(offset: float, uncertainty: float = 0.0, source: str = "ntp:pool") -> ClockSample:
    return ClockSample(offset_s=offset, uncertainty_s=uncertainty, source=source)


class Harness:
    def __init__(self, max_clock_offset: float = 1.0) -> None:
        self.wall = FakeClock(WALL0)
        self.kicks = 0
        self.reg = AgentRegistry(max_clock_offset=max_clock_offset, wall=self.wall, kick=self._kick)

    def _kick(self) -> None:
        self.kicks += 1

    def versions(self) -> tuple[int, int]:
        return self.reg.labels_version, self.reg.agents_version


def task(name: str, needs: Needs, agent: str = "") -> Task:
    return Task(
        run_id="r1", name=name, spec=TaskSpec(name, ("true",)), needs=needs, order=0, spec_needs=needs, agent=agent
    )


# --------------------------------------------------------------------------- registration


def test_register_a_new_agent() -> None:
    h = Harness()
    agent = h.reg.register("a", "spiffe://a", caps(cpus=8, cached=(D1,)), [], WALL0)
    assert h.reg.get("a") is agent
    assert h.reg.require("a") is agent
    assert (agent.identity, agent.registered_at, agent.last_seen) == ("spiffe://a", WALL0, WALL0)
    assert (agent.view.cpus, agent.view.memory, agent.connected) == (8.0, 8 * GiB, False)
    assert h.reg.cache_index[D1] == {"a"}
    assert h.reg.digest_version[D1] == 1
    assert h.reg.agents_version == 1
    assert h.reg.capacity == [0.0, 0.0, 0.0]  # registered, not connected


def test_re_register_updates_capabilities_in_place() -> None:
    h = Harness()
    agent = h.reg.register("a", "id-1", caps(cpus=4, labels={"pool": "x"}), [], WALL0)
    view = agent.view
    new_caps = caps(cpus=16, labels={"pool": "y"})
    again = h.reg.register("a", "id-2", new_caps, [], WALL0 + 50)
    assert again is agent and again.view is view  # one state and one view per agent
    assert (view.cpus, view.labels) == (16.0, {"pool": "y"})
    assert agent.caps is new_caps
    assert (agent.identity, agent.registered_at, agent.last_seen) == ("id-2", WALL0, WALL0 + 50)
    assert list(h.reg.agents) == ["a"]


def test_require_of_an_unknown_agent_fails_precondition() -> None:
    h = Harness()
    with pytest.raises(FailedPrecondition, match="agent ghost is not registered"):
        h.reg.require("ghost")
    with pytest.raises(FailedPrecondition):
        h.reg.attach("ghost")
    assert h.reg.get("ghost") is None


# --------------------------------------------------------------------------- version counters


def test_versions_change_only_when_what_feasibility_or_preferences_see_changes() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(labels={"pool": "x"}), [], WALL0)
    v0 = h.versions()

    h.reg.apply_caps(agent, caps(labels={"pool": "x"}))  # the same again
    assert h.versions() == v0
    h.reg.apply_caps(agent, caps(labels={"pool": "x"}, cached=(D1,)))  # only the cache
    assert h.versions() == v0
    h.reg.apply_caps(agent, caps(labels={"pool": "x"}, cached=(D1,), bandwidth=1e9))  # only the link
    assert h.versions() == v0

    h.reg.apply_caps(agent, caps(labels={"pool": "y"}, cached=(D1,), bandwidth=1e9))
    assert h.versions() == (v0[0] + 1, v0[1] + 1)
    h.reg.apply_caps(agent, caps(labels={"pool": "y"}, cached=(D1,), bandwidth=1e9, gpus=1))
    assert h.versions() == (v0[0] + 2, v0[1] + 2)
    h.reg.apply_caps(agent, caps(labels={"pool": "y"}, cached=(D1,), bandwidth=1e9, gpus=1, zones=("eu",)))
    assert h.versions() == (v0[0] + 3, v0[1] + 3)


def test_a_new_agent_bumps_agents_version_and_a_connection_change_bumps_labels_version() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(), [], WALL0)
    assert h.versions() == (0, 1)
    ch1 = h.reg.attach("a")
    assert h.versions() == (1, 1)  # the set of connected agents changed
    ch2 = h.reg.attach("a")
    assert h.versions() == (1, 1)  # still the same set
    h.reg.detach(ch1)
    assert h.versions() == (1, 1)
    h.reg.detach(ch2)
    assert h.versions() == (2, 1)


def test_digest_version_changes_only_for_the_digests_that_came_or_went() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(cached=(D1,)), [], WALL0)
    before = dict(h.reg.digest_version)
    h.reg.apply_caps(agent, caps(cached=(D1, D2)))
    assert (h.reg.digest_version[D1], h.reg.digest_version[D2]) == (before[D1], 1)
    assert h.reg.cache_index[D2] == {"a"}
    h.reg.apply_caps(agent, caps(cached=(D2,)))
    assert (h.reg.digest_version[D1], h.reg.digest_version[D2]) == (before[D1] + 1, 1)
    assert D1 not in h.reg.cache_index


def test_apply_caps_kicks_dispatch() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(), [], WALL0)
    kicks = h.kicks
    h.reg.apply_caps(agent, caps())
    assert h.kicks == kicks + 1


# --------------------------------------------------------------------------- clocks


def test_clock_samples_past_max_clock_offset_mark_the_agent_clock_suspect() -> None:
    h = Harness(max_clock_offset=1.0)
    agent = h.reg.register("a", "id", caps(), [ntp(0.3, 0.2)], WALL0)
    assert (agent.view.clock_suspect, agent.view.clock_skew) == (False, 0.5)
    v = h.reg.agents_version

    h.reg.observe_clocks(agent, (ntp(-0.7, 0.4),))  # |offset| + uncertainty = 1.1
    assert agent.view.clock_suspect
    assert agent.view.clock_skew == pytest.approx(1.1)
    assert h.reg.agents_version == v + 1
    h.reg.observe_clocks(agent, (ntp(5.0),))  # still suspect: no change to count
    assert h.reg.agents_version == v + 1
    h.reg.observe_clocks(agent, ())  # no samples: nothing learnt, nothing changes
    assert (agent.view.clock_suspect, agent.view.clock_skew) == (True, 5.0)
    h.reg.observe_clocks(agent, (ntp(0.1),))
    assert not agent.view.clock_suspect
    assert h.reg.agents_version == v + 2


def test_the_worst_sample_decides_and_the_scheduler_sample_sets_the_offset() -> None:
    h = Harness(max_clock_offset=1.0)
    agent = h.reg.register("a", "id", caps(), [ntp(0.1, 0.05), ntp(-2.0, 0.5, source="scheduler")], WALL0)
    assert agent.view.clock_suspect
    assert agent.view.clock_skew == 2.5
    assert agent.sched_offset == -2.0
    assert agent.clock_uncertainty == 0.05  # the best source's


def test_exactly_max_clock_offset_is_not_suspect() -> None:
    h = Harness(max_clock_offset=1.0)
    agent = h.reg.register("a", "id", caps(), [ntp(0.75, 0.25)], WALL0)
    assert not agent.view.clock_suspect


# --------------------------------------------------------------------------- channels, capacity, credits


def test_attach_and_detach_keep_capacity_and_credited_right() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(cpus=4, memory=8 * GiB, gpus=1), [], WALL0)
    h.reg.register("b", "id", caps(cpus=2, memory=4 * GiB), [], WALL0)

    a1 = h.reg.attach("a", credits=2)
    assert h.reg.capacity == [4.0, 8 * GiB, 1.0]
    assert list(h.reg.credited) == [a1]
    a2 = h.reg.attach("a")  # a second channel, no credit: capacity counted once
    assert h.reg.capacity == [4.0, 8 * GiB, 1.0]
    assert list(h.reg.credited) == [a1]
    b1 = h.reg.attach("b", credits=1)
    assert h.reg.capacity == [6.0, 12 * GiB, 1.0]
    assert list(h.reg.credited) == [a1, b1]

    h.wall.t = WALL0 + 30
    h.reg.detach(a1)
    assert a1.closed
    assert list(h.reg.credited) == [b1]
    assert h.reg.capacity == [6.0, 12 * GiB, 1.0]  # a is still connected through a2
    assert h.reg.agents["a"].view.connected
    h.reg.detach(a2)
    assert h.reg.capacity == [2.0, 4 * GiB, 0.0]
    assert not h.reg.agents["a"].view.connected
    assert h.reg.agents["a"].last_seen == WALL0 + 30
    h.reg.detach(a2)  # twice: nothing more
    assert h.reg.capacity == [2.0, 4 * GiB, 0.0]
    h.reg.detach(b1)
    assert h.reg.capacity == [0.0, 0.0, 0.0]
    assert h.reg.credited == {}


def test_new_capabilities_of_a_connected_agent_move_capacity_and_of_a_disconnected_one_do_not() -> None:
    h = Harness()
    a = h.reg.register("a", "id", caps(cpus=4), [], WALL0)
    b = h.reg.register("b", "id", caps(cpus=2), [], WALL0)
    h.reg.attach("a")
    h.reg.apply_caps(a, caps(cpus=10, gpus=2))
    assert h.reg.capacity == [10.0, 8 * GiB, 2.0]
    h.reg.apply_caps(b, caps(cpus=32))  # b is not connected
    assert h.reg.capacity == [10.0, 8 * GiB, 2.0]


def test_add_credits_is_capped_by_slots_and_refuses_negatives() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(slots=3), [], WALL0)
    ch = h.reg.attach("a")
    assert ch not in h.reg.credited
    kicks = h.kicks
    h.reg.add_credits(ch, 2)
    assert ch.credits == 2
    assert ch in h.reg.credited
    assert h.kicks == kicks + 1
    h.reg.add_credits(ch, 5)
    assert ch.credits == 3
    with pytest.raises(InvalidArgument, match="must not be negative, got -1"):
        h.reg.add_credits(ch, -1)
    assert ch.credits == 3


def test_an_agent_advertising_no_slots_gets_one() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(slots=0), [], WALL0)
    ch = h.reg.attach("a")
    h.reg.add_credits(ch, 4)
    assert ch.credits == 1


def test_credits_on_a_closed_channel_do_not_make_it_credited() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(), [], WALL0)
    ch = h.reg.attach("a")
    h.reg.detach(ch)
    h.reg.add_credits(ch, 1)
    assert ch not in h.reg.credited


# --------------------------------------------------------------------------- what agents hold


def test_reserve_hold_and_release_keep_used_resources_and_running_consistent() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(cpus=8, gpus=2), [], WALL0)
    agent.view.free_slots = 2
    big = task("big", Needs(cpus=3, memory=2 * GiB, gpus=1), agent="a")
    small = task("small", Needs(cpus=1), agent="a")

    h.reg.reserve(agent, big)
    v = agent.view
    assert (v.used_cpus, v.used_memory, v.used_gpus, v.running, v.free_slots) == (3.0, 2 * GiB, 1, 1, 1)
    assert agent.running == {("r1", "big")}
    h.reg.hold(agent, big)  # already held: nothing counted twice
    h.reg.hold(agent, small)
    h.reg.hold(agent, small)
    assert (v.used_cpus, v.used_memory, v.used_gpus, v.running) == (4.0, 2 * GiB, 1, 2)
    assert agent.running == {("r1", "big"), ("r1", "small")}

    assert h.reg.release(big)
    assert (v.used_cpus, v.used_memory, v.used_gpus, v.running) == (1.0, 0, 0, 1)
    assert not h.reg.release(big)  # not held any more: nothing given back twice
    assert (v.used_cpus, v.running) == (1.0, 1)
    assert h.reg.release(small)
    assert (v.used_cpus, v.used_memory, v.used_gpus, v.running) == (0.0, 0, 0, 0)
    assert agent.running == set()


def test_release_of_a_task_whose_agent_is_unknown_or_did_not_hold_it() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(), [], WALL0)
    assert not h.reg.release(task("t", Needs(cpus=1), agent="ghost"))
    assert not h.reg.release(task("t", Needs(cpus=1), agent="a"))
    assert h.reg.agents["a"].view.used_cpus == 0.0


# --------------------------------------------------------------------------- cache index


def test_note_cached_indexes_what_an_agent_produced() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(), [], WALL0)
    out = Output("model", D1, 123, "file")
    h.reg.note_cached(agent, out)
    assert agent.view.cached == {D1: 123}
    assert h.reg.cache_index[D1] == {"a"}
    assert h.reg.digest_version[D1] == 1
    h.reg.note_cached(agent, out)  # already known: no change to count
    assert h.reg.digest_version[D1] == 1

    b = h.reg.register("b", "id", caps(), [], WALL0)
    h.reg.note_cached(b, out)
    assert h.reg.cache_index[D1] == {"a", "b"}
    assert h.reg.digest_version[D1] == 2


def test_a_heartbeat_without_a_noted_digest_drops_it_from_the_index() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(), [], WALL0)
    h.reg.note_cached(agent, Output("model", D1, 123, "file"))
    h.reg.apply_caps(agent, caps(cached=(D2,)))  # the agent's cache as it reports it
    assert D1 not in h.reg.cache_index
    assert h.reg.cache_index[D2] == {"a"}


def test_an_agent_restored_after_a_restart_is_in_the_cache_index_once_it_registers_again() -> None:
    h = Harness()
    stored = caps(cached=(D1,))
    h.reg.restore([AgentRow("a", "id", stored, WALL0 - 100, WALL0 - 10)])
    h.reg.register("a", "id", stored, [], WALL0)  # it comes back with the same cache
    assert h.reg.cache_index.get(D1) == {"a"}


# --------------------------------------------------------------------------- feasibility memo


def test_feasible_somewhere_is_memoised_yet_sees_a_capability_change() -> None:
    h = Harness()
    agent = h.reg.register("a", "id", caps(gpus=0), [], WALL0)
    needs = Needs(cpus=1, gpus=1)
    assert not h.reg.feasible_somewhere(needs)

    # Memoised: a view changed behind the registry's back (no version bump) is not seen.
    agent.view.gpus = 1
    assert not h.reg.feasible_somewhere(needs)
    assert not h.reg.feasible_somewhere(dataclasses.replace(needs))  # an equal Needs hits the memo

    agent.view.gpus = 0
    h.reg.apply_caps(agent, caps(gpus=1))  # through the registry: seen
    assert h.reg.feasible_somewhere(needs)
    h.reg.apply_caps(agent, caps(gpus=0))
    assert not h.reg.feasible_somewhere(needs)
    h.reg.register("b", "id", caps(gpus=2), [], WALL0)  # a new agent: seen
    assert h.reg.feasible_somewhere(needs)


def test_feasible_somewhere_sees_an_agents_clock_becoming_suspect() -> None:
    h = Harness(max_clock_offset=1.0)
    agent = h.reg.register("a", "id", caps(), [ntp(0.01)], WALL0)
    needs = Needs(cpus=1, max_clock_skew=0.5)
    assert h.reg.feasible_somewhere(needs)
    h.reg.observe_clocks(agent, (ntp(3.0),))
    assert not h.reg.feasible_somewhere(needs)


def test_infos_describe_each_agent_sorted_by_name() -> None:
    h = Harness()
    h.reg.register("b", "id-b", caps(), [], WALL0)
    h.reg.register("a", "id-a", caps(slots=4), [ntp(2.0)], WALL0)
    ch = h.reg.attach("a")
    h.reg.add_credits(ch, 3)
    infos = h.reg.infos()
    assert [(i.name, i.state, i.free_slots, i.clock_suspect) for i in infos] == [
        ("a", "ready", 3, True),
        ("b", "disconnected", 0, False),
    ]


# --------------------------------------------------------------------------- instances, health, draining


def test_admit_decides_between_instances_of_one_name() -> None:
    h = Harness()
    assert h.reg.admit("a", "i1") == (None, "")  # unknown name: anyone
    h.reg.register("a", "id", caps(), [], WALL0, "i1")
    agent = h.reg.agents["a"]
    assert agent.instance_id == "i1"
    ch = h.reg.attach("a")
    assert h.reg.admit("a", "i1") == (agent, "")  # the same instance: takes over its session
    assert ch.closed and agent.channels == []
    h.reg.attach("a")
    with pytest.raises(FailedPrecondition, match="i1.*i2"):
        h.reg.admit("a", "i2")  # another instance while connected
    h.reg.detach(agent.channels[0])
    assert h.reg.admit("a", "i2") == (agent, "i1")  # another, while not connected: takes over from i1
    assert h.reg.admit("a", "") == (agent, "")  # no instance id: no check
    restored = AgentRegistry(max_clock_offset=1.0, wall=h.wall, kick=lambda: None)
    restored.restore([AgentRow("a", "id", caps(), WALL0, WALL0, "i1")])
    assert restored.agents["a"].instance_id == "i1"


def test_an_unavailable_agents_credit_waits_until_it_is_back() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(slots=2), [], WALL0)
    agent = h.reg.agents["a"]
    ch = h.reg.attach("a", credits=2)
    assert ch in h.reg.credited and agent.available
    h.reg.set_condition(agent, "disk full", draining=False)
    assert not agent.available and ch not in h.reg.credited
    h.reg.add_credits(ch, 0)
    assert ch not in h.reg.credited  # credit is not offered while unhealthy
    assert h.reg.infos()[0].unhealthy == "disk full"
    kicks = h.kicks
    h.reg.set_condition(agent, "", draining=False)
    assert agent.available and ch in h.reg.credited and h.kicks > kicks


def test_drain_is_pushed_down_every_channel_and_lasts_until_the_agent_reports_it() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(), [], WALL0)
    agent = h.reg.agents["a"]
    ch = h.reg.attach("a", credits=1)
    h.reg.drain(agent)
    assert agent.draining and not agent.available and ch not in h.reg.credited
    assert ch.take().drain
    h.reg.set_condition(agent, "", draining=False)  # a heartbeat sent before it heard
    assert agent.draining
    h.reg.detach(ch)
    assert h.reg.attach("a").take().drain  # told again on reconnect
    h.reg.set_condition(agent, "", draining=True)  # it heard
    assert agent.draining and not agent.drain_requested
    h.reg.set_condition(agent, "", draining=False)  # it stopped draining (restarted)
    assert agent.available and h.reg.infos()[0].draining is False


def test_a_stream_from_another_connection_than_the_instance_registered_over_is_refused() -> None:
    h = Harness()
    h.reg.register("a", "id", caps(), [], WALL0, "i1", peer="ipv4:10.0.0.1:5000")
    with pytest.raises(FailedPrecondition, match="register again"):
        h.reg.attach("a", peer="ipv4:10.0.0.2:6000")
    assert h.reg.attach("a", peer="ipv4:10.0.0.1:5000").agent == "a"
    h.reg.register("b", "id", caps(), [], WALL0)  # no instance id (an older agent): no check
    assert h.reg.attach("b", peer="ipv4:10.0.0.9:1").agent == "b"
