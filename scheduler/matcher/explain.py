"""Explanations: what would make an infeasible task feasible.

Pure functions over the same views and checks as placement, so ``plan`` and
``explain`` never disagree with what the dispatcher does.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.core.model import Needs
from scheduler.matcher.checks import (
    REASON_CPUS,
    REASON_DISK,
    REASON_GPUS,
    REASON_LABEL_MISMATCH,
    REASON_LABEL_MISSING,
    REASON_MEMORY,
    REASON_RESIDENCY,
    AgentView,
    Rejection,
    fmt_bytes,
    rejections,
)


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
        return [
            f"{text} ({n} agent{'s' if n != 1 else ''} would then fit)"
            for text, n in sorted(one_away.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
    return [
        _relax(rs[0], needs, agents) + f" ({len(rs)} of {len(agents)} agents fail this)"
        for reason, rs in sorted(per_reason.items())
    ]


def _relax(r: Rejection, needs: Needs, agents: Sequence[AgentView]) -> str:
    """A human sentence for relaxing one clause, with what the agents do offer."""
    return f"{r.reason}: {_relax_text(r, needs, agents)}"


def _relax_text(r: Rejection, needs: Needs, agents: Sequence[AgentView]) -> str:
    if r.reason == REASON_CPUS:
        best = max(a.cpus for a in agents)
        return f"no agent has {needs.cpus:g} cpus; the largest has {best:g}: ask for at most {best:g}"
    if r.reason == REASON_MEMORY:
        most = max(a.memory for a in agents)
        return f"no agent has {fmt_bytes(needs.memory)} memory; the largest has {fmt_bytes(most)}"
    if r.reason == REASON_DISK:
        most = max(a.disk for a in agents)
        return f"no agent has {fmt_bytes(needs.disk)} free disk; the most is {fmt_bytes(most)}"
    if r.reason == REASON_GPUS:
        counts: dict[int, int] = {}
        for a in agents:
            counts[a.gpus] = counts.get(a.gpus, 0) + 1
        top = max(counts)
        return f"no agent has {needs.gpus} GPUs; {counts[top]} agent(s) have {top}: ask for at most {top}"
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
        return (
            f"no agent sits in {', '.join(sorted(needs.residency or ()))}; agents sit in "
            f"{', '.join(zones) or 'no zones'}: add an agent there (residency is never relaxed)"
        )
    return f"relax this clause: {r.detail}"
