"""Delay scheduling (Zaharia et al., EuroSys 2010): hold a task back from an agent that is
clearly worse than another feasible one, for at most ``placement_wait``.

"Clearly worse" is judged by placement quality (:func:`scheduler.matcher.quality`:
data locality, transfer time, preferences; never mere load). The best quality any
connected agent offers a task is cached per (needs, placement) until the agents or
the holders of its inputs change (the registry's version counters).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from scheduler import matcher
from scheduler.core.model import NO_PLACEMENT, Needs, Placement, Task
from scheduler.core.registry import AgentRegistry, AgentState
from scheduler.core.spec import Expr

#: Memo for one agent and one dispatch pass: (id(needs), placement) -> the better agent, or "".
Worse = dict[tuple[int, Placement], str]


class DelayScheduler:
    def __init__(self, registry: AgentRegistry, *, placement_wait: float, kick: Callable[[], None]) -> None:
        self.placement_wait = placement_wait
        self._registry = registry
        self._kick = kick
        self._wakeups: list[float] = []  # monotonic times a wait ends: look again then
        self._preferred_cache: dict[tuple[int, tuple[tuple[Expr, float], ...]], tuple[int, str]] = {}
        self._best_cache: dict[tuple[int, Placement], tuple[tuple[int, int, tuple[int, ...]], float, str]] = {}

    def should_wait(self, t: Task, agent: AgentState, mono: float, wall: float, worse: Worse) -> bool:
        """Whether ``t`` should skip ``agent`` now, waiting for a clearly better one.

        ``worse`` memoises, for this agent and dispatch pass, which better agent (if any)
        each distinct (needs, placement) has: tasks alike in both are alike here too.
        """
        p = t.placement
        if p is NO_PLACEMENT:
            return False
        waited = mono - t.ready_at
        if waited >= self.placement_wait:
            return False
        if (
            t.wait_for
            and t.wait_for != agent.name
            and not p.affinities
            and t.wait_until > wall
            and not any(d in agent.view.cached for d, _ in p.inputs)
        ):
            # Already waiting for the agent that holds its data, and this one holds none of it:
            # it cannot be better (the common case when a deep queue waits for busy holders).
            holder = self._registry.get(t.wait_for)
            if holder is not None and holder.connected and matcher.feasible(t.needs, holder.view):
                return True
        key = (id(t.needs), p)
        best_agent = worse.get(key)
        if best_agent is None:
            best, best_agent = self.best_quality(t, 0.0)
            if best_agent and best_agent != agent.name:
                here = matcher.quality(p, agent.view)
                if here >= best - matcher.NEARLY_BEST:
                    best_agent = ""
            else:
                best_agent = ""
            worse[key] = best_agent
        if not best_agent:
            return False
        t.wait_for = best_agent
        t.wait_until = wall + (self.placement_wait - waited)
        heapq.heappush(self._wakeups, t.ready_at + self.placement_wait)
        return True

    def due(self, mono: float) -> None:
        """Waits that ended by ``mono``: dispatch looks again."""
        while self._wakeups and self._wakeups[0] <= mono:
            heapq.heappop(self._wakeups)
            self._kick()

    def best_quality(self, t: Task, floor: float) -> tuple[float, str]:
        """The best placement quality any connected, feasible agent offers this task.

        Candidates are the agents holding some of its input bytes (from the cache
        index) and, for tasks with preferences, the agent its preferences favour most
        (one scan of the agents per distinct needs and preferences, until the agents
        change): any other agent scores no better than one of these.
        """
        reg = self._registry
        key = (id(t.needs), t.placement)
        cached = self._best_cache.get(key)
        # Valid while the agents are the same (nor became unable to run it: clock trust bumps
        # agents_version only) and no holder of one of its inputs changed.
        version = (
            reg.labels_version,
            reg.agents_version,
            tuple(reg.digest_version.get(d, 0) for d, _ in t.placement.inputs),
        )
        if cached is not None and cached[0] == version:
            return max(cached[1], floor), cached[2] if cached[1] > floor else ""
        names: set[str] = set()
        for digest, _ in t.placement.inputs:
            names |= reg.cache_index.get(digest, set())
        if t.placement.affinities:
            favourite = self._most_preferred(t.needs, t.placement.affinities)
            if favourite:
                names.add(favourite)
        best, best_agent = floor, ""
        for name in names:
            a = reg.get(name)
            if a is None or not a.connected or not matcher.feasible(t.needs, a.view):
                continue
            q = matcher.quality(t.placement, a.view)
            if q > best:
                best, best_agent = q, name
        if len(self._best_cache) > 100_000:
            self._best_cache.clear()
        self._best_cache[key] = (version, best, best_agent)
        return best, best_agent

    def _most_preferred(self, needs: Needs, affinities: tuple[tuple[Expr, float], ...]) -> str:
        """The connected, feasible agent with the highest affinity score ("" if none)."""
        reg = self._registry
        key = (id(needs), affinities)
        cached = self._preferred_cache.get(key)
        if cached is not None and cached[0] == reg.labels_version:
            return cached[1]
        placement = Placement((), affinities)
        best, best_agent = float("-inf"), ""
        for a in reg.agents.values():
            if a.connected and matcher.feasible(needs, a.view):
                score = matcher.score_affinity(placement, a.view)
                if score > best:
                    best, best_agent = score, a.name
        if len(self._preferred_cache) > 10_000:
            self._preferred_cache.clear()
        self._preferred_cache[key] = (reg.labels_version, best_agent)
        return best_agent
