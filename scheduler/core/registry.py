"""The agent registry: who is registered, what each can do, and how to reach it.

For every agent it keeps the capabilities it advertised, its clock samples (and
whether its clock is suspect), the tasks it holds, and its channels with their
credits; across agents, the index of which agent caches which artifact (data
locality), the connected capacity (the denominator of fair shares), and version
counters that tell placement caches when what they depend on changed:

* ``labels_version``: the set of connected agents, or what feasibility and
  preferences look at, changed;
* ``agents_version``: what feasibility looks at changed (including clock trust);
* ``digest_version[d]``: the set of agents holding artifact ``d`` changed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from outrider.errors import FailedPrecondition, InvalidArgument
from scheduler.core.channel import Channel
from scheduler.core.messages import Capabilities, ClockSample
from scheduler.core.model import Needs, Output, Task
from scheduler.core.views import AgentInfo
from scheduler.matcher import AgentView, feasible
from scheduler.store.base import AgentRow

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AgentState:
    name: str
    identity: str
    caps: Capabilities
    view: AgentView
    registered_at: float
    last_seen: float
    clocks: tuple[ClockSample, ...] = ()
    channels: list[Channel] = field(default_factory=list)
    running: set[tuple[str, str]] = field(default_factory=set)  # (run id, task) of the leases it holds
    sched_offset: float = 0.0  # add to the agent's wall clock to get ours (from its "scheduler" sample)

    @property
    def connected(self) -> bool:
        return bool(self.channels)

    @property
    def clock_uncertainty(self) -> float:
        return min((c.uncertainty_s for c in self.clocks), default=0.0)

    @property
    def credits(self) -> int:
        return sum(ch.credits for ch in self.channels)


def view_from_caps(name: str, caps: Capabilities) -> AgentView:
    return AgentView(
        name=name,
        cpus=float(caps.cpu_cores),
        memory=caps.memory_bytes,
        disk=caps.disk_free_bytes,
        gpus=len(caps.gpus),
        labels=dict(caps.labels),
        gpu_models=tuple(g.model for g in caps.gpus),
        gpu_free_memory=tuple(g.memory_free_bytes or g.memory_bytes for g in caps.gpus),
        zones=frozenset(caps.zones),
        bandwidth_bps=caps.bandwidth_bps,
        cached={a.digest: a.size for a in caps.cached},
    )


def clock_skew(samples: Iterable[ClockSample]) -> float:
    """The worst |offset| + uncertainty over an agent's clock samples."""
    return max((abs(s.offset_s) + s.uncertainty_s for s in samples), default=0.0)


