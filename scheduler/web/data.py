"""What the dashboard shows, as plain JSON-ready values read from the engine.

Everything here runs on the event loop and only reads the engine's in-memory state (no store
query, no file): each function is bounded by the size of what it shows, and the big ones are
capped (:data:`MAX_RUNS`, :data:`MAX_TASKS_DRAWN`). Who may see what is the caller's business
(:class:`Viewer`): a submitter only its own runs, an admin (or the local operator on loopback) all.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from outrider.errors import InvalidArgument, NotFound
from outrider.protocol import is_digest
from scheduler.core.engine import Engine
from scheduler.core.lineage import walk
from scheduler.core.model import Run, Task
from scheduler.core.views import AgentInfo, Explanation

#: Runs listed on the front page (newest first).
MAX_RUNS = 200
#: A run with more tasks shows the table only: no DAG or timeline drawing.
MAX_TASKS_DRAWN = 400
#: Tasks listed in a run's table (the state counts cover all of them).
MAX_TASKS_LISTED = 2000
#: Attempts drawn on a timeline.
MAX_ATTEMPTS_DRAWN = 2000

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TASK = re.compile(r"^[^\x00-\x1f/]{1,256}$")


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a certificate's SPIFFE ID and role, or the local operator (loopback)."""

    who: str  #: as shown on the page
    role: str  #: "admin", "submitter" or "operator" (loopback, no certificate)
    spiffe_id: str = ""

    @property
    def sees_all(self) -> bool:
        return self.role in ("admin", "operator")

    def sees(self, run: Run) -> bool:
        return self.sees_all or run.submitter == self.spiffe_id


def run_id_arg(value: str) -> str:
    if not _RUN_ID.match(value):
        raise InvalidArgument(f"not a run id: {value[:80]!r}")
    return value


def task_arg(value: str) -> str:
    if not _TASK.match(value):
        raise InvalidArgument(f"not a task name: {value[:80]!r}")
    return value


def digest_arg(value: str) -> str:
    """An artifact digest as the wire and the store carry it (64 lowercase hex characters; a
    ``sha256:`` prefix is accepted and dropped)."""
    digest = value.removeprefix("sha256:")
    if not is_digest(digest):
        raise InvalidArgument(f"not an artifact digest (64 lowercase hex characters of sha256): {value[:80]!r}")
    return digest


def visible_run(engine: Engine, viewer: Viewer, run_id: str) -> Run:
    """The run, or NotFound (the same words for one the viewer may not see)."""
    run = engine.runs.get(run_id_arg(run_id))
    if run is None or not viewer.sees(run):
        raise NotFound(f"no run {run_id!r}")
    return run


def visible_task(engine: Engine, viewer: Viewer, run_id: str, name: str) -> tuple[Run, Task]:
    run = visible_run(engine, viewer, run_id)
    t = run.tasks.get(task_arg(name))
    if t is None:
        raise NotFound(f"run {run_id} has no task {name!r}")
    return run, t


def _duration(start: float, end: float, now: float) -> float:
    if not start:
        return 0.0
    return max(0.0, (end or now) - start)


def agent_json(a: AgentInfo, now: float) -> dict[str, Any]:
    caps = a.capabilities
    offset = a.clock[0].offset_s if a.clock else 0.0
    return {
        "name": a.name,
        "state": a.state,
        "draining": a.draining,
        "unhealthy": a.unhealthy,
        "revoked": a.revoked,
        "labels": dict(sorted(caps.labels.items())),
        "zones": list(caps.zones),
        "cpu_cores": caps.cpu_cores,
        "memory_bytes": caps.memory_bytes,
        "gpus": [g.model for g in caps.gpus],
        "slots": caps.slots,
        "running": a.running,
        "free_slots": a.free_slots,
        "clock_offset_s": offset,
        "clock_skew_s": a.clock_skew_s,
        "clock_suspect": a.clock_suspect,
        "last_seen": a.last_seen,
        "last_seen_ago_s": max(0.0, now - a.last_seen) if a.last_seen else None,
        "version": caps.agent_version,
    }


def agents(engine: Engine, viewer: Viewer) -> list[dict[str, Any]]:
    """Every agent (shared infrastructure: every user sees them whole, as ``outrider agents``)."""
    now = time.time()
    return [agent_json(a, now) for a in engine.list_agents()]


def run_summary(run: Run, now: float) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    for t in run.tasks.values():
        counts[t.state.value] += 1
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "state": run.state.value,
        "owner": run.submitter,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "duration_s": _duration(run.created_at, run.finished_at, now),
        "tasks": len(run.tasks),
        "task_states": dict(sorted(counts.items())),
    }


def runs(engine: Engine, viewer: Viewer) -> dict[str, Any]:
    """The runs the viewer may see, newest first (at most :data:`MAX_RUNS`), and how many others."""
    now = time.time()
    every = sorted(engine.runs.values(), key=lambda r: r.seq, reverse=True)
    mine = [r for r in every if viewer.sees(r)]
    return {
        "runs": [run_summary(r, now) for r in mine[:MAX_RUNS]],
        "more": max(0, len(mine) - MAX_RUNS),
        "others": len(every) - len(mine),
    }


