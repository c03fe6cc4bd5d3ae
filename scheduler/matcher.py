"""Placement as small pure stages: feasibility checkers → scorers → select.

Modelled on Nomad's feasibility/rank/select iterators. Everything here is pure
logic over a snapshot of agents and tasks: no gRPC, no SQL, no clocks. Each
checker returns a named reason (a constant below) when it rejects, so ``plan``
and ``explain`` can say, per agent and per clause, why a task cannot run there
and what would make it fit. The reason names are documented in
docs/placement.md and are part of the ``--json`` contract.

Two kinds of check:

* *static* checks compare a task with an agent's capacity, labels, zones and
  clock: could this agent ever run the task?  (``plan`` uses these.)
* *dynamic* checks compare with what is free right now: can it run it now?
  (the pull path uses both.)

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

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

from scheduler.model import NO_PLACEMENT, Expr, Needs, Placement

# Reason names: a stable vocabulary printed by `plan` and `explain` and kept in --json.
REASON_CPUS = "insufficient cpus"
REASON_MEMORY = "insufficient memory"
REASON_DISK = "insufficient disk"
REASON_GPUS = "insufficient gpus"
REASON_GPU_MEMORY = "insufficient gpu memory"
REASON_GPU_MODEL = "gpu model mismatch"
REASON_LABEL_MISSING = "missing label"
REASON_LABEL_MISMATCH = "label mismatch"
REASON_EXPRESSION = "label expression false"
REASON_RESIDENCY = "outside residency zones"
REASON_RESIDENCY_CONFLICT = "residency conflict"
REASON_CLOCK_SUSPECT = "clock suspect"
REASON_CLOCK_SKEW = "clock skew too large"
REASON_FREE_CPUS = "cpus busy"
REASON_FREE_MEMORY = "memory busy"
REASON_FREE_GPUS = "gpus busy"
REASON_NO_SLOTS = "no free slots"
REASON_DISCONNECTED = "agent disconnected"

#: Weights of the scores in the total (documented in docs/placement.md).
W_LOCALITY = 2.0
W_TRANSFER = 1.0
W_AFFINITY = 1.0
W_LOAD = 0.5
#: A transfer this long halves the transfer score.
TRANSFER_HALF_S = 10.0
#: Assumed bandwidth of an agent that has not measured its link yet (100 Mbit/s).
DEFAULT_BANDWIDTH_BPS = 12.5e6
#: Quality within this of the best counts as "nearly best": no need to wait.
NEARLY_BEST = 0.05


@dataclass(slots=True)
class AgentView:
    """What the matcher sees of one agent: capacity, labels, zones, clock, cache, and what is free."""

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
    gpu_models: tuple[str, ...] = ()
    gpu_free_memory: tuple[int, ...] = ()
    zones: frozenset[str] = frozenset()
    clock_skew: float = 0.0
    clock_suspect: bool = False
    bandwidth_bps: float = 0.0
    cached: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Rejection:
    reason: str
    detail: str


class Check(Protocol):
    """One feasibility clause. Returns None when the agent passes, else a Rejection."""

    def __call__(self, needs: Needs, agent: AgentView) -> Rejection | None: ...


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


# --------------------------------------------------------------------------- static clauses

def check_cpus(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: the agent has as many cores as the task asks for."""
    if needs.cpus > agent.cpus:
        return Rejection(REASON_CPUS, f"needs {needs.cpus:g} cpus, agent has {agent.cpus:g}")
    return None


def check_memory(needs: Needs, agent: AgentView) -> Rejection | None:
    if needs.memory > agent.memory:
        return Rejection(REASON_MEMORY, f"needs {fmt_bytes(needs.memory)} memory, agent has {fmt_bytes(agent.memory)}")
    return None


def check_disk(needs: Needs, agent: AgentView) -> Rejection | None:
    if needs.disk > agent.disk:
        return Rejection(REASON_DISK, f"needs {fmt_bytes(needs.disk)} disk, agent has {fmt_bytes(agent.disk)}")
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