class AgentRegistry:
    def __init__(self, *, max_clock_offset: float, wall: Callable[[], float], kick: Callable[[], None]) -> None:
        self.max_clock_offset = max_clock_offset  # past this an agent is clock_suspect
        self._wall = wall
        self._kick = kick
        self.agents: dict[str, AgentState] = {}
        self.capacity = [0.0, 0.0, 0.0]  # cpus, memory, gpus of connected agents
        self.credited: dict[Channel, None] = {}  # channels holding credit, in arrival order
        self.cache_index: dict[str, set[str]] = defaultdict(set)  # digest -> agents caching it
        self.digest_version: defaultdict[str, int] = defaultdict(int)
        self.labels_version = 0
        self.agents_version = 0
        self._feasible_memo: dict[Needs, tuple[int, bool]] = {}

    # ------------------------------------------------------------------ lookups

    def get(self, name: str) -> AgentState | None:
        return self.agents.get(name)

    def require(self, name: str) -> AgentState:
        agent = self.agents.get(name)
        if agent is None:
            raise FailedPrecondition(f"agent {name} is not registered; call Register first")
        return agent

    def views(self) -> list[AgentView]:
        return [a.view for a in self.agents.values()]

    def feasible_somewhere(self, needs: Needs) -> bool:
        """Could any registered agent ever run tasks with these needs? (memoised per agent-set version)"""
        memo = self._feasible_memo.get(needs)
        if memo is not None and memo[0] == self.agents_version:
            return memo[1]
        ok = any(feasible(needs, a.view) for a in self.agents.values())
        self._feasible_memo[needs] = (self.agents_version, ok)
        return ok

    def infos(self) -> list[AgentInfo]:
        return [
            AgentInfo(
                name=a.name,
                identity=a.identity,
                state="ready" if a.connected else "disconnected",
                capabilities=a.caps,
                clock=a.clocks,
                last_seen=a.last_seen,
                running=len(a.running),
                free_slots=a.credits,
                registered_at=a.registered_at,
                clock_suspect=a.view.clock_suspect,
                clock_skew_s=a.view.clock_skew,
            )
            for a in sorted(self.agents.values(), key=lambda a: a.name)
        ]

    # ------------------------------------------------------------------ registration

    def register(
        self, name: str, identity: str, caps: Capabilities, clocks: Iterable[ClockSample], now: float
    ) -> AgentState:
        """(Re)register an agent with what it advertises now."""
        agent = self.agents.get(name)
        if agent is None:
            agent = AgentState(
                name=name,
                identity=identity,
                caps=caps,
                view=view_from_caps(name, caps),
                registered_at=now,
                last_seen=now,
            )
            self.agents[name] = agent
            self._index_cache(agent, {}, agent.view.cached)
            self.agents_version += 1
        else:
            self.apply_caps(agent, caps)
            agent.identity, agent.last_seen = identity, now
        self.observe_clocks(agent, tuple(clocks))
        return agent

    def apply_caps(self, agent: AgentState, caps: Capabilities) -> None:
        """Take an agent's new capabilities (re-register, or a heartbeat that carries them)."""
        fresh = view_from_caps(agent.name, caps)
        v = agent.view
        old_cached = v.cached
        shape = (v.cpus, v.memory, v.disk, v.gpus, v.labels, v.gpu_models, v.gpu_free_memory, v.zones)
        if agent.channels:
            self._count_capacity(agent, -1)
        v.cpus, v.memory, v.disk, v.gpus, v.labels = fresh.cpus, fresh.memory, fresh.disk, fresh.gpus, fresh.labels
        v.gpu_models, v.gpu_free_memory, v.zones = fresh.gpu_models, fresh.gpu_free_memory, fresh.zones
        v.bandwidth_bps, v.cached = fresh.bandwidth_bps, fresh.cached
        agent.caps = caps
        if agent.channels:
            self._count_capacity(agent, +1)
        if old_cached != v.cached:
            self._index_cache(agent, old_cached, v.cached)
        if shape != (v.cpus, v.memory, v.disk, v.gpus, v.labels, v.gpu_models, v.gpu_free_memory, v.zones):
            # What feasibility and preferences look at changed (not just the cache or the link).
            self.labels_version += 1
            self.agents_version += 1
        self._kick()

    def observe_clocks(self, agent: AgentState, clocks: tuple[ClockSample, ...]) -> None:
        """Record an agent's clock samples; mark it clock_suspect past the configured bound."""
        if not clocks:
            return
        agent.clocks = clocks
        for sample in clocks:
            if sample.source == "scheduler":
                agent.sched_offset = sample.offset_s  # our time = its time + offset
        skew = clock_skew(clocks)
        suspect = skew > self.max_clock_offset
        if suspect and not agent.view.clock_suspect:
            log.warning(
                "agent %s clock is suspect: offset + uncertainty %.3fs > %.3fs", agent.name, skew, self.max_clock_offset
            )
        if suspect != agent.view.clock_suspect:
            self.agents_version += 1
        agent.view.clock_skew, agent.view.clock_suspect = skew, suspect

    def restore(self, rows: Iterable[AgentRow]) -> None:
        """Agents known before a restart: registered, not connected until they call again."""
        for row in rows:
            agent = AgentState(
                name=row.name,
                identity=row.identity,
                caps=row.capabilities,
                view=view_from_caps(row.name, row.capabilities),
                registered_at=row.registered_at,
                last_seen=row.last_seen,
            )
            agent.view.connected = False
            self.agents[row.name] = agent
            self._index_cache(agent, {}, agent.view.cached)

    # ------------------------------------------------------------------ channels and credits

    def attach(self, name: str, credits: int = 0) -> Channel:
        agent = self.require(name)
        ch = Channel(name, credits)
        if not agent.channels:
            self._count_capacity(agent, +1)
            self.labels_version += 1
        agent.channels.append(ch)
        agent.view.connected = True
        if credits > 0:
            self.credited[ch] = None
        self._kick()
        return ch

    def detach(self, ch: Channel) -> None:
        ch.close()
        self.credited.pop(ch, None)
        agent = self.agents.get(ch.agent)
        if agent is not None and ch in agent.channels:
            agent.channels.remove(ch)
            if not agent.channels:
                self._count_capacity(agent, -1)
                self.labels_version += 1
            agent.view.connected = agent.connected
            agent.last_seen = self._wall()

    def add_credits(self, ch: Channel, n: int) -> None:
        if n < 0:
            raise InvalidArgument(f"credits must not be negative, got {n}")
        slots = self.agents[ch.agent].caps.slots or 1
        ch.credits = min(ch.credits + n, slots)
        if ch.credits > 0 and not ch.closed:
            self.credited[ch] = None
        self._kick()

    def _count_capacity(self, agent: AgentState, sign: int) -> None:
        """Keep the connected agents' total resources (the denominator of fair shares)."""
        v = agent.view
        self.capacity[0] += sign * v.cpus
        self.capacity[1] += sign * v.memory
        self.capacity[2] += sign * v.gpus

    # ------------------------------------------------------------------ what agents hold

    def hold(self, agent: AgentState, t: Task) -> None:
        """The agent holds ``t``'s lease: count its resources (idempotent)."""
        if t.key not in agent.running:
            agent.view.hold(t.needs)
            agent.running.add(t.key)

    def reserve(self, agent: AgentState, t: Task) -> None:
        """Dispatch gives ``t`` to the agent: hold its resources and one of the slots offered."""
        agent.view.reserve(t.needs)
        agent.running.add(t.key)

    def release(self, t: Task) -> bool:
        """``t``'s lease ended: give its resources back. False if its agent did not hold it."""
        agent = self.agents.get(t.agent)
        if agent is None or t.key not in agent.running:
            return False
        agent.running.discard(t.key)
        agent.view.release(t.needs)
        return True

    def note_cached(self, agent: AgentState, output: Output) -> None:
        """The agent keeps what it produced: count it as cached there now, rather than at its
        next heartbeat, so a downstream task can follow the data."""
        if output.digest not in agent.view.cached:
            agent.view.cached[output.digest] = output.size
            self.cache_index[output.digest].add(agent.name)
            self.digest_version[output.digest] += 1

    def _index_cache(self, agent: AgentState, old: dict[str, int], new: dict[str, int]) -> None:
        for digest in old.keys() - new.keys():
            self.digest_version[digest] += 1
            holders = self.cache_index.get(digest)
            if holders is not None:
                holders.discard(agent.name)
                if not holders:
                    del self.cache_index[digest]
        for digest in new.keys() - old.keys():
            self.digest_version[digest] += 1
            self.cache_index[digest].add(agent.name)
