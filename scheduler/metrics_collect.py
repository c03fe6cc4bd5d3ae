"""What ``/metrics`` reads from memory when Prometheus scrapes: nothing of it costs the hot path.

Tasks and runs by state (from the engine's runs; an ended run's counts are cached, as
they no longer change), each agent's slots, clock, bandwidth, heartbeat age and the
figures its heartbeats carry (label ``agent``; GPUs also ``gpu``), the alerts as of
their last check, and leadership where high availability is on. Collected on the event
loop (the HTTP server's handler runs there): the engine's state is only ever read
between two of its changes.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.core import alerts as A
from scheduler.core.model import RunState, TaskState

if TYPE_CHECKING:
    from prometheus_client import Metric

    from scheduler.core.alerts import Alerts
    from scheduler.core.engine import Engine
    from scheduler.core.registry import AgentState

__all__ = ["HaStatus", "StateCollector"]


@dataclass
class HaStatus:
    """High availability as this replica sees it (only where it is on: PostgreSQL)."""

    leader: bool = False  # this replica leads
    leader_known: bool = True  # a standby: some replica leads now ("" from the campaign: none)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StateCollector(Collector):
    def __init__(
        self,
        engine: Engine | None,
        alerts: Alerts | None,
        ha: HaStatus | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine  # None on a standby (it has no state yet)
        self.alerts = alerts
        self.ha = ha
        self._wall = wall or (engine.wall if engine is not None else time.time)  # the engine's clock
        self._ended: dict[str, Tally[str]] = {}  # run id -> its tasks by state, once the run ended

    def describe(self) -> list[Metric]:
        return []  # the families are built at each scrape (registering must not collect)

    def collect(self) -> Iterator[Metric]:
        if self.ha is not None:
            yield from self._ha()
        if self.engine is not None:
            yield from self._tasks(self.engine)
            yield from self._agents(self.engine)
        if self.alerts is not None:
            yield from self._alerts(self.alerts)

    def _ha(self) -> Iterator[Metric]:
        assert self.ha is not None
        g = _gauge("outrider_leader", "1 if this replica leads, 0 if it stands by (high availability).")
        g.add_metric([], 1.0 if self.ha.leader else 0.0)
        yield g
        g = _gauge("outrider_standby_without_leader", "1 if this replica stands by and no replica leads.")
        g.add_metric([], 1.0 if not self.ha.leader and not self.ha.leader_known else 0.0)
        yield g

    def _tasks(self, e: Engine) -> Iterator[Metric]:
        tasks: Tally[str] = Tally()
        runs: Tally[str] = Tally()
        live = set()
        for run in e.runs.values():
            runs[run.state.value] += 1
            live.add(run.run_id)
            counts = self._ended.get(run.run_id) if run.terminal else None
            if counts is None:
                counts = Tally(t.state.value for t in run.tasks.values())
                if run.terminal:
                    self._ended[run.run_id] = counts
            tasks.update(counts)
        if len(self._ended) > len(live):  # runs gone from memory
            self._ended = {k: v for k, v in self._ended.items() if k in live}
        g = _gauge("outrider_tasks", "Tasks by state, over every run the scheduler holds.", ["state"])
        for state in TaskState:
            g.add_metric([state.value], float(tasks[state.value]))
        yield g
        g = _gauge("outrider_runs", "Runs by state.", ["state"])
        for rstate in RunState:
            g.add_metric([rstate.value], float(runs[rstate.value]))
        yield g
        g = _gauge("outrider_ready_tasks", "Tasks queued for an agent now.")
        g.add_metric([], float(e.ready_count))
        yield g

    def _agents(self, e: Engine) -> Iterator[Metric]:
        wall = self._wall()
        fams = {
            name: _gauge(name, doc, ["agent"])
            for name, doc in (
                ("outrider_agent_connected", "1 if the agent has a work stream open now."),
                ("outrider_agent_slots_used", "Attempts the agent runs now (leases it holds)."),
                ("outrider_agent_slots_free", "Slots the agent offers now (its credits)."),
                ("outrider_agent_clock_offset_seconds", "Add to the agent's clock to get the scheduler's."),
                ("outrider_agent_bandwidth_bytes_per_second", "The agent's measured link to the scheduler."),
                ("outrider_agent_last_heartbeat_age_seconds", "Seconds since the agent last registered or beat."),
                ("outrider_agent_cache_bytes", "Bytes of artifacts in the agent's cache."),
                ("outrider_agent_outbox_depth", "Results the agent holds that the scheduler has not acknowledged."),
                ("outrider_agent_stage_cpu_seconds", "CPU seconds used so far by the stages running on the agent."),
                ("outrider_agent_stage_cpu_cores", "CPU cores the agent's running stages kept busy lately."),
                ("outrider_agent_stage_resident_memory_bytes", "Resident memory of the agent's running stages."),
                ("outrider_agent_disk_free_bytes", "Free bytes on the disk of the agent's state dir."),
                ("outrider_agent_disk_size_bytes", "Size of the disk of the agent's state dir."),
            )
        }
        gpu_fams = {
            name: _gauge(name, doc, ["agent", "gpu"])
            for name, doc in (
                ("outrider_agent_gpu_utilization_ratio", "GPU busy fraction over the last sample (NVML)."),
                ("outrider_agent_gpu_memory_used_bytes", "GPU memory in use (NVML)."),
                ("outrider_agent_gpu_memory_size_bytes", "GPU memory in all (NVML)."),
            )
        }
        for a in e.agents.values():
            self._agent(a, fams, gpu_fams, wall)
        yield from fams.values()
        yield from gpu_fams.values()

    @staticmethod
    def _agent(
        a: AgentState, fams: dict[str, GaugeMetricFamily], gpu_fams: dict[str, GaugeMetricFamily], wall: float
    ) -> None:
        lab = [a.name]

        def put(name: str, value: float) -> None:
            fams[name].add_metric(lab, float(value))

        put("outrider_agent_connected", 1.0 if a.connected else 0.0)
        put("outrider_agent_slots_used", len(a.running))
        put("outrider_agent_slots_free", a.credits)
        put("outrider_agent_clock_offset_seconds", a.sched_offset)
        put("outrider_agent_bandwidth_bytes_per_second", a.view.bandwidth_bps)
        put("outrider_agent_last_heartbeat_age_seconds", max(0.0, wall - a.last_seen))
        f = a.figures
        put("outrider_agent_cache_bytes", f.cache_bytes if f is not None else sum(a.view.cached.values()))
        if f is None:
            return  # an agent that sends no figures (older, or none yet): only what the scheduler knows
        put("outrider_agent_outbox_depth", f.outbox_depth)
        put("outrider_agent_stage_cpu_seconds", f.stage_cpu_seconds)
        put("outrider_agent_stage_cpu_cores", f.stage_cpu_cores)
        put("outrider_agent_stage_resident_memory_bytes", f.stage_rss_bytes)
        if f.disk_total_bytes:
            put("outrider_agent_disk_free_bytes", f.disk_free_bytes)
            put("outrider_agent_disk_size_bytes", f.disk_total_bytes)
        for g in f.gpus:
            gl = [a.name, str(g.index)]
            gpu_fams["outrider_agent_gpu_utilization_ratio"].add_metric(gl, g.utilization)
            gpu_fams["outrider_agent_gpu_memory_used_bytes"].add_metric(gl, float(g.memory_used_bytes))
            gpu_fams["outrider_agent_gpu_memory_size_bytes"].add_metric(gl, float(g.memory_total_bytes))

    def _alerts(self, al: Alerts) -> Iterator[Metric]:
        by_kind = Tally(kind for kind, _ in al.active)
        g = _gauge("outrider_alerts_active", "Alerts holding now (as of their last check), by alert.", ["alert"])
        for kind in A.KINDS:
            if kind != A.STANDBY_WITHOUT_LEADER:  # a standby has no engine: outrider_standby_without_leader
                g.add_metric([kind], float(by_kind[kind]))
        yield g
        g = _gauge("outrider_tasks_overdue", "Ready tasks waiting past the deadline their explanation gives.")
        g.add_metric([], float(al.overdue_tasks))
        yield g
        if self.engine is None:
            return
        for kind, name, doc in (
            (A.AGENT_SILENT, "outrider_agent_silent", "1 if the agent has been silent for longer than a lease lives."),
            (A.CLOCK_SUSPECT, "outrider_agent_clock_suspect", "1 if the agent's clock is off past max_clock_offset."),
            (A.DISK_NEARLY_FULL, "outrider_agent_disk_nearly_full", "1 if the agent's state dir disk is nearly full."),
        ):
            on = al.subjects(kind)
            g = _gauge(name, doc, ["agent"])
            for agent in self.engine.agents:
                g.add_metric([agent], 1.0 if agent in on else 0.0)
            yield g
