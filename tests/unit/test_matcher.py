"""Tests for scheduler.matcher: feasibility checks, rejections, rank and select.

The matcher is pure logic over AgentView snapshots, so these tests build views
and Needs by hand: no store, no engine, no clocks.
"""
from __future__ import annotations

import pytest

from scheduler import matcher
from scheduler.matcher import (
    REASON_CPUS,
    REASON_DISCONNECTED,
    REASON_DISK,
    REASON_FREE_CPUS,
    REASON_FREE_GPUS,
    REASON_FREE_MEMORY,
    REASON_GPUS,
    REASON_LABEL_MISMATCH,
    REASON_LABEL_MISSING,
    REASON_MEMORY,
    REASON_NO_SLOTS,
    STATIC_CHECKS,
    AgentView,
    Rejection,
    rank,
    rejections,
)
from scheduler.matcher.checks import FREE, Cpus, Disk, Gpus, Labels, Memory

from scheduler.core.model import Needs

GiB = 2**30


def agent(name: str = "a1", *, cpus: float = 8, memory: int = 16 * GiB, disk: int = 100 * GiB, gpus: int = 0,
          labels: dict[str, str] | None = None, free_slots: int = 4, connected: bool = True,
          running: int = 0, used_cpus: float = 0.0, used_memory: int = 0, used_gpus: int = 0) -> AgentView:
    return AgentView(name=name, cpus=cpus, memory=memory, disk=disk, gpus=gpus, labels=dict(labels or {}),
                     connected=connected, free_slots=free_slots, used_cpus=used_cpus, used_memory=used_memory,
                     used_gpus=used_gpus, running=running)


def needs(cpus: float = 1.0, memory: int = 0, disk: int = 0, gpus: int = 0, **labels: str) -> Needs:
    return Needs(cpus=cpus, memory=memory, disk=disk, gpus=gpus, labels=tuple(sorted(labels.items())))


check_labels = Labels().check
check_free = FREE.check
CAPACITY = (Cpus(), Memory(), Disk(), Gpus())


def check_capacity(n: Needs, a: AgentView) -> Rejection | None:
    """The first shortfall of the agent's total resources, as the static stack reports it."""
    found = rejections(n, a, CAPACITY)
    return found[0] if found else None


# --------------------------------------------------------------------------- check_capacity


def test_capacity_accepts_exact_fit() -> None:
    assert check_capacity(needs(cpus=8, memory=16 * GiB, disk=100 * GiB, gpus=2), agent(gpus=2)) is None


def test_capacity_accepts_zero_request() -> None:
    assert check_capacity(needs(cpus=0), agent(cpus=0, memory=0, disk=0)) is None


@pytest.mark.parametrize(
    ("req", "reason", "numbers"),
    [
        (needs(cpus=16), REASON_CPUS, ("16", "8")),
        (needs(cpus=8.5), REASON_CPUS, ("8.5", "8")),
        (needs(memory=32 * GiB), REASON_MEMORY, ("32.0GiB", "16.0GiB")),
        (needs(disk=200 * GiB), REASON_DISK, ("200.0GiB", "100.0GiB")),
        (needs(gpus=1), REASON_GPUS, ("1", "0")),
    ],
)
def test_capacity_rejects_with_named_reason_and_numbers(req: Needs, reason: str, numbers: tuple[str, str]) -> None:
    rej = check_capacity(req, agent())
    assert rej is not None
    assert rej.reason == reason
    want, have = numbers
    assert f"needs {want}" in rej.detail
    assert f"agent has {have}" in rej.detail


def test_capacity_memory_detail_uses_human_units() -> None:
    rej = check_capacity(needs(memory=3 * 2**20), agent(memory=512 * 2**10))
    assert rej is not None and rej.reason == REASON_MEMORY
    assert "3.0MiB" in rej.detail and "512.0KiB" in rej.detail


def test_reason_constants_are_distinct() -> None:
    names = [v for k, v in vars(matcher).items() if k.startswith("REASON_")]
    assert len(names) == len(set(names)) >= 11


# --------------------------------------------------------------------------- check_labels


def test_labels_accept_matching_and_extra_labels() -> None:
    a = agent(labels={"site": "plant-7", "tier": "edge", "extra": "x"})
    assert check_labels(needs(site="plant-7", tier="edge"), a) is None
    assert check_labels(needs(), a) is None


def test_labels_reject_missing_key() -> None:
    rej = check_labels(needs(tier="gpu"), agent(labels={"site": "a"}))
    assert rej is not None
    assert rej.reason == REASON_LABEL_MISSING
    assert "tier=gpu" in rej.detail and "no tier" in rej.detail


