"""scheduler.core.fairness.FairShare alone: dominant shares and the order runs are served in."""

from __future__ import annotations

import pytest

from scheduler.core.fairness import FairShare
from scheduler.core.model import Run
from scheduler.core.spec import Needs, PipelineSpec

GiB = 2**30


def run(run_id: str, tenant: str, seq: int, priority: int = 0) -> Run:
    return Run(
        run_id=run_id,
        pipeline="p",
        spec=PipelineSpec("p", ()),
        submitter=tenant,
        created_at=0.0,
        trace_id="tr",
        seq=seq,
        priority=priority,
        tenant=tenant,
    )


def ids(runs: list[Run]) -> list[str]:
    return [r.run_id for r in runs]


# --------------------------------------------------------------------------- dominant share


def test_dominant_share_is_the_largest_share_of_any_resource() -> None:
    fs = FairShare([10.0, 100.0 * GiB, 4.0])
    r = run("r1", "a", 1)
    fs.hold(r, Needs(cpus=2, memory=10 * GiB))  # 0.2 of cpus, 0.1 of memory
    assert fs.dominant_share("a") == pytest.approx(0.2)
    fs.hold(r, Needs(cpus=0, memory=0, gpus=2))  # 0.5 of gpus now dominates
    assert fs.dominant_share("a") == pytest.approx(0.5)
    assert fs.dominant_share("nobody") == 0.0


def test_a_resource_with_no_capacity_counts_for_nothing() -> None:
    fs = FairShare([8.0, 16.0 * GiB, 0.0])  # no GPUs connected
    fs.hold(run("r1", "a", 1), Needs(cpus=2, gpus=1))
    assert fs.dominant_share("a") == pytest.approx(0.25)


def test_dominant_share_reads_the_capacity_live() -> None:
    capacity = [4.0, 0.0, 0.0]
    fs = FairShare(capacity)
    fs.hold(run("r1", "a", 1), Needs(cpus=2))
    assert fs.dominant_share("a") == pytest.approx(0.5)
    capacity[0] = 8.0  # another agent connected (the registry updates the list in place)
    assert fs.dominant_share("a") == pytest.approx(0.25)
    capacity[0] = 0.0
    assert fs.dominant_share("a") == 0.0


# --------------------------------------------------------------------------- hold and release


def test_hold_and_release_keep_run_running_and_never_go_negative() -> None:
    fs = FairShare([10.0, 0.0, 0.0])
    r = run("r1", "a", 1)
    needs = Needs(cpus=2)
    fs.hold(r, needs)
    fs.hold(r, needs)
    assert r.running == 2
    assert fs.dominant_share("a") == pytest.approx(0.4)
    fs.release(r, needs)
    assert r.running == 1
    assert fs.dominant_share("a") == pytest.approx(0.2)
    fs.release(r, needs)
    fs.release(r, needs)  # one release too many
    assert r.running == 0
    assert fs.dominant_share("a") == 0.0
    fs.hold(r, needs)  # the extra release left no credit behind
    assert r.running == 1
    assert fs.dominant_share("a") == pytest.approx(0.2)


def test_release_without_a_hold_leaves_everything_at_zero() -> None:
    fs = FairShare([10.0, 10.0, 10.0])
    r = run("r1", "a", 1)
    fs.release(r, Needs(cpus=1, memory=1, gpus=1))
    assert (r.running, fs.dominant_share("a")) == (0, 0.0)


def test_usage_is_per_tenant_across_its_runs() -> None:
    fs = FairShare([10.0, 0.0, 0.0])
    r1, r2, other = run("r1", "a", 1), run("r2", "a", 2), run("r3", "b", 3)
    fs.hold(r1, Needs(cpus=1))
    fs.hold(r2, Needs(cpus=2))
    fs.hold(other, Needs(cpus=5))
    assert (r1.running, r2.running, other.running) == (1, 1, 1)
    assert fs.dominant_share("a") == pytest.approx(0.3)
    assert fs.dominant_share("b") == pytest.approx(0.5)


# --------------------------------------------------------------------------- serving order


def test_priority_comes_first_even_over_a_smaller_share() -> None:
    fs = FairShare([10.0, 0.0, 0.0])
    busy_urgent, idle = run("urgent", "a", 2, priority=5), run("idle", "b", 1)
    fs.hold(busy_urgent, Needs(cpus=9))
    low = run("low", "c", 0, priority=-1)
    assert ids(fs.order([idle, low, busy_urgent])) == ["urgent", "idle", "low"]


def test_then_the_smaller_dominant_share() -> None:
    fs = FairShare([10.0, 100.0, 0.0])
    heavy, light = run("heavy", "a", 1), run("light", "b", 2)
    fs.hold(heavy, Needs(cpus=1, memory=60))  # dominant: memory 0.6
    fs.hold(light, Needs(cpus=5, memory=0))  # dominant: cpus 0.5
    assert ids(fs.order([heavy, light])) == ["light", "heavy"]


def test_then_the_tenant_served_least_recently() -> None:
    fs = FairShare([0.0, 0.0, 0.0])  # nothing connected: every share is 0
    a, b, c = run("a1", "a", 1), run("b1", "b", 2), run("c1", "c", 3)
    fs.hold(a, Needs())
    fs.hold(b, Needs())
    assert ids(fs.order([a, b, c])) == ["c1", "a1", "b1"]  # c never served, then a before b
    fs.hold(a, Needs())
    assert ids(fs.order([a, b, c])) == ["c1", "b1", "a1"]


def test_then_submission_order() -> None:
    fs = FairShare([10.0, 0.0, 0.0])
    runs = [run("third", "a", 3), run("first", "a", 1), run("second", "b", 2)]
    assert ids(fs.order(runs)) == ["first", "second", "third"]


def test_key_orders_runs_as_order_does() -> None:
    fs = FairShare([10.0, 0.0, 0.0])
    runs = [run("r1", "a", 1, priority=1), run("r2", "b", 2), run("r3", "c", 3), run("r4", "b", 4, priority=1)]
    fs.hold(runs[1], Needs(cpus=3))
    fs.hold(runs[2], Needs(cpus=1))
    fs.hold(runs[0], Needs(cpus=1))
    assert ids(sorted(runs, key=fs.key)) == ids(fs.order(runs)) == ["r1", "r4", "r3", "r2"]
