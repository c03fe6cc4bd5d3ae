"""Stage metrics on the wire: what a completion carries in, what ``GetStageMetrics`` answers.

A completion's figures (:mod:`outrider.metrics`, read by the agent when the stage ends) are
checked here before they reach the core: at most :data:`outrider.metrics.MAX_NAMES` of
them, each name matching :data:`outrider.metrics.NAME_PATTERN` and given once, a finite
value, a step from 0 to 2**53, a plausible time and count. A figure out of bounds is not
stored and is counted with the lines the agent skipped (with the reason, if it is the
first): refusing the completion for it would lose the attempt's result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from outrider import metrics
from outrider.errors import InvalidArgument
from outrider.v1 import agent_pb2, control_pb2
from scheduler.api import bounds
from scheduler.core.messages import StageMetric
from scheduler.core.stagemetrics import MetricsRow, SkippedRow

__all__ = ["MAX_FIGURES", "MAX_RUNS", "completion_fields", "from_completion", "gather", "response", "run_ids"]

_NAME = re.compile(metrics.NAME_PATTERN)
#: How many runs one ``GetStageMetrics`` call may compare.
MAX_RUNS = 32
#: How many figures one answer holds at most (about 60 bytes each); past them a run is ``truncated``.
MAX_FIGURES = 50_000


def _problem(field: str, m: agent_pb2.StageMetric) -> str | None:
    """Why ``m`` cannot be stored, naming the field; None if it can."""
    if not _NAME.fullmatch(m.name):
        return f"{field}.name {m.name[:40]!r} is not a metric name ({metrics.NAME_PATTERN})"
    if not math.isfinite(m.value):
        return f"{field}.value must be a finite number, got {m.value!r}"
    if m.HasField("step") and not 0 <= m.step <= metrics.MAX_STEP:
        return f"{field}.step must be from 0 to 2**53, got {m.step}"
    if not math.isfinite(m.ts) or not 0 <= m.ts <= bounds.MAX_WALL:
        return f"{field}.ts must be a Unix time, got {m.ts!r}"
    if not 1 <= m.count <= bounds.MAX_BYTES:
        return f"{field}.count must be from 1 to 2**53, got {m.count}"
    return None


def from_completion(c: agent_pb2.Completion, field: str) -> tuple[tuple[StageMetric, ...], int, str]:
    """(the figures to store, how many were skipped, why the first was), from a completion."""
    skipped = min(max(c.metrics_skipped.count, 0), bounds.MAX_BYTES)
    reason = bounds.clip(c.metrics_skipped.reason, bounds.MAX_PROBLEM) if skipped else ""
    kept: dict[str, StageMetric] = {}
    for i, m in enumerate(c.metrics):
        why = _problem(f"{field}.metrics[{i}]", m)
        if why is None and m.name in kept:
            why = f"{field}.metrics[{i}]: name {m.name!r} given twice"
        if why is None and len(kept) >= metrics.MAX_NAMES:
            why = f"{field}.metrics: more than {metrics.MAX_NAMES} names"
        if why is not None:
            reason = reason or bounds.clip(f"refused by the scheduler: {why}", bounds.MAX_PROBLEM)
            skipped += 1
            continue
        step = m.step if m.HasField("step") else None
        kept[m.name] = StageMetric(m.name, m.value, step, m.ts, m.count)
    return tuple(kept.values()), skipped, reason


def completion_fields(c: agent_pb2.Completion, field: str) -> dict[str, Any]:
    """:func:`from_completion` as the keyword arguments of a :class:`~scheduler.core.messages.Completion`."""
    metrics, skipped, reason = from_completion(c, field)
    return {"metrics": metrics, "metrics_skipped": skipped, "metrics_skipped_reason": reason}


def run_ids(request: control_pb2.GetStageMetricsRequest) -> list[str]:
    """The runs asked for: 1 to :data:`MAX_RUNS`, each a bounded string, duplicates once."""
    if not request.run_ids:
        raise InvalidArgument("run_ids: name at least one run")
    bounds.count("run_ids", request.run_ids, MAX_RUNS)
    out: list[str] = []
    for i, r in enumerate(request.run_ids):
        bounds.text(f"run_ids[{i}]", r)
        if r not in out:
            out.append(r)
    return out


Found = tuple[str, list[MetricsRow], list[SkippedRow], bool]


async def gather(
    read: Callable[[str, int], Awaitable[tuple[list[MetricsRow], list[SkippedRow]]]], run_ids: list[str]
) -> list[Found]:
    """Each run's figures read with ``read(run_id, limit)``, at most :data:`MAX_FIGURES` in all (one
    answer stays well under gRPC's 4 MiB): (run_id, figures, skipped lines, truncated) per run."""
    found: list[Found] = []
    budget = MAX_FIGURES
    for run_id in run_ids:
        rows, skipped = await read(run_id, budget + 1)
        found.append((run_id, rows[:budget], skipped[:budget], len(rows) > budget))
        budget -= len(found[-1][1])
    return found


def response(
    runs: Iterable[Found],
) -> control_pb2.GetStageMetricsResponse:
    """The answer: per run (in the order asked) its figures, its skipped lines, whether it was cut."""
    resp = control_pb2.GetStageMetricsResponse()
    for run_id, rows, skipped, truncated in runs:
        r = resp.runs.add(run_id=run_id, truncated=truncated)
        for m in rows:
            am = r.metrics.add(task=m.task, attempt=m.attempt, name=m.name, value=m.value, ts=m.ts, count=m.count)
            if m.step is not None:
                am.step = m.step
        for s in skipped:
            r.skipped.add(task=s.task, attempt=s.attempt, count=s.count, reason=s.reason)
    return resp