def test_labels_reject_wrong_value() -> None:
    rej = check_labels(needs(tier="gpu"), agent(labels={"tier": "edge"}))
    assert rej is not None
    assert rej.reason == REASON_LABEL_MISMATCH
    assert "tier=gpu" in rej.detail and "tier=edge" in rej.detail


def test_labels_empty_value_is_still_required() -> None:
    # An agent label with an empty value matches an empty requirement, a missing key does not.
    assert check_labels(needs(zone=""), agent(labels={"zone": ""})) is None
    rej = check_labels(needs(zone=""), agent(labels={}))
    assert rej is not None and rej.reason == REASON_LABEL_MISSING


# --------------------------------------------------------------------------- check_free


def test_free_accepts_when_resources_free() -> None:
    a = agent(cpus=4, memory=8 * GiB, gpus=2, used_cpus=2, used_memory=4 * GiB, used_gpus=1, free_slots=1)
    assert check_free(needs(cpus=2, memory=4 * GiB, gpus=1), a) is None


def test_free_rejects_disconnected_first() -> None:
    rej = check_free(needs(), agent(connected=False, free_slots=0))
    assert rej is not None and rej.reason == REASON_DISCONNECTED


def test_free_rejects_without_slots() -> None:
    rej = check_free(needs(), agent(free_slots=0))
    assert rej is not None and rej.reason == REASON_NO_SLOTS


def test_free_rejects_busy_cpus_naming_numbers() -> None:
    rej = check_free(needs(cpus=2), agent(cpus=4, used_cpus=3))
    assert rej is not None and rej.reason == REASON_FREE_CPUS
    assert "1 of 4 cpus free" in rej.detail


def test_free_rejects_busy_memory_naming_numbers() -> None:
    rej = check_free(needs(memory=4 * GiB), agent(memory=8 * GiB, used_memory=6 * GiB))
    assert rej is not None and rej.reason == REASON_FREE_MEMORY
    assert "2.0GiB" in rej.detail


def test_free_rejects_busy_gpus_naming_numbers() -> None:
    rej = check_free(needs(gpus=2), agent(gpus=2, used_gpus=1))
    assert rej is not None and rej.reason == REASON_FREE_GPUS
    assert "1 gpus free" in rej.detail


def test_free_tolerates_float_rounding_of_cpus() -> None:
    # 0.1 + 0.2 reserved of 0.3 + 0.4 leaves 0.4 (give or take a rounding error).
    a = agent(cpus=0.7, used_cpus=0.1 + 0.2)
    assert check_free(needs(cpus=0.4), a) is None


# --------------------------------------------------------------------------- rejections / fits


def test_rejections_returns_every_failing_clause() -> None:
    rej = rejections(needs(cpus=64, tier="gpu"), agent(labels={"tier": "edge"}))
    assert [r.reason for r in rej] == [REASON_CPUS, REASON_LABEL_MISMATCH]


def test_rejections_with_dynamic_checks() -> None:
    checks = matcher.STATIC_CHECKS + matcher.DYNAMIC_CHECKS
    rej = rejections(needs(cpus=64, site="x"), agent(free_slots=0), checks)
    assert [r.reason for r in rej] == [REASON_CPUS, REASON_LABEL_MISSING, REASON_NO_SLOTS]


def test_rejections_empty_when_feasible() -> None:
    assert rejections(needs(cpus=2, tier="gpu"), agent(labels={"tier": "gpu"})) == []


def test_fits_needs_static_and_dynamic() -> None:
    assert fits(needs(), agent())
    assert not fits(needs(cpus=64), agent())          # static
    assert not fits(needs(tier="gpu"), agent())       # static, labels
    assert not fits(needs(), agent(free_slots=0))     # dynamic


# --------------------------------------------------------------------------- rank


def test_rank_orders_by_score_then_name() -> None:
    busy = agent("busy", running=3, free_slots=1)    # load score 0.25
    idle_b = agent("b-idle", running=0, free_slots=4)  # 1.0
    idle_a = agent("a-idle", running=0, free_slots=4)  # 1.0
    half = agent("half", running=2, free_slots=2)    # 0.5
    out = rank(needs(), [busy, idle_b, half, idle_a])
    assert [c.agent for c in out] == ["a-idle", "b-idle", "half", "busy"]
    # No inputs and no affinities: locality 2.0 and transfer 1.0 for everyone; load (weight 0.5) decides.
    assert out[0].score == pytest.approx(3.5)
    assert out[-1].score == pytest.approx(3.125)
    assert out[0].breakdown == {"locality": pytest.approx(2.0), "transfer": pytest.approx(1.0),
                                "affinity": pytest.approx(0.0), "load": pytest.approx(0.5)}


