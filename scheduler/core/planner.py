"""Plan and explain: where a task could run, why not elsewhere, and why it waits.

``plan`` runs before a pipeline is submitted (and at submit, for warnings): per
task, every registered agent against every static clause, the best candidates
with their score breakdown, and the smallest change that would make an infeasible
task fit. ``explain`` says why a submitted task is where it is right now. Both
read the same checks and scores as dispatch, so they never disagree with it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from scheduler import matcher
from scheduler.core.fairness import FairShare
from scheduler.core.lifecycle import StateMachine
from scheduler.core.model import NO_PLACEMENT, Needs, Placement, TaskState, narrowed
from scheduler.core.pacing import INLINE_TASKS, Pacer, offload
from scheduler.core.queues import ReadyQueues
from scheduler.core.registry import AgentRegistry
from scheduler.core.spec import PipelineSpec
from scheduler.core.views import Explanation, TaskPlan

#: Agents named one by one in a plan's rejections (the counts cover all of them).
MAX_REJECTIONS_LISTED = 100
#: Warnings spelled out for one submission (the rest are counted).
MAX_WARNINGS = 50


def _clock_time(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def static_needs(
    spec: PipelineSpec, base: dict[str, Needs] | None = None
) -> tuple[dict[str, Needs], dict[str, list[str]]]:
    """Each task's needs as far as they are known before it runs: its residency is
    narrowed through the DAG by its inputs' producers'. Also returns, per task whose
    residency ends up empty, the inputs that conflict."""
    by_name = {ts.name: ts for ts in spec.tasks}
    indegree = dict.fromkeys(by_name, 0)
    users: dict[str, list[str]] = defaultdict(list)
    for ts in spec.tasks:
        for up in ts.upstream:
            indegree[ts.name] += 1
            users[up].append(ts.name)
    order = [n for n, d in indegree.items() if d == 0]
    for name in order:  # Kahn's algorithm; the spec was validated acyclic
        for user in users[name]:
            indegree[user] -= 1
            if indegree[user] == 0:
                order.append(user)
    out: dict[str, Needs] = {}
    conflicts: dict[str, list[str]] = {}
    for name in order:
        ts = by_name[name]
        own = base[name] if base is not None else ts.requires
        sources = [] if own.residency is None else [f"the task itself ({', '.join(sorted(own.residency))})"]
        upstream_zones = []
        for inp, ref in ts.inputs:
            zones = out[ref.task].residency if ref.task in out else None
            if zones is not None:
                upstream_zones.append(zones)
                sources.append(f"input {inp} from {ref.task} ({', '.join(sorted(zones)) or 'none'})")
        out[name] = narrowed(own, upstream_zones)
        if out[name].residency is not None and not out[name].residency:
            conflicts[name] = [", ".join(sources) + " have no zone in common"]
    return out, conflicts


class Planner:
    def __init__(
        self,
        sm: StateMachine,
        registry: AgentRegistry,
        queues: ReadyQueues,
        fairness: FairShare,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        infeasible_timeout: Callable[[], float],
    ) -> None:
        self._sm = sm
        self._registry = registry
        self._queues = queues
        self._fairness = fairness
        self._clock = clock
        self._wall = wall
        self._infeasible_timeout = infeasible_timeout

    def warnings(self, spec: PipelineSpec, base: dict[str, Needs]) -> list[str]:
        """What is wrong with a pipeline's placement before it runs (submit warns; strict refuses)."""
        return self.warnings_of(*static_needs(spec, base))

    def warnings_of(self, static: dict[str, Needs], conflicts: dict[str, list[str]]) -> list[str]:
        """:meth:`warnings`, from the pipeline's :func:`static_needs` (worked out off the loop).

        At most :data:`MAX_WARNINGS` are spelled out; the rest are counted in one line.
        """
        out: list[str] = []
        more = 0
        agents = self._registry.agents
        suggestions: dict[Needs, str] = {}  # tasks alike get the same advice: worked out once
        for name, needs in static.items():
            if name in conflicts:
                problem = f"task {name!r}: residency conflict: {'; '.join(conflicts[name])}"
            elif agents and not self._registry.feasible_somewhere(needs):
                why = suggestions.get(needs)
                if why is None:
                    why = suggestions[needs] = "; ".join(matcher.suggest(needs, self._registry.views())[:3])
                problem = f"task {name!r}: no registered agent can run it: {why}"
            else:
                continue
            if len(out) < MAX_WARNINGS:
                out.append(problem)
            else:
                more += 1
        if more:
            out.append(f"... and {more} more task(s) with the same kinds of problem")
        return out

    def plan(self, spec: PipelineSpec) -> list[TaskPlan]:
        """Per task: which registered agents could run it, why the others cannot, the best
        candidates with their score breakdown, and what change would make it feasible."""
        static, conflicts = static_needs(spec)
        return [self.plan_task(ts.name, static[ts.name], NO_PLACEMENT, conflicts.get(ts.name, [])) for ts in spec.tasks]

    async def plan_paced(self, spec: PipelineSpec) -> list[TaskPlan]:
        """:meth:`plan` for a pipeline of any size: the pure part on a worker thread, the part
        that reads the agents in slices on the loop (:mod:`scheduler.core.pacing`)."""
        big = len(spec.tasks) > INLINE_TASKS
        static, conflicts = await offload(big, static_needs, spec)
        pacer = Pacer()
        out = []
        for ts in spec.tasks:
            out.append(self.plan_task(ts.name, static[ts.name], NO_PLACEMENT, conflicts.get(ts.name, [])))
            await pacer.step()
        return out

    def plan_task(self, name: str, needs: Needs, placement: Placement, conflicts: list[str]) -> TaskPlan:
        agents = sorted(self._registry.agents.values(), key=lambda a: a.name)
        tp = TaskPlan(task=name, agents_considered=len(agents), residency_conflicts=list(conflicts))
        if needs.residency is not None:
            tp.residency.extend(sorted(needs.residency))
        passing = dict.fromkeys(matcher.CLAUSES, 0)
        feasible_views = []
        for agent in agents:
            failed = []
            for check in matcher.STATIC_CHECKS:
                r = check.check(needs, agent.view)
                if r is None:
                    passing[check.clause] += 1
                else:
                    failed.append(r)
                    tp.rejection_counts[r.reason] = tp.rejection_counts.get(r.reason, 0) + 1
            if failed:
                if len(tp.rejections) < MAX_REJECTIONS_LISTED:
                    tp.rejections[agent.name] = "; ".join(f"{r.reason}: {r.detail}" for r in failed)
            else:
                tp.feasible_agents.append(agent.name)
                feasible_views.append(agent.view)
        tp.passing.update(passing)
        tp.candidates.extend(matcher.rank(needs, feasible_views, placement)[:5])
        if not feasible_views:
            tp.suggestions.extend(matcher.suggest(needs, [a.view for a in agents]))
        return tp

    def explain(self, run_id: str, name: str) -> Explanation:
        """Why a task is where it is right now: pending (and until when) or placed (and why there)."""
        run = self._sm.run(run_id)
        t = self._sm.task(run_id, name)
        wall, mono = self._wall(), self._clock()
        static, conflicts = static_needs(run.spec)
        if t.queued or t.state is TaskState.RUNNING:
            needs, placement = t.needs, t.placement
        else:
            needs, placement = static[name], NO_PLACEMENT
        plan = self.plan_task(name, needs, placement, conflicts.get(name, []))
        ex = Explanation(run_id=run_id, task=name, state=t.state.value, agent=t.agent, plan=plan)

        def say(reason: str, message: str, until: float = 0.0) -> Explanation:
            ex.reason, ex.message, ex.until = reason, message, until
            return ex

        if t.terminal:
            detail = f": {t.error}" if t.error else ""
            where = f" on {t.agent}" if t.agent else ""
            return say("finished", f"{t.state.value}{where} after {t.attempts} attempt(s){detail}")
        if t.state is TaskState.RUNNING:
            won = next((c for c in plan.candidates if c.agent == t.agent), None)
            why = (
                (
                    f"; score {won.score:.2f} ("
                    + ", ".join(f"{k} {v:.2f}" for k, v in sorted(won.breakdown.items()))
                    + f"), best of {len(plan.feasible_agents)} feasible agent(s)"
                )
                if won
                else ""
            )
            return say(
                "placed",
                f"running on {t.agent} (attempt {t.attempts}): it had a free slot and passed every constraint{why}",
            )
        if t.state is TaskState.PENDING:
            waiting = [
                f"{u} ({run.tasks[u].state.value})" for u in t.upstream if run.tasks[u].state is not TaskState.SUCCEEDED
            ]
            return say("upstream", "waiting for upstream task(s): " + ", ".join(waiting))
        if not t.queued:
            return say(
                "backoff",
                f"retrying after a failed attempt ({t.error}); attempt {t.attempts + 1} of "
                f"{t.max_attempts} not before {_clock_time(t.not_before)}",
                t.not_before,
            )
        if not plan.feasible_agents:
            deadline = wall + max(0.0, self._infeasible_timeout() - (mono - t.ready_at))
            return say(
                "no_feasible_agent",
                "no registered agent can run it: "
                + "; ".join(plan.suggestions)
                + f"; it fails at {_clock_time(deadline)} if none appears",
                deadline,
            )
        if run.concurrency and run.running >= run.concurrency:
            return say(
                "concurrency_limit", f"the run already has {run.running} of its {run.concurrency} allowed tasks running"
            )
        if t.wait_for and t.wait_until > wall:
            return say(
                "waiting_for_better_agent",
                f"waiting for {t.wait_for}, which holds its input data or matches its preferences, until "
                f"{_clock_time(t.wait_until)}; then any feasible agent",
                t.wait_until,
            )
        agents = self._registry.agents
        free = [a for a in plan.feasible_agents if agents[a].available and agents[a].credits > 0]
        if not free:
            return say(
                "no_free_slot",
                f"all {len(plan.feasible_agents)} feasible agent(s) are busy, disconnected, unhealthy or draining",
            )
        key = self._fairness.key
        ahead = [r for r in self._queues.runs() if r is not run and key(r) < key(run)]
        if ahead:
            return say(
                "fair_share",
                f"{len(ahead)} run(s) go first (higher priority, or their tenant holds a "
                f"smaller share than {run.tenant!r}'s {self._fairness.dominant_share(run.tenant):.0%})",
            )
        return say("queued", "ready; it goes to the next feasible agent that asks for work")