def levels(run: Run) -> dict[str, int]:
    """Each task's topological level: 0 for a task with no upstream, else one more than its
    deepest upstream's (the DAG is acyclic: the spec was validated)."""
    level: dict[str, int] = {}
    indegree = {n: len(t.upstream) for n, t in run.tasks.items()}
    order = [n for n, d in indegree.items() if d == 0]
    for n in order:
        t = run.tasks[n]
        level[n] = max((level[u] + 1 for u in t.upstream), default=0)
        for d in t.downstream:
            indegree[d] -= 1
            if indegree[d] == 0:
                order.append(d)
    return level


def task_json(t: Task, now: float) -> dict[str, Any]:
    return {
        "name": t.name,
        "state": t.state.value,
        "agent": t.agent,
        "attempts": t.attempts,
        "error": t.error,
        "exit_code": t.exit_code,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "duration_s": _duration(t.started_at, t.finished_at, now),
        "upstream": list(t.upstream),
        "outputs": [{"name": o.name, "digest": o.digest, "size": o.size} for o in t.outputs.values()],
    }


def run_detail(run: Run) -> dict[str, Any]:
    """A run whole: its tasks (with their DAG level), edges, and its attempts for the timeline."""
    now = time.time()
    out = run_summary(run, now)
    drawn = len(run.tasks) <= MAX_TASKS_DRAWN
    lv = levels(run) if drawn else {}
    tasks = []
    for t in itertools.islice(run.tasks.values(), MAX_TASKS_LISTED):
        j = task_json(t, now)
        j["level"] = lv.get(t.name, 0)
        tasks.append(j)
    attempts = []
    for t in run.tasks.values():
        for a in t.history:
            attempts.append(
                {
                    "task": t.name,
                    "attempt": a.attempt,
                    "agent": a.agent,
                    "state": a.state.value,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                }
            )
    attempts.sort(key=lambda a: (a["started_at"], a["task"]))
    out.update(
        {
            "now": now,
            "drawn": drawn,
            "tasks_list": tasks,
            "tasks_unlisted": max(0, len(run.tasks) - MAX_TASKS_LISTED),
            "edges": [[u, t.name] for t in run.tasks.values() for u in t.upstream] if drawn else [],
            "attempts": attempts[-MAX_ATTEMPTS_DRAWN:] if drawn else [],
        }
    )
    return out


def explanation(engine: Engine, run: Run, t: Task) -> dict[str, Any]:
    """Why the task is where it is (the same explanation as ``outrider explain``)."""
    ex: Explanation = engine.explain(run.run_id, t.name)
    plan = ex.plan
    return {
        "state": ex.state,
        "agent": ex.agent,
        "reason": ex.reason,
        "message": ex.message,
        "until": ex.until,
        "agents_considered": plan.agents_considered,
        "feasible_agents": list(plan.feasible_agents),
        "rejections": dict(sorted(plan.rejections.items())),
        "suggestions": list(plan.suggestions),
    }


def task_detail(engine: Engine, run: Run, t: Task) -> dict[str, Any]:
    now = time.time()
    out = task_json(t, now)
    out["run_id"] = run.run_id
    out["history"] = [
        {
            "attempt": a.attempt,
            "agent": a.agent,
            "state": a.state.value,
            "started_at": a.started_at,
            "finished_at": a.finished_at,
            "exit_code": a.exit_code,
            "error": a.error,
        }
        for a in t.history
    ]
    out["inputs"] = [
        {"name": name, "from": str(ref), "digest": _output_digest(run, ref.task, ref.output)}
        for name, ref in t.spec.inputs
    ]
    out["explain"] = explanation(engine, run, t)
    return out


def _output_digest(run: Run, task: str, output: str) -> str:
    up = run.tasks.get(task)
    o = up.outputs.get(output) if up is not None else None
    return o.digest if o is not None else ""


def lineage(engine: Engine, viewer: Viewer, digest: str, down: bool = False) -> dict[str, Any]:
    """Which tasks made ``digest`` and from what, walked up to the raw inputs (or, ``down``, what
    was made from it), over the runs the viewer may see: :func:`scheduler.core.lineage.walk`, the
    same walk as ``outrider lineage``; another's artifact is NotFound, as one that does not exist."""
    lin = walk(engine.runs, digest_arg(digest), down=down, visible=viewer.sees)
    return {
        "digest": lin.digest,
        "direction": lin.direction,
        "truncated": lin.truncated,
        "raw_inputs": list(lin.raw_inputs),
        "steps": [
            {
                "run_id": s.run_id,
                "pipeline": s.pipeline,
                "task": s.task,
                "attempt": s.attempt,
                "agent": s.agent,
                "state": s.state,
                "command": " ".join(s.command)[:500],
                "code_digest": s.code_digest,
                "depth": s.depth,
                "inputs": [{"name": a.name, "digest": a.digest, "size": a.size} for a in s.inputs],
                "outputs": [{"name": a.name, "digest": a.digest, "size": a.size} for a in s.outputs],
            }
            for s in lin.steps
        ],
    }