def test_rank_leaves_out_infeasible_agents() -> None:
    small = agent("small", cpus=1)
    wrong = agent("wrong", labels={"tier": "edge"})
    right = agent("right", labels={"tier": "gpu"})
    out = rank(needs(cpus=2, tier="gpu"), [small, wrong, right])
    assert [c.agent for c in out] == ["right"]


# --------------------------------------------------------------------------- reserving across a batch


def fits(n: Needs, a: AgentView) -> bool:
    """What the engine asks of an agent for a task now: static clauses, then what is free."""
    return matcher.feasible(n, a) and check_free(n, a) is None


def select_for_agent(a: AgentView, ready: list[tuple[Needs, object]], limit: int) -> list[object]:
    """The engine's pull step in miniature: take fitting items in order, reserving each."""
    out = []
    for n, item in ready:
        if len(out) >= limit:
            break
        if fits(n, a):
            a.reserve(n)
            out.append(item)
    return out


def queue(*items: tuple[str, Needs]) -> list[tuple[Needs, object]]:
    return [(n, name) for name, n in items]


def test_select_respects_limit() -> None:
    a = agent(cpus=64, free_slots=10)
    ready = queue(*[(f"t{i}", needs()) for i in range(5)])
    assert list(select_for_agent(a, ready, limit=2)) == ["t0", "t1"]
    assert a.free_slots == 8 and a.running == 2 and a.used_cpus == 2


def test_select_limit_zero_takes_nothing() -> None:
    a = agent()
    assert list(select_for_agent(a, queue(("t0", needs())), limit=0)) == []
    assert a.free_slots == 4 and a.running == 0


def test_select_reserves_cpus_across_batch() -> None:
    a = agent(cpus=4, free_slots=10)
    ready = queue(("a", needs(cpus=3)), ("b", needs(cpus=2)), ("c", needs(cpus=1)), ("d", needs(cpus=1)))
    assert list(select_for_agent(a, ready, limit=10)) == ["a", "c"]
    assert a.used_cpus == 4


def test_select_reserves_memory_across_batch() -> None:
    a = agent(memory=8 * GiB, free_slots=10)
    ready = queue(("a", needs(cpus=0, memory=5 * GiB)), ("b", needs(cpus=0, memory=4 * GiB)),
                  ("c", needs(cpus=0, memory=3 * GiB)))
    assert list(select_for_agent(a, ready, limit=10)) == ["a", "c"]
    assert a.used_memory == 8 * GiB


def test_select_reserves_gpus_across_batch() -> None:
    a = agent(gpus=2, free_slots=10)
    ready = queue(("a", needs(gpus=1)), ("b", needs(gpus=2)), ("c", needs(gpus=1)), ("d", needs(gpus=1)))
    assert list(select_for_agent(a, ready, limit=10)) == ["a", "c"]
    assert a.used_gpus == 2


def test_select_reserves_slots_across_batch() -> None:
    a = agent(cpus=64, free_slots=2)
    ready = queue(*[(f"t{i}", needs()) for i in range(5)])
    assert list(select_for_agent(a, ready, limit=10)) == ["t0", "t1"]
    assert a.free_slots == 0


def test_select_never_overcommits() -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        a = agent(cpus=rng.choice([1, 2, 4, 8]), memory=rng.choice([1, 4, 8]) * GiB, gpus=rng.choice([0, 1, 2]),
                  free_slots=rng.randint(0, 6))
        slots = a.free_slots
        ready = queue(*[
            (f"t{i}", needs(cpus=rng.choice([0, 0.5, 1, 2, 3]), memory=rng.choice([0, 1, 2, 3]) * GiB,
                            gpus=rng.choice([0, 0, 1, 2])))
            for i in range(rng.randint(0, 12))
        ])
        by_name = {name: n for n, name in ready}
        chosen = list(select_for_agent(a, ready, limit=rng.randint(0, 8)))
        assert len(chosen) <= slots
        assert sum(by_name[c].cpus for c in chosen) <= a.cpus + 1e-9
        assert sum(by_name[c].memory for c in chosen) <= a.memory
        assert sum(by_name[c].gpus for c in chosen) <= a.gpus


def test_select_skips_unfit_and_takes_later_fitting() -> None:
    a = agent(cpus=4, labels={"tier": "edge"}, free_slots=4)
    ready = queue(("big", needs(cpus=16)), ("gpu", needs(tier="gpu")), ("ok", needs()), ("ok2", needs(tier="edge")))
    assert list(select_for_agent(a, ready, limit=4)) == ["ok", "ok2"]


