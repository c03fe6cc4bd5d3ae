"""Scenarios 1 and 2 of issue 7: an agent SIGKILLed in the middle of its stages.

1. It comes back at once (same host, same state dir, within the lease): its tasks go on
   there, re-attached to their still-running processes or resumed from their last
   checkpoint; no work redone beyond one checkpoint interval.
2. It never comes back: its tasks resume on another agent from the checkpoint it had
   uploaded, and its orphaned stages stop by themselves within one lease lifetime.

Needs the agent's durable leases and the checkpoint SDK/upload of issue 7; until they
land, the figures printed show what is lost (work redone, orphans running on).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.nscluster import NsCluster
from tests.faults.scenario import Scenario, stage_stopped_at
from tests.faults.workload import Figures, Shape, max_step, reassign_seconds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

LEASE_S = 3.0
# 6 s of work, checkpointed every second; the agent is killed at step 33 (see Shape.fault_step),
# so an orphan that does not stop by itself is still running well past a lease.
SHAPE = Shape()


def test_agent_sigkill_then_restart_resumes_on_the_same_agent(
    make_cluster: Callable[..., NsCluster], figures: Callable[[Figures], None]
) -> None:
    c = make_cluster(["sched", "a1"], lease_ttl=f"{LEASE_S:g}s")
    c.start_scheduler()
    c.add_agent("a1", labels={"pool": "x"}, slots=4)
    c.wait_agents(["a1"])
    s = Scenario("1. agent SIGKILL mid-stage, then restart", c, SHAPE)
    runs = s.submit(3)
    s.wait_steps(runs, SHAPE.fault_step)
    before = {r: s.task(r, "train").attempts for r in runs}
    t_kill = time.time()
    c.agents["a1"].proc.kill()
    c.restart_agent("a1")  # same flags, same state dir: the same instance comes back
    c.wait_agents(["a1"], timeout=30)
    s.notes.append(f"agent back (registered) {time.time() - t_kill:.1f}s after the SIGKILL")
    statuses = s.wait_runs(90)
    for r in runs:
        train = {t.name: t for t in statuses[r].tasks}["train"]
        secs = reassign_seconds(c.events([r]), r, "train", before[r], t_kill)
        if secs is not None:
            s.reassign_s.append(secs)
        assert {h.agent for h in train.history} <= {"a1"}, train
    fig = s.finish(statuses, figures, cutoff=t_kill)
    fig.check()


def test_agent_sigkill_never_restarted_resumes_elsewhere_from_its_checkpoint(
    make_cluster: Callable[..., NsCluster], figures: Callable[[Figures], None]
) -> None:
    c = make_cluster(["sched", "a1", "a2"], lease_ttl=f"{LEASE_S:g}s")
    c.start_scheduler()
    for name in ("a1", "a2"):
        c.add_agent(name, labels={"pool": "x"}, slots=2)
    c.wait_agents(["a1", "a2"])
    s = Scenario("2. agent SIGKILL, never restarted", c, SHAPE)
    runs = s.submit(4)
    s.wait_steps(runs, SHAPE.fault_step)
    trains = {r: s.task(r, "train") for r in runs}
    victim = max(("a1", "a2"), key=lambda a: sum(1 for t in trains.values() if t.agent == a))
    hit = [r for r, t in trains.items() if t.agent == victim]
    assert hit, trains
    t_kill = time.time()
    c.agents[victim].proc.kill()
    for r in hit:
        s.wait_reassigned(r, "train", trains[r].attempts, timeout=30)
    statuses = s.wait_runs(90)
    s.note_reassign(statuses, {r: trains[r].attempts for r in hit}, t_kill)
    # The orphans (their agent is dead) must stop by themselves within one lease lifetime.
    late = []
    for r in hit:
        stopped = stage_stopped_at(s.records, r, "train", trains[r].attempts)
        ran_on = (stopped or t_kill) - t_kill
        s.notes.append(
            f"orphan {r}/train (attempt {trains[r].attempts}) went on {ran_on:.1f}s after its agent died"
            f" (reached step {max_step(s.records, r, 'train', trains[r].attempts)})"
        )
        if ran_on > LEASE_S + 1.0:
            late.append(r)
        train = {t.name: t for t in statuses[r].tasks}["train"]
        assert train.agent != victim, train
    fig = s.finish(statuses, figures, cutoff=t_kill)
    fig.check()
    assert not late, f"orphaned stages still ran more than one lease ({LEASE_S:g}s) after their agent died: {late}"
