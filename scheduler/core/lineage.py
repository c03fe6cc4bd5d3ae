"""Lineage: which task made an artifact and from what, or what was made from it.

Pure over the runs the core holds (the ``runs`` mapping of :class:`~scheduler.core.engine.Engine`):
an artifact is content-addressed, so the same digest may be the output of several tasks
(in several runs); every one the caller may see is a step. Walking up (``down=False``)
goes from an artifact to the tasks that output it, then to their inputs (the upstream
outputs they were given), level by level, to tasks with no inputs; the raw inputs are
the artifacts no task made (the runs' code bundles). Walking down goes to every task that
took the artifact as an input (or, for a code bundle, every task of a run shipped with
it), then to their outputs, and so on.

The walk is breadth-first, visits each step and each artifact once (content addressing
makes a cycle impossible in a run, and the visited sets make the walk safe regardless),
and stops at ``max_depth`` levels or ``max_steps`` steps, saying so in ``truncated``.
The result is plain data: the servicer converts it to the wire, the dashboard renders it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from outrider.errors import NotFound
from scheduler.core.messages import ArtifactRef
from scheduler.core.model import Run, Task

DEFAULT_DEPTH = 32
DEFAULT_STEPS = 500
MAX_DEPTH = 256
MAX_STEPS = 5000


@dataclass(slots=True)
class Step:
    """One task (its latest attempt) that made (up) or used (down) an artifact of the walk."""

    run_id: str
    pipeline: str
    task: str
    attempt: int
    agent: str
    command: tuple[str, ...]
    code_digest: str
    inputs: list[ArtifactRef]
    outputs: list[ArtifactRef]
    depth: int
    state: str = ""
    finished_at: float = 0.0


@dataclass(slots=True)
class Lineage:
    digest: str
    direction: str  # "up" or "down"
    steps: list[Step] = field(default_factory=list)
    raw_inputs: list[str] = field(default_factory=list)
    truncated: str = ""


def _inputs(run: Run, t: Task) -> list[ArtifactRef]:
    out = []
    for name, ref in t.spec.inputs:
        up = run.tasks.get(ref.task)
        o = up.outputs.get(ref.output) if up is not None else None
        if o is not None:
            out.append(ArtifactRef(name, o.digest, o.size, o.kind))
    return out


def _step(run: Run, t: Task, depth: int) -> Step:
    return Step(
        run.run_id,
        run.pipeline,
        t.name,
        t.attempts,
        t.agent,
        t.spec.argv,
        run.spec.code_digest,
        _inputs(run, t),
        [ArtifactRef(o.name, o.digest, o.size, o.kind) for o in t.outputs.values()],
        depth,
        t.state.value,
        t.finished_at,
    )


def walk(
    runs: Mapping[str, Run] | Iterable[Run],
    digest: str,
    *,
    down: bool = False,
    visible: Callable[[Run], bool] = lambda run: True,
    max_depth: int = DEFAULT_DEPTH,
    max_steps: int = DEFAULT_STEPS,
) -> Lineage:
    """The lineage of ``digest`` over the runs ``visible`` allows; NOT_FOUND (in the words of
    an artifact that does not exist) when none of them made, used or shipped it."""
    seen_runs = [r for r in (runs.values() if isinstance(runs, Mapping) else runs) if visible(r)]
    max_depth = max(1, min(max_depth or DEFAULT_DEPTH, MAX_DEPTH))
    max_steps = max(1, min(max_steps or DEFAULT_STEPS, MAX_STEPS))
    makers: dict[str, list[tuple[Run, Task]]] = {}
    users: dict[str, list[tuple[Run, Task]]] = {}
    bundles: set[str] = set()
    for run in seen_runs:
        if run.spec.code_digest:
            bundles.add(run.spec.code_digest)
        for t in run.tasks.values():
            for o in t.outputs.values():
                makers.setdefault(o.digest, []).append((run, t))
            if down:
                for a in _inputs(run, t):
                    users.setdefault(a.digest, []).append((run, t))
                if run.spec.code_digest:
                    users.setdefault(run.spec.code_digest, []).append((run, t))
    if digest not in makers and digest not in bundles and digest not in users:
        raise NotFound(f"no artifact {digest}")
    out = Lineage(digest, "down" if down else "up")
    seen_steps: set[tuple[str, str]] = set()
    seen_digests = {digest}
    raw: list[str] = []
    level = [digest]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            out.truncated = f"stopped at depth {max_depth} (the depth limit); more lies beyond"
            break
        following: list[str] = []
        for d in level:
            found = (users if down else makers).get(d, [])
            if not down and not found and d not in raw:
                raw.append(d)  # nothing made it: a raw input
            for run, t in found:
                if (run.run_id, t.name) in seen_steps:
                    continue
                if len(out.steps) >= max_steps:
                    out.truncated = f"stopped at {max_steps} steps (the step limit); more lies beyond"
                    break
                seen_steps.add((run.run_id, t.name))
                step = _step(run, t, depth)
                out.steps.append(step)
                nexts = [a.digest for a in (step.outputs if down else step.inputs)]
                if not down and step.code_digest:
                    nexts.append(step.code_digest)
                for n in nexts:
                    if n not in seen_digests:
                        seen_digests.add(n)
                        following.append(n)
            if out.truncated:
                break
        if out.truncated:
            break
        level = following
    out.raw_inputs = [] if down else raw
    return out