def _gpus_wanted(needs: Needs) -> int:
    return max(needs.gpus, 1)


def check_gpu_model(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: enough GPUs whose model contains the requested name (case-insensitive)."""
    if not needs.gpu_model:
        return None
    want = needs.gpu_model.lower()
    have = sum(1 for m in agent.gpu_models if want in m.lower())
    if have < _gpus_wanted(needs):
        models = ", ".join(sorted(set(agent.gpu_models))) or "no GPUs"
        return Rejection(REASON_GPU_MODEL, f"needs {_gpus_wanted(needs)} {needs.gpu_model} GPU(s), agent has {models}")
    return None


def check_gpu_memory(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: enough GPUs with at least the requested free memory each."""
    if needs.gpu_memory <= 0:
        return None
    have = sum(1 for m in agent.gpu_free_memory if m >= needs.gpu_memory)
    if have < _gpus_wanted(needs):
        best = max(agent.gpu_free_memory, default=0)
        return Rejection(REASON_GPU_MEMORY, f"needs {fmt_bytes(needs.gpu_memory)} free per GPU on "
                                            f"{_gpus_wanted(needs)} GPU(s), agent's best has {fmt_bytes(best)}")
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


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def expr_holds(expr: Expr, labels: dict[str, str]) -> bool:
    """Evaluate one label expression against an agent's labels."""
    have = labels.get(expr.key)
    op = expr.op
    if op == "exists":
        return have is not None
    if op == "not exists":
        return have is None
    if op == "=":
        return have is not None and have == expr.values[0]
    if op == "!=":
        return have != expr.values[0]
    if op == "in":
        return have is not None and have in expr.values
    if op == "not in":
        return have not in expr.values
    if op in (">=", "<="):
        a, b = _number(have) if have is not None else None, _number(expr.values[0])
        if a is None or b is None:
            return False
        return a >= b if op == ">=" else a <= b
    return False


def check_expressions(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: every label expression holds (all failing ones are named)."""
    failing = [e for e in needs.exprs if not expr_holds(e, agent.labels)]
    if failing:
        shown = "; ".join(f"{e} (agent has {e.key}={agent.labels[e.key]})" if e.key in agent.labels
                          else f"{e} (agent has no {e.key})" for e in failing)
        return Rejection(REASON_EXPRESSION, shown)
    return None


def check_residency(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: the agent sits in one of the zones the task's data may be processed in.

    A hard rule: no score can outweigh it.
    """
    if needs.residency is None:
        return None
    if not needs.residency:
        return Rejection(REASON_RESIDENCY_CONFLICT, "the task's residency and its inputs' have no zone in common")
    if agent.zones & needs.residency:
        return None
    zones = ", ".join(sorted(agent.zones)) or "no zones"
    return Rejection(REASON_RESIDENCY, f"data may be processed only in {', '.join(sorted(needs.residency))}; "
                                       f"agent sits in {zones}")


def check_clock(needs: Needs, agent: AgentView) -> Rejection | None:
    """Static: with a max_clock_skew, the agent's clock is trusted and close enough."""
    if needs.max_clock_skew <= 0:
        return None
    if agent.clock_suspect:
        return Rejection(REASON_CLOCK_SUSPECT, f"agent's clock is suspect (skew {agent.clock_skew:.3f}s)")
    if agent.clock_skew > needs.max_clock_skew:
        return Rejection(REASON_CLOCK_SKEW, f"clock offset + uncertainty {agent.clock_skew:.3f}s exceeds "
                                            f"max_clock_skew {needs.max_clock_skew:g}s")
    return None


# --------------------------------------------------------------------------- dynamic clause

def check_free(needs: Needs, agent: AgentView) -> Rejection | None:
    """Dynamic: the resources not held by running tasks cover the request now."""
    if not agent.connected:
        return Rejection(REASON_DISCONNECTED, "agent is not connected")
    if agent.free_slots <= 0:
        return Rejection(REASON_NO_SLOTS, "agent has no free slot")
    if needs.cpus > agent.cpus - agent.used_cpus + 1e-9:
        return Rejection(REASON_FREE_CPUS, f"{agent.cpus - agent.used_cpus:g} of {agent.cpus:g} cpus free")
    if needs.memory > agent.memory - agent.used_memory:
        return Rejection(REASON_FREE_MEMORY, f"{fmt_bytes(agent.memory - agent.used_memory)} memory free")
    if needs.gpus > agent.gpus - agent.used_gpus:
        return Rejection(REASON_FREE_GPUS, f"{agent.gpus - agent.used_gpus} gpus free")
    return None


# The stack, in order, one line per clause. Static clauses are what `plan` reports.
STATIC_CHECKS: tuple[Check, ...] = (
    check_cpus,         # total cores cover the request
    check_memory,       # total memory covers it
    check_disk,         # free disk covers it
    check_gpus,         # enough GPUs
    check_gpu_model,    # of the requested model
    check_gpu_memory,   # with enough free memory each
    check_labels,       # label selector (key=value) matches
    check_expressions,  # every label expression holds
    check_residency,    # the agent sits in an allowed zone (hard rule)
    check_clock,        # the agent's clock is within max_clock_skew and not suspect
)
DYNAMIC_CHECKS: tuple[Check, ...] = (
    check_free,         # connected, a free slot, and free resources now
)
#: Clause names, in STATIC_CHECKS order, for per-clause pass counts.
CLAUSES: tuple[str, ...] = (
    "cpus", "memory", "disk", "gpus", "gpu_model", "gpu_memory", "labels", "expressions", "residency", "clock",
)


def rejections(needs: Needs, agent: AgentView, checks: Sequence[Check] = STATIC_CHECKS) -> list[Rejection]:
    """Every failing clause (not just the first), for explanations."""
    return [r for r in (check(needs, agent) for check in checks) if r is not None]


def feasible(needs: Needs, agent: AgentView) -> bool:
    """Static feasibility: the same answer as ``not rejections(needs, agent)``, without
    building any explanation (the hot path: most agent × needs pairs fail)."""
    if (needs.cpus > agent.cpus or needs.memory > agent.memory or needs.disk > agent.disk
            or needs.gpus > agent.gpus):
        return False
    if (needs.gpu_model or needs.gpu_memory > 0) and (
            check_gpu_model(needs, agent) is not None or check_gpu_memory(needs, agent) is not None):
        return False
    labels = agent.labels
    for key, want in needs.labels:
        if labels.get(key) != want:
            return False
    for expr in needs.exprs:
        if not expr_holds(expr, labels):
            return False
    if needs.residency is not None and not (agent.zones & needs.residency):
        return False
    if needs.max_clock_skew > 0 and (agent.clock_suspect or agent.clock_skew > needs.max_clock_skew):
        return False
    return True


# --------------------------------------------------------------------------- scores

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


def score_load(needs: Needs, agent: AgentView) -> float:
    """Prefer the least loaded agent: 1.0 when idle, towards 0.0 when full."""
    total = agent.running + agent.free_slots
    return 1.0 - agent.running / total if total else 1.0


def breakdown(needs: Needs, p: Placement, agent: AgentView) -> dict[str, float]:
    """Each weighted score term for one agent."""
    return {
        "locality": W_LOCALITY * score_locality(p, agent),
        "transfer": W_TRANSFER * score_transfer(p, agent),
        "affinity": W_AFFINITY * score_affinity(p, agent),
        "load": W_LOAD * score_load(needs, agent),
    }


def quality(p: Placement, agent: AgentView) -> float:
    """The part of the score delay scheduling compares (everything but load)."""
    if not p.inputs and not p.affinities:
        return 0.0
    return (W_LOCALITY * score_locality(p, agent) + W_TRANSFER * score_transfer(p, agent)
            + W_AFFINITY * score_affinity(p, agent))


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
        terms = breakdown(needs, placement, agent)
        out.append(Candidate(agent.name, sum(terms.values()), terms))
    out.sort(key=lambda c: (-c.score, c.agent))
    return out


def hold(agent: AgentView, needs: Needs) -> None:
    """Count a running task's resources on the view."""
    agent.used_cpus += needs.cpus
    agent.used_memory += needs.memory
    agent.used_gpus += needs.gpus
    agent.running += 1


def unhold(agent: AgentView, needs: Needs) -> None:
    """The inverse of :func:`hold`, when the task ends."""
    agent.used_cpus = max(0.0, agent.used_cpus - needs.cpus)
    agent.used_memory = max(0, agent.used_memory - needs.memory)
    agent.used_gpus = max(0, agent.used_gpus - needs.gpus)
    agent.running = max(0, agent.running - 1)


def reserve(agent: AgentView, needs: Needs) -> None:
    """Hold a task's resources and take one of the slots the agent offered in this pass."""
    agent.free_slots -= 1
    hold(agent, needs)


# --------------------------------------------------------------------------- explanations

def suggest(needs: Needs, agents: Sequence[AgentView]) -> list[str]:
    """The smallest changes that would make an infeasible task feasible.

    An agent that fails exactly one clause shows a one-clause change that would
    do; those come first, most agents first. Where no agent is one change away,
    each clause's best offer is described instead.
    """
    if not agents:
        return ["no agent is registered"]
    one_away: dict[str, int] = {}
    per_reason: dict[str, list[Rejection]] = {}
    for agent in agents:
        rej = rejections(needs, agent)
        if len(rej) == 1:
            text = _relax(rej[0], needs, agents)
            one_away[text] = one_away.get(text, 0) + 1
        for r in rej:
            per_reason.setdefault(r.reason, []).append(r)
    if one_away:
        return [f"{text} ({n} agent{'s' if n != 1 else ''} would then fit)"
                for text, n in sorted(one_away.items(), key=lambda kv: (-kv[1], kv[0]))]
    return [_relax(rs[0], needs, agents) + f" ({len(rs)} of {len(agents)} agents fail this)"
            for reason, rs in sorted(per_reason.items())]


def _relax(r: Rejection, needs: Needs, agents: Sequence[AgentView]) -> str:
    """A human sentence for relaxing one clause, with what the agents do offer."""
    return f"{r.reason}: {_relax_text(r, needs, agents)}"


def _relax_text(r: Rejection, needs: Needs, agents: Sequence[AgentView]) -> str:
    if r.reason == REASON_CPUS:
        best = max(a.cpus for a in agents)
        return f"no agent has {needs.cpus:g} cpus; the largest has {best:g}: ask for at most {best:g}"
    if r.reason == REASON_MEMORY:
        best = max(a.memory for a in agents)
        return f"no agent has {fmt_bytes(needs.memory)} memory; the largest has {fmt_bytes(best)}"
    if r.reason == REASON_DISK:
        best = max(a.disk for a in agents)
        return f"no agent has {fmt_bytes(needs.disk)} free disk; the most is {fmt_bytes(best)}"
    if r.reason == REASON_GPUS:
        counts: dict[int, int] = {}
        for a in agents:
            counts[a.gpus] = counts.get(a.gpus, 0) + 1
        best = max(counts)
        return f"no agent has {needs.gpus} GPUs; {counts[best]} agent(s) have {best}: ask for at most {best}"
    if r.reason in (REASON_LABEL_MISSING, REASON_LABEL_MISMATCH):
        parts = []
        for key, want in needs.labels:
            have = sorted({a.labels[key] for a in agents if key in a.labels})
            if want not in have:
                offer = f"agents have {key} in ({', '.join(have)})" if have else f"no agent has a {key} label"
                parts.append(f"no agent has {key}={want}; {offer}")
        if parts:
            return "; ".join(parts)
    if r.reason == REASON_RESIDENCY:
        zones = sorted({z for a in agents for z in a.zones})
        return (f"no agent sits in {', '.join(sorted(needs.residency or ()))}; agents sit in "
                f"{', '.join(zones) or 'no zones'}: add an agent there (residency is never relaxed)")
    return f"relax this clause: {r.detail}"