def test_select_disconnected_agent_takes_nothing() -> None:
    a = agent(connected=False)
    assert list(select_for_agent(a, queue(("t", needs())), limit=4)) == []


def test_fast_feasible_agrees_with_every_clause() -> None:
    """matcher.feasible (the hot path) must give exactly `not rejections(...)`."""
    import random

    from scheduler.core.spec import Expr

    rng = random.Random(7)
    exprs = [Expr("cuda", ">=", ("12.1",)), Expr("site", "in", ("a", "b")), Expr("gpu", "exists"),
             Expr("tier", "!=", ("edge",)), Expr("site", "not in", ("c",)), Expr("x", "not exists")]
    for _ in range(3000):
        n = Needs(cpus=rng.choice([0, 1, 4, 16]), memory=rng.choice([0, GiB, 64 * GiB]),
                  gpus=rng.choice([0, 1, 2]), labels=tuple(rng.sample([("tier", "gpu"), ("zone", "x")], rng.randint(0, 1))),
                  gpu_memory=rng.choice([0, 20 * GiB]), gpu_model=rng.choice(["", "H100", "a100"]),
                  exprs=tuple(rng.sample(exprs, rng.randint(0, 2))),
                  residency=rng.choice([None, frozenset(), frozenset({"eu"}), frozenset({"us", "eu"})]),
                  max_clock_skew=rng.choice([0.0, 0.5]))
        a = agent(cpus=rng.choice([2, 8]), memory=rng.choice([GiB, 16 * GiB]), gpus=rng.choice([0, 1, 2]),
                  labels=dict(rng.sample([("tier", "gpu"), ("tier", "edge"), ("cuda", "12.4"), ("site", "a"),
                                          ("gpu", "1"), ("x", "y")], rng.randint(0, 3))))
        a.gpu_models = tuple(rng.choice(["NVIDIA H100", "A100-SXM"]) for _ in range(a.gpus))
        a.gpu_free_memory = tuple(rng.choice([10 * GiB, 40 * GiB]) for _ in range(a.gpus))
        a.zones = rng.choice([frozenset(), frozenset({"eu"}), frozenset({"us"})])
        a.clock_skew = rng.choice([0.1, 0.9])
        a.clock_suspect = rng.random() < 0.2
        assert matcher.feasible(n, a) == (not rejections(n, a)), (n, a)


def test_every_check_fast_answer_equals_its_explanation() -> None:
    """Each check's ``ok`` (the hot path) must equal ``check(...) is None``, and a clause that
    does not apply to some needs must never reject them."""
    import random

    from scheduler.core.spec import Expr

    rng = random.Random(11)
    exprs = [Expr("cuda", ">=", ("12.1",)), Expr("site", "in", ("a", "b")), Expr("x", "not exists")]
    checks = (*STATIC_CHECKS, *matcher.DYNAMIC_CHECKS)
    for _ in range(2000):
        n = Needs(cpus=rng.choice([0, 1, 4]), memory=rng.choice([0, GiB]), disk=rng.choice([0, GiB]),
                  gpus=rng.choice([0, 1]), labels=tuple(rng.sample([("tier", "gpu")], rng.randint(0, 1))),
                  gpu_memory=rng.choice([0, 20 * GiB]), gpu_model=rng.choice(["", "H100"]),
                  exprs=tuple(rng.sample(exprs, rng.randint(0, 2))),
                  residency=rng.choice([None, frozenset(), frozenset({"eu"})]), max_clock_skew=rng.choice([0.0, 0.5]))
        a = agent(cpus=rng.choice([0, 2]), memory=rng.choice([0, GiB]), disk=rng.choice([0, GiB]),
                  gpus=rng.choice([0, 1]), labels=dict(rng.sample([("tier", "gpu"), ("cuda", "12.4")], 1)),
                  free_slots=rng.choice([0, 1]), connected=rng.random() < 0.9, used_cpus=rng.choice([0, 1]))
        a.gpu_models = ("NVIDIA H100",) * a.gpus
        a.gpu_free_memory = (rng.choice([10 * GiB, 40 * GiB]),) * a.gpus
        a.zones = rng.choice([frozenset(), frozenset({"eu"})])
        a.clock_skew, a.clock_suspect = rng.choice([0.1, 0.9]), rng.random() < 0.2
        for c in checks:
            assert c.ok(n, a) == (c.check(n, a) is None), (c, n, a)
            if not c.applies(n):
                assert c.check(n, a) is None, (c, n, a)


def test_clause_names_come_from_the_checks() -> None:
    assert matcher.CLAUSES == tuple(c.clause for c in STATIC_CHECKS)
    assert len(set(matcher.CLAUSES)) == len(matcher.CLAUSES)
