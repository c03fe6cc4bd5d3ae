"""Placement as small pure stages: feasibility checkers → scorers → select.

Modelled on Nomad's feasibility/rank/select iterators. Everything here is pure
logic over a snapshot of agents and tasks: no gRPC, no SQL, no clocks. Each
checker returns a named reason (a constant below) when it rejects, so ``plan``
and ``explain`` can say, per agent and per clause, why a task cannot run there.

Two kinds of check:

* *static* checks compare a task with an agent's total capacity and labels:
  could this agent ever run the task?  (``plan`` uses these.)
* *dynamic* checks compare with what is free right now: can it run it now?
  (the pull path uses both.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from scheduler.model import Needs

# Reason names: a stable vocabulary printed by `plan` and `explain` and kept in --json.
REASON_CPUS = "insufficient cpus"
REASON_MEMORY = "insufficient memory"
REASON_DISK = "insufficient disk"
REASON_GPUS = "insufficient gpus"
REASON_LABEL_MISSING = "missing label"
REASON_LABEL_MISMATCH = "label mismatch"
REASON_FREE_CPUS = "cpus busy"
REASON_FREE_MEMORY = "memory busy"
REASON_FREE_GPUS = "gpus busy"
REASON_NO_SLOTS = "no free slots"
REASON_DISCONNECTED = "agent disconnected"


@dataclass(slots=True)
class AgentView:
    """What the matcher sees of one agent: capacity, labels and what is free now."""

    name: str
    cpus: float
    memory: int
    disk: int
    gpus: int
    labels: dict[str, str]
    connected: bool = True
    free_slots: int = 0
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: int = 0
    running: int = 0


@dataclass(slots=True)
class Rejection:
    reason: str
    detail: str


class Check(Protocol):
    """One feasibility clause. Returns None when the agent passes, else a Rejection."""

    def __call__(self, needs: Needs, agent: AgentView) -> Rejection | None: ...


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def check_cpus(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: the agent has as many cores as the task asks for."""
    if needs.cpus > agent.cpus:
        return Rejection(REASON_CPUS, f"needs {needs.cpus:g} cpus, agent has {agent.cpus:g}")
    return None


def check_memory(needs: Needs, agent: AgentView) -> Rejection | None:
    if needs.memory > agent.memory:
        return Rejection(
            REASON_MEMORY, f"needs {_fmt_bytes(needs.memory)} memory, agent has {_fmt_bytes(agent.memory)}"
        )
    return None


def check_disk(needs: Needs, agent: AgentView) -> Rejection | None:
    if needs.disk > agent.disk:
        return Rejection(REASON_DISK, f"needs {_fmt_bytes(needs.disk)} disk, agent has {_fmt_bytes(agent.disk)}")
    return None


def check_gpus(needs: Needs, agent: AgentView) -> Rejection | None:
    if needs.gpus > agent.gpus:
        return Rejection(REASON_GPUS, f"needs {needs.gpus} gpus, agent has {agent.gpus}")
    return None


def check_capacity(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: the agent's total resources cover the task's request (the first shortfall)."""
    for check in (check_cpus, check_memory, check_disk, check_gpus):
        rejection = check(needs, agent)
        if rejection is not None:
            return rejection
    return None


def check_labels(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: every required label is present with the required value."""
    for key, want in needs.labels:
        have = agent.labels.get(key)
        if have is None:
            return Rejection(REASON_LABEL_MISSING, f"label {key}={want} required, agent has no {key}")
        if have != want:
            return Rejection(REASON_LABEL_MISMATCH, f"label {key}={want} required, agent has {key}={have}")
    return None


def check_free(needs: Needs, agent: AgentView) -> Rejection | None:
    """Dynamic: the resources not held by running tasks cover the request now."""
    if not agent.connected:
        return Rejection(REASON_DISCONNECTED, "agent is not connected")
    if agent.free_slots <= 0:
        return Rejection(REASON_NO_SLOTS, "agent has no free slot")
    if needs.cpus > agent.cpus - agent.used_cpus + 1e-9:
        return Rejection(REASON_FREE_CPUS, f"{agent.cpus - agent.used_cpus:g} of {agent.cpus:g} cpus free")
    if needs.memory > agent.memory - agent.used_memory:
        return Rejection(REASON_FREE_MEMORY, f"{_fmt_bytes(agent.memory - agent.used_memory)} memory free")
    if needs.gpus > agent.gpus - agent.used_gpus:
        return Rejection(REASON_FREE_GPUS, f"{agent.gpus - agent.used_gpus} gpus free")
    return None


# The stack, in order. Static clauses first: they are what `plan` reports.
STATIC_CHECKS: tuple[Check, ...] = (
    check_cpus,      # total cores cover the request
    check_memory,    # total memory covers it
    check_disk,      # free disk covers it
    check_gpus,      # enough GPUs
    check_labels,    # label selector matches
)
DYNAMIC_CHECKS: tuple[Check, ...] = (
    check_free,      # connected, a free slot, and free resources now
)


def rejections(needs: Needs, agent: AgentView, checks: Sequence[Check] = STATIC_CHECKS) -> list[Rejection]:
    """Every failing clause (not just the first), for explanations."""
    return [r for r in (check(needs, agent) for check in checks) if r is not None]


def fits(needs: Needs, agent: AgentView) -> bool:
    """True when the agent passes every static and dynamic check (the hot path)."""
    for check in STATIC_CHECKS:
        if check(needs, agent) is not None:
            return False
    return check_free(needs, agent) is None


def score_load(needs: Needs, agent: AgentView) -> float:
    """Prefer the least loaded agent: 1.0 when idle, towards 0.0 when full."""
    total = agent.running + agent.free_slots
    return 1.0 - agent.running / total if total else 1.0


Scorer = Callable[[Needs, AgentView], float]
SCORERS: tuple[tuple[str, float, Scorer], ...] = (
    ("load", 1.0, score_load),
)


@dataclass(slots=True)
class Candidate:
    agent: str
    score: float
    breakdown: dict[str, float] = field(default_factory=dict)


def rank(needs: Needs, agents: Iterable[AgentView]) -> list[Candidate]:
    """Score every feasible agent (static checks) and sort best first."""
    out = []
    for agent in agents:
        if rejections(needs, agent):
            continue
        breakdown = {name: weight * fn(needs, agent) for name, weight, fn in SCORERS}
        out.append(Candidate(agent.name, sum(breakdown.values()), breakdown))
    out.sort(key=lambda c: (-c.score, c.agent))
    return out


def select_for_agent(
    agent: AgentView, ready: Iterable[tuple[Needs, object]], limit: int, scan_limit: int = 4096
) -> Iterator[object]:
    """The pull path: yield up to ``limit`` queued items this agent can run now.

    ``ready`` yields (needs, item) in queue order; resources are reserved on the
    view as items are chosen, so a batch never over-commits the agent. At most
    ``scan_limit`` items are examined, so one poll never scans everything.
    """
    taken = 0
    for scanned, (needs, item) in enumerate(ready):
        if taken >= limit or scanned >= scan_limit:
            return
        if fits(needs, agent):
            agent.free_slots -= 1
            agent.used_cpus += needs.cpus
            agent.used_memory += needs.memory
            agent.used_gpus += needs.gpus
            agent.running += 1
            taken += 1
            yield item
