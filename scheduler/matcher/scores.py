"""Ranking: one named scorer per term, their weighted sum, and the sort.

Scores (each in [0, 1] except affinity in [-1, 1]; the total is the weighted sum):

* ``locality``  = input bytes already in the agent's cache ÷ all input bytes (1 with no inputs)
* ``transfer``  = 1 / (1 + t / 10 s), t = missing input bytes ÷ the agent's measured bandwidth
* ``affinity``  = Σ weights of matching prefer/avoid clauses ÷ Σ |weights| (0 with none)
* ``load``      = 1 − running ÷ (running + free slots)

Placement *quality* (what delay scheduling compares) leaves out ``load``: a
task waits for an agent that holds its data or matches its preferences, never
merely for a less busy one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from scheduler.core.model import NO_PLACEMENT, Needs, Placement
from scheduler.matcher.checks import AgentView, expr_holds, feasible

#: A transfer this long halves the transfer score.
TRANSFER_HALF_S = 10.0
#: Assumed bandwidth of an agent that has not measured its link yet (100 Mbit/s).
DEFAULT_BANDWIDTH_BPS = 12.5e6
#: Quality within this of the best counts as "nearly best": no need to wait.
NEARLY_BEST = 0.05


def score_locality(p: Placement, agent: AgentView) -> float:
    total = p.input_bytes
    if total <= 0:
        return 1.0
    return sum(size for digest, size in p.inputs if digest in agent.cached) / total


def transfer_seconds(p: Placement, agent: AgentView) -> float:
    missing = sum(size for digest, size in p.inputs if digest not in agent.cached)
    return missing / (agent.bandwidth_bps or DEFAULT_BANDWIDTH_BPS)


def score_transfer(p: Placement, agent: AgentView) -> float:
    return 1.0 / (1.0 + transfer_seconds(p, agent) / TRANSFER_HALF_S)


def score_affinity(p: Placement, agent: AgentView) -> float:
    if not p.affinities:
        return 0.0
    total = sum(abs(w) for _, w in p.affinities)
    return sum(w for e, w in p.affinities if expr_holds(e, agent.labels)) / total


def score_load(p: Placement, agent: AgentView) -> float:
    """Prefer the least loaded agent: 1.0 when idle, towards 0.0 when full."""
    total = agent.running + agent.free_slots
    return 1.0 - agent.running / total if total else 1.0


@dataclass(frozen=True, slots=True)
class Scorer:
    """One term of the score: its name in breakdowns, its weight, and whether delay
    scheduling may wait for a better value of it (``quality``)."""

    name: str
    weight: float
    quality: bool
    fn: Callable[[Placement, AgentView], float]

    def score(self, p: Placement, agent: AgentView) -> float:
        return self.weight * self.fn(p, agent)


#: The terms of the score, with their weights (documented in docs/placement.md).
SCORERS: tuple[Scorer, ...] = (
    Scorer("locality", 2.0, True, score_locality),  # input bytes already cached there
    Scorer("transfer", 1.0, True, score_transfer),  # time to move the missing bytes
    Scorer("affinity", 1.0, True, score_affinity),  # prefer/avoid clauses that hold
    Scorer("load", 0.5, False, score_load),  # how busy the agent is
)
_QUALITY = tuple(s for s in SCORERS if s.quality)
W_LOCALITY, W_TRANSFER, W_AFFINITY, W_LOAD = (s.weight for s in SCORERS)


def breakdown(p: Placement, agent: AgentView) -> dict[str, float]:
    """Each weighted score term for one agent."""
    return {s.name: s.score(p, agent) for s in SCORERS}


def quality(p: Placement, agent: AgentView) -> float:
    """The part of the score delay scheduling compares (everything but load)."""
    if not p.inputs and not p.affinities:
        return 0.0
    return sum(s.score(p, agent) for s in _QUALITY)


@dataclass(slots=True)
class Candidate:
    agent: str
    score: float
    breakdown: dict[str, float] = field(default_factory=dict)


def rank(needs: Needs, agents: Iterable[AgentView], placement: Placement = NO_PLACEMENT) -> list[Candidate]:
    """Score every feasible agent (static checks) and sort best first."""
    out = []
    for agent in agents:
        if not feasible(needs, agent):
            continue
        terms = breakdown(placement, agent)
        out.append(Candidate(agent.name, sum(terms.values()), terms))
    out.sort(key=lambda c: (-c.score, c.agent))
    return out
