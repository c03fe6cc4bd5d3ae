"""What an agent measures of itself and sends with each heartbeat (``AgentFigures`` on the wire).

The scheduler keeps the latest per agent in memory (``AgentState.figures``); the
metrics scrape exposes them with an ``agent`` label and the alerts read the disk's.
Checked on the way in (:func:`scheduler.api.figures.figures_from_proto`): finite,
non-negative, at most as many GPUs as capabilities may list, each index once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuFigures:
    index: int
    utilization: float  # 0..1
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """An artifact transfer in flight on an agent: ``direction`` "in" (download) or "out" (upload)."""

    digest: str
    direction: str
    done_bytes: int
    total_bytes: int  # 0: not known yet


@dataclass(frozen=True, slots=True)
class AgentFigures:
    stage_cpu_seconds: float = 0.0  # CPU seconds used so far by the running stages' process trees
    stage_cpu_cores: float = 0.0  # their CPU use over the last interval, in cores busy
    stage_rss_bytes: int = 0
    gpus: tuple[GpuFigures, ...] = ()
    disk_free_bytes: int = 0
    disk_total_bytes: int = 0  # 0: the agent could not read its disk
    cache_bytes: int = 0
    outbox_depth: int = 0
    transfers: tuple[Transfer, ...] = ()  # in flight when sampled, the largest first


def disk_nearly_full(f: AgentFigures, used_ratio: float, min_free: int) -> bool:
    """Whether the state dir's disk is past ``used_ratio`` used, or has less than ``min_free``
    bytes free (a disk the agent could not read is not full)."""
    if f.disk_total_bytes <= 0:
        return False
    used = 1.0 - f.disk_free_bytes / f.disk_total_bytes
    return used >= used_ratio or f.disk_free_bytes < min_free
