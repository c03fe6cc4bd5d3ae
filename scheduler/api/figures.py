"""An agent's own figures (``HeartbeatRequest.figures``) as the core keeps them, checked.

Every number finite and in range, at most as many GPUs as capabilities may list
(:data:`~scheduler.api.bounds.MAX_GPUS`), each GPU index once (it becomes a label
value on ``/metrics``: a duplicate would make two series of one name). A bad value
can only come from a broken or hostile agent: INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from outrider.errors import InvalidArgument
from outrider.protocol import is_digest
from outrider.v1 import agent_pb2
from scheduler.api import bounds
from scheduler.core.figures import AgentFigures, GpuFigures, Transfer

__all__ = ["figures_from_proto"]

#: Percent of one core: 100 per core, as many cores as capabilities may claim.
MAX_CPU_PERCENT = 100.0 * bounds.MAX_CPU_CORES
#: CPU seconds: a million cores busy for a year is still less.
MAX_CPU_SECONDS = 1e14
#: Transfers in flight an agent may list (it sends at most 32).
MAX_TRANSFERS = 64


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
    bounds.count(f"{at}transfers", f.transfers, MAX_TRANSFERS)
    transfers = []
    for i, t in enumerate(f.transfers):
        tat = f"{at}transfers[{i}]."
        if not is_digest(t.digest):
            raise InvalidArgument(f"{tat}digest: not a sha256 hex digest")
        if t.direction not in ("in", "out"):
            raise InvalidArgument(f"{tat}direction must be 'in' or 'out', got {t.direction[:20]!r}")
        total = bounds.integer(f"{tat}total_bytes", t.total_bytes)
        done = bounds.integer(f"{tat}done_bytes", t.done_bytes, 0, total or bounds.MAX_BYTES)
        transfers.append(Transfer(t.digest, t.direction, done, total))
    return AgentFigures(
        stage_cpu_seconds=bounds.number(f"{at}stage_cpu_seconds", f.stage_cpu_seconds, 0.0, MAX_CPU_SECONDS),
        stage_cpu_cores=bounds.number(f"{at}stage_cpu_percent", f.stage_cpu_percent, 0.0, MAX_CPU_PERCENT) / 100.0,
        stage_rss_bytes=bounds.integer(f"{at}stage_rss_bytes", f.stage_rss_bytes),
        gpus=tuple(gpus),
        disk_free_bytes=disk_free,
        disk_total_bytes=disk_total,
        cache_bytes=bounds.integer(f"{at}cache_bytes", f.cache_bytes),
        outbox_depth=bounds.integer(f"{at}outbox_depth", f.outbox_depth, 0, bounds.MAX_LEASES * 100),
        transfers=tuple(transfers),
    )
