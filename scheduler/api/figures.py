"""An agent's own figures (``HeartbeatRequest.figures``) as the core keeps them, checked.

Every number finite and in range, at most as many GPUs as capabilities may list
(:data:`~scheduler.api.bounds.MAX_GPUS`), each GPU index once (it becomes a label
value on ``/metrics``: a duplicate would make two series of one name). A bad value
can only come from a broken or hostile agent: INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from outrider.errors import InvalidArgument
from outrider.v1 import agent_pb2
from scheduler.api import bounds
from scheduler.core.figures import AgentFigures, GpuFigures

__all__ = ["figures_from_proto"]

#: Percent of one core: 100 per core, as many cores as capabilities may claim.
MAX_CPU_PERCENT = 100.0 * bounds.MAX_CPU_CORES
#: CPU seconds: a million cores busy for a year is still less.
MAX_CPU_SECONDS = 1e14


def figures_from_proto(f: agent_pb2.AgentFigures, field: str = "figures") -> AgentFigures:
    at = f"{field}."
    bounds.count(f"{at}gpus", f.gpus, bounds.MAX_GPUS)
    gpus = []
    seen: set[int] = set()
    for i, g in enumerate(f.gpus):
        gat = f"{at}gpus[{i}]."
        index = bounds.integer(f"{gat}index", g.index, 0, bounds.MAX_GPUS - 1)
        if index in seen:
            raise InvalidArgument(f"{gat}index {index} is listed twice")
        seen.add(index)
        util = bounds.number(f"{gat}utilization_percent", g.utilization_percent, 0.0, 100.0)
        total = bounds.integer(f"{gat}memory_total_bytes", g.memory_total_bytes)
        used = bounds.integer(f"{gat}memory_used_bytes", g.memory_used_bytes)
        gpus.append(GpuFigures(index, util / 100.0, used, total))
    disk_total = bounds.integer(f"{at}disk_total_bytes", f.disk_total_bytes)
    disk_free = bounds.integer(f"{at}disk_free_bytes", f.disk_free_bytes)
    if disk_free > disk_total:
        raise InvalidArgument(f"{at}disk_free_bytes ({disk_free}) exceeds {at}disk_total_bytes ({disk_total})")
    return AgentFigures(
        stage_cpu_seconds=bounds.number(f"{at}stage_cpu_seconds", f.stage_cpu_seconds, 0.0, MAX_CPU_SECONDS),
        stage_cpu_cores=bounds.number(f"{at}stage_cpu_percent", f.stage_cpu_percent, 0.0, MAX_CPU_PERCENT) / 100.0,
        stage_rss_bytes=bounds.integer(f"{at}stage_rss_bytes", f.stage_rss_bytes),
        gpus=tuple(gpus),
        disk_free_bytes=disk_free,
        disk_total_bytes=disk_total,
        cache_bytes=bounds.integer(f"{at}cache_bytes", f.cache_bytes),
        outbox_depth=bounds.integer(f"{at}outbox_depth", f.outbox_depth, 0, bounds.MAX_LEASES * 100),
    )
