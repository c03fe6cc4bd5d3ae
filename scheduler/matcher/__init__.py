"""Placement as small pure stages: feasibility checks → scorers → select.

Modelled on Nomad's feasibility/rank/select iterators. Everything here is pure
logic over :class:`AgentView` snapshots, a task's :class:`~scheduler.core.model.Needs`
and its :class:`~scheduler.core.model.Placement`: no gRPC, no SQL, no clocks, no
state of its own beyond memo tables. Each check returns a named reason when it
rejects, so ``plan`` and ``explain`` can say, per agent and per clause, why a task
cannot run there and what would make it fit. The reason names are documented in
docs/placement.md and are part of the ``--json`` contract.

* :mod:`~scheduler.matcher.checks`: one object per clause; the static stack (could this
  agent ever run the task?) and the dynamic one (can it now?); the fast path.
* :mod:`~scheduler.matcher.scores`: one object per score term; rank and placement quality.
* :mod:`~scheduler.matcher.explain`: suggestions for infeasible tasks.

Which agent asks, which task goes first and whether a task waits for a better
agent are decided by the dispatcher (:mod:`scheduler.core.dispatch`), which asks
these functions and commits what they propose.
"""

from __future__ import annotations

from scheduler.matcher.checks import (
    CLAUSES,
    DYNAMIC_CHECKS,
    REASON_CLOCK_SKEW,
    REASON_CLOCK_SUSPECT,
    REASON_CPUS,
    REASON_DISCONNECTED,
    REASON_DISK,
    REASON_EXPRESSION,
    REASON_FREE_CPUS,
    REASON_FREE_GPUS,
    REASON_FREE_MEMORY,
    REASON_GPU_MEMORY,
    REASON_GPU_MODEL,
    REASON_GPUS,
    REASON_LABEL_MISMATCH,
    REASON_LABEL_MISSING,
    REASON_MEMORY,
    REASON_NO_SLOTS,
    REASON_RESIDENCY,
    REASON_RESIDENCY_CONFLICT,
    STATIC_CHECKS,
    AgentView,
    Check,
    Rejection,
    expr_holds,
    feasible,
    fits_now,
    fmt_bytes,
    rejections,
)
from scheduler.matcher.explain import suggest
from scheduler.matcher.scores import (
    NEARLY_BEST,
    SCORERS,
    Candidate,
    Scorer,
    breakdown,
    quality,
    rank,
    score_affinity,
    score_load,
    score_locality,
    score_transfer,
    transfer_seconds,
)

__all__ = [
    "CLAUSES",
    "DYNAMIC_CHECKS",
    "NEARLY_BEST",
    "REASON_CLOCK_SKEW",
    "REASON_CLOCK_SUSPECT",
    "REASON_CPUS",
    "REASON_DISCONNECTED",
    "REASON_DISK",
    "REASON_EXPRESSION",
    "REASON_FREE_CPUS",
    "REASON_FREE_GPUS",
    "REASON_FREE_MEMORY",
    "REASON_GPUS",
    "REASON_GPU_MEMORY",
    "REASON_GPU_MODEL",
    "REASON_LABEL_MISMATCH",
    "REASON_LABEL_MISSING",
    "REASON_MEMORY",
    "REASON_NO_SLOTS",
    "REASON_RESIDENCY",
    "REASON_RESIDENCY_CONFLICT",
    "SCORERS",
    "STATIC_CHECKS",
    "AgentView",
    "Candidate",
    "Check",
    "Rejection",
    "Scorer",
    "breakdown",
    "expr_holds",
    "feasible",
    "fits_now",
    "fmt_bytes",
    "quality",
    "rank",
    "rejections",
    "score_affinity",
    "score_load",
    "score_locality",
    "score_transfer",
    "suggest",
    "transfer_seconds",
]
