"""The agent registry: who is registered, what each can do, and how to reach it.

For every agent it keeps the capabilities it advertised, its clock samples (and
whether its clock is suspect), the tasks it holds, its channels with their
credits, the instance (state dir) it runs from, and whether it takes work: an
agent that reports itself unhealthy (with the reason) or draining, or that an
admin asked to drain, gets none (:attr:`AgentState.available`); across agents,
the index of which agent caches which artifact (data locality), the connected
capacity (the denominator of fair shares), and version counters that tell
placement caches when what they depend on changed:

* ``labels_version``: the set of connected agents, or what feasibility and
  preferences look at, changed;
* ``agents_version``: what feasibility looks at changed (including clock trust);
* ``digest_version[d]``: the set of agents holding artifact ``d`` changed.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from outrider.errors import FailedPrecondition, InvalidArgument
from scheduler.core.channel import Channel
from scheduler.core.figures import AgentFigures
from scheduler.core.messages import Capabilities, ClockSample
from scheduler.core.model import Needs, Output, Task
from scheduler.core.views import AgentInfo
from scheduler.core.zones import ZoneAuthority, ZoneRules
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
    instance_id: str = ""  # names the agent's state dir; "" for an agent that sends none
    peer: str = ""  # the connection its instance registered over (see AgentRegistry.attach)
    unhealthy: str = ""  # why it cannot run work, as its last heartbeat said ("": healthy)
    draining_reported: bool = False  # its last heartbeat said it is draining
    drain_requested: bool = False  # an admin asked it to drain; cleared once it reports draining
    heard_at: float = float("-inf")  # monotonic time of its last sign of life (register, heartbeat, credit)
    figures: AgentFigures | None = None  # the latest it sent with a heartbeat (scheduler/metrics_collect.py)

    @property
    def connected(self) -> bool:
        return bool(self.channels)

    @property
    def draining(self) -> bool:
        return self.drain_requested or self.draining_reported

    @property
    def available(self) -> bool:
        """Does it take new work? Not while unhealthy or draining."""
        return not self.unhealthy and not self.draining

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
    def __init__(
        self,
        zones: ZoneAuthority | None = None,
        *,
        max_clock_offset: float,
        wall: Callable[[], float],
        kick: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_clock_offset = max_clock_offset  # past this an agent is clock_suspect
        #: settles each agent's zones (its view's ``zones`` are the effective ones, see zones.py)
        self.zones = zones or ZoneAuthority(ZoneRules(), lambda *refusal: None)
        self._wall = wall
        self._clock = clock
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

    def zones_of(self, name: str, cert_zones: frozenset[str] | None = None) -> frozenset[str]:
        """The zones whose data ``name`` may receive now: its effective zones, within those the
        certificate of this call and the configuration attest (none if it is not registered)."""
        agent = self.agents.get(name)
        return self.zones.bound(name, cert_zones, agent.view.zones if agent is not None else frozenset())

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
                draining=a.draining,
                unhealthy=a.unhealthy,
                instance_id=a.instance_id,
                transfers=a.figures.transfers if a.figures is not None and a.connected else (),
            )
            for a in sorted(self.agents.values(), key=lambda a: a.name)
        ]

    # ------------------------------------------------------------------ registration

    def register(
        self,
        name: str,
        identity: str,
        caps: Capabilities,
        clocks: Iterable[ClockSample],
        now: float,
        instance_id: str = "",
        peer: str = "",
    ) -> AgentState:
        """(Re)register an agent with what it advertises now (see :meth:`admit` first)."""
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
        if instance_id:
            agent.instance_id = instance_id
        agent.peer = peer
        self.observe_clocks(agent, tuple(clocks))
        return agent

    def admit(self, name: str, instance_id: str) -> tuple[AgentState | None, str]:
        """Decide whether ``instance_id`` may register as ``name``, before anything changes.

        Returns (the agent now registered under the name or None, the instance whose
        session is being taken over by another instance, else ""). An agent's instance id
        names its state dir, kept across its restarts:

        * the same instance again (a restart, a reconnect): it takes over its session; its
          stale channels (a stream the old process left half-open) are closed here;
        * another instance while the name is connected: refused (FailedPrecondition naming
          both instances): two agents share one name, and neither may replace the other;
        * another instance while the name is not connected: it takes over; the caller
          expires the old instance's leases at once (their processes died with it);
        * no instance id on either side (an older agent): as before, no check.
        """
        agent = self.agents.get(name)
        if agent is None or not instance_id or not agent.instance_id:
            return agent, ""
        if agent.instance_id == instance_id:
            for ch in list(agent.channels):
                self.detach(ch)
            return agent, ""
        if agent.connected:
            log.warning("agent %s: instance %s refused: connected as instance %s", name, instance_id, agent.instance_id)
            raise FailedPrecondition(
                f"agent name {name!r} is connected as instance {agent.instance_id}; instance {instance_id} is "
                "refused: two agents run under one name (one certificate). Stop one, or give each its own name"
            )
        log.warning("agent %s: instance %s takes over from instance %s", name, instance_id, agent.instance_id)
        return agent, agent.instance_id

    def set_condition(self, agent: AgentState, unhealthy: str, draining: bool) -> None:
        """What the agent's heartbeat says of itself: unhealthy (why) and draining."""
        was = agent.available
        if unhealthy != agent.unhealthy:
            if unhealthy:
                log.warning("agent %s is unhealthy, no work for it: %s", agent.name, unhealthy)
            else:
                log.info("agent %s is healthy again", agent.name)
        agent.unhealthy = unhealthy
        agent.draining_reported = draining
        if draining:
            agent.drain_requested = False  # it heard us
        self._availability_changed(agent, was)

    def drain(self, agent: AgentState) -> None:
        """An admin asks the agent to drain: no new work from now on, and it is told so
        down each of its channels (and again on every reconnect until it says it drains)."""
        was = agent.available
        agent.drain_requested = True
        for ch in agent.channels:
            ch.push(drain=True)
        log.info("agent %s asked to drain", agent.name)
        self._availability_changed(agent, was)

    def _availability_changed(self, agent: AgentState, was: bool) -> None:
        if agent.available and not was:  # its offered slots count again
            for ch in agent.channels:
                if ch.credits > 0 and not ch.closed:
                    self.credited[ch] = None
            self._kick()
        elif was and not agent.available:
            for ch in agent.channels:
                self.credited.pop(ch, None)

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
                instance_id=row.instance_id,
            )
            agent.view.connected = False
            self.agents[row.name] = agent
            self._index_cache(agent, {}, agent.view.cached)

    # ------------------------------------------------------------------ channels and credits

    def heard(self, agent: AgentState, silent_after: float = float("inf")) -> bool:
        """The agent showed a sign of life now. True if it had been silent longer than
        ``silent_after`` (dispatch skipped it meanwhile, so it should look again)."""
        now = self._clock()
        was_silent = now - agent.heard_at > silent_after
        agent.heard_at = now
        return was_silent

    def attach(self, name: str, credits: int = 0, peer: str = "") -> Channel:
        """A new way to reach the agent (its work stream, or one long-poll).

        When its instance registered over a known connection (``peer``, the transport
        address), a stream from another connection is refused: between one instance's
        Register and its Connect, another instance under the name may have taken it over,
        and the first one must not then work under the name beside it. It registers again.
        """
        agent = self.require(name)
        if agent.instance_id and agent.peer and peer and peer != agent.peer:
            raise FailedPrecondition(
                f"agent {name}: this connection ({peer}) is not the one instance {agent.instance_id} registered "
                f"over ({agent.peer}); register again"
            )
        ch = Channel(name, credits)
        if not agent.channels:
            self._count_capacity(agent, +1)
            self.labels_version += 1
        agent.channels.append(ch)
        agent.view.connected = True
        self.heard(agent)
        if credits > 0 and agent.available:
            self.credited[ch] = None
        if agent.drain_requested:
            ch.push(drain=True)
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
        agent = self.agents[ch.agent]
        self.heard(agent)  # asking for work is a sign of life
        ch.credits = min(ch.credits + n, agent.caps.slots or 1)
        if ch.credits > 0 and not ch.closed and agent.available:
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
