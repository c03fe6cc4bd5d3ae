"""Stage metrics: what stages record about themselves, stored per attempt and read back.

A stage logs figures (:mod:`outrider.metrics`); its agent reads them when the attempt ends
and sends the last value of each name with the completion (checked at the wire edge,
:mod:`scheduler.api.stagemetrics`). :func:`record` writes them on the completion's own
transaction, so they are durable exactly when the attempt's end is: a completion that is
refused or re-delivered records nothing twice. They are not kept in memory: reads
(``outrider status``, ``outrider metrics``) go to the store off the event loop.
"""

from __future__ import annotations

import asyncio

from scheduler.core.messages import Completion
from scheduler.core.model import Task
from scheduler.core.txn import Journal, Txn
from scheduler.store.base import MetricRow, MetricSkipRow

__all__ = ["MetricsRow", "SkippedRow", "StageMetrics", "record"]

MetricsRow = MetricRow
SkippedRow = MetricSkipRow


def record(txn: Txn, t: Task, c: Completion, offset: float) -> None:
    """Write what the completion ``c`` of ``t``'s current attempt carries (times moved to our
    clock by ``offset``, the agent's measured offset) on ``txn``."""
    attempt = c.lease.epoch
    rows = [(t.run_id, t.name, attempt, m.name, m.value, m.step, m.ts + offset, m.count) for m in c.metrics]
    txn.changes.stage_metrics(rows)
    if c.metrics_skipped:
        txn.changes.metrics_skipped(t.run_id, t.name, attempt, c.metrics_skipped, c.metrics_skipped_reason)


class StageMetrics:
    """Reads stage metrics back (after the journal's barrier: never a state a crash could take back);
    the control service holds one (not the engine: its class is at its size limit)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    async def read(self, run_id: str, limit: int) -> tuple[list[MetricRow], list[MetricSkipRow]]:
        """A run's stage metrics and skipped lines (at most ``limit`` of each), in (task, attempt,
        name) order."""
        await self._journal.barrier()
        return await asyncio.to_thread(self._journal.store.stage_metrics, run_id, limit)
