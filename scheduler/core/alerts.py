"""Alerts: conditions an operator must hear of, each an event and a metric.

Checked every :data:`CHECK_S` seconds from the scheduler's tick (never on the hot
path), over what is in memory:

* ``task_overdue`` (one per run): ready tasks still waiting past the deadline their
  explanation gives (``infeasible_timeout`` after they became ready: an unplaceable one
  is failed then, so one still waiting can be placed but is not: starved);
* ``agent_silent`` (one per agent): heard from since this scheduler started, not
  draining, and silent for longer than a lease lives (a crash, a cut link, a half-open
  stream; an agent that stopped cleanly drained first and raises none);
* ``clock_suspect`` (one per connected agent): its clock is off by more than
  ``max_clock_offset`` (the registry's flag);
* ``disk_nearly_full`` (one per connected agent): the disk of its state dir, as its
  heartbeat figures say, past ``alert_disk_used`` used or under ``alert_disk_free`` free.

(A standby without a leader is the fifth; a standby has no engine, so the scheduler
raises it itself: a log line and ``outrider_standby_without_leader``.)

An alert's raising and its clearing are each one event, written through the journal
like every other: a row of the events table whose ``run_id`` is empty (a run-independent
event; :data:`EVENT_RAISED`, :data:`EVENT_CLEARED`), the alert's kind and subject at the
start of its detail (``"agent_silent edge-3: ..."``), the agent's name in ``agent``
where there is one. ``outrider events`` reads them with every run's events
(``Store.all_events``, and live through ``Watchers.feed``); only an admin sees them there
(they belong to no run); per-run watches never see them. The metrics scrape reads
:attr:`Alerts.active` (:mod:`scheduler.metrics_collect`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.core.figures import disk_nearly_full
from scheduler.core.instruments import I
from scheduler.core.model import Run
from scheduler.core.txn import Txn

if TYPE_CHECKING:
    from scheduler.core.engine import Engine

log = logging.getLogger(__name__)

__all__ = ["CHECK_S", "EVENT_CLEARED", "EVENT_RAISED", "KINDS", "AlertRules", "Alerts"]

#: How often the conditions are checked (seconds).
CHECK_S = 2.0
#: The ``state`` of an alert's events (run-independent: ``run_id`` and ``task`` empty).
EVENT_RAISED = "alert"
EVENT_CLEARED = "alert_cleared"
TASK_OVERDUE = "task_overdue"
AGENT_SILENT = "agent_silent"
CLOCK_SUSPECT = "clock_suspect"
DISK_NEARLY_FULL = "disk_nearly_full"
STANDBY_WITHOUT_LEADER = "standby_without_leader"
KINDS = (TASK_OVERDUE, AGENT_SILENT, CLOCK_SUSPECT, DISK_NEARLY_FULL, STANDBY_WITHOUT_LEADER)


@dataclass(frozen=True)
class AlertRules:
    disk_used_ratio: float = 0.9  # alert_disk_used
    disk_min_free: int = 1 << 30  # alert_disk_free


Key = tuple[str, str]  # (kind, subject: a run id or an agent name)


class Alerts:
    def __init__(self, engine: Engine, rules: AlertRules | None = None) -> None:
        self._engine = engine
        self.rules = rules or AlertRules()
        #: (kind, subject) -> the sentence raised; what holds as of the last check
        self.active: dict[Key, str] = {}
        #: tasks past their deadline as of the last check (the metric)
        self.overdue_tasks = 0
        self._last = float("-inf")

    def check(self, mono: float | None = None) -> None:
        """Evaluate every condition (at most every :data:`CHECK_S`); record what changed."""
        e = self._engine
        mono = e.clock() if mono is None else mono
        if mono - self._last < CHECK_S:
            return
        self._last = mono
        now = self._conditions(mono)
        raised = [k for k in now if k not in self.active]
        cleared = [k for k in self.active if k not in now]
        if not raised and not cleared:
            self.active = now
            return
        txn = Txn()
        for key in raised:
            self._event(txn, EVENT_RAISED, key, now[key])
            I.alerts_raised.labels(key[0]).inc()
            log.warning("alert %s %s: %s", key[0], key[1], now[key])
        for key in cleared:
            self._event(txn, EVENT_CLEARED, key, "cleared (was: " + self.active[key] + ")")
            log.info("alert %s %s cleared", key[0], key[1])
        self.active = now
        e.journal.commit(txn)

    def _event(self, txn: Txn, state: str, key: Key, sentence: str) -> None:
        agent = key[1] if key[0] != TASK_OVERDUE else ""
        self._engine.sm.note_apart(txn, state, agent, f"{key[0]} {key[1]}: {sentence}"[:1024])

    def _conditions(self, mono: float) -> dict[Key, str]:
        e = self._engine
        out: dict[Key, str] = {}
        deadline = e.dispatcher.infeasible_timeout
        self.overdue_tasks = 0
        for run in list(e.queues.runs()):
            n, oldest = _overdue(run, mono, deadline)
            if n:
                self.overdue_tasks += n
                out[(TASK_OVERDUE, run.run_id)] = (
                    f"{n} task(s) ready for longer than {deadline:g}s and not placed (oldest: {oldest}); "
                    f"`outrider explain {run.run_id} TASK` says why"
                )
        ttl = e.lease_ttl
        for a in e.registry.agents.values():
            silent = mono - a.heard_at
            if silent > ttl and a.heard_at > float("-inf") and not a.draining:
                out[(AGENT_SILENT, a.name)] = f"not heard from for {silent:.0f}s (leases live {ttl:g}s)"
            if not a.connected:
                continue
            if a.view.clock_suspect:
                out[(CLOCK_SUSPECT, a.name)] = (
                    f"clock offset + uncertainty {a.view.clock_skew:.3f}s exceeds max_clock_offset "
                    f"{e.registry.max_clock_offset:g}s"
                )
            f = a.figures
            if f is not None and disk_nearly_full(f, self.rules.disk_used_ratio, self.rules.disk_min_free):
                used, r = 1.0 - f.disk_free_bytes / f.disk_total_bytes, self.rules
                out[(DISK_NEARLY_FULL, a.name)] = (
                    f"state dir disk {used:.0%} used, {f.disk_free_bytes / 2**30:.2f} GiB free "
                    f"(alert at {r.disk_used_ratio:.0%} used or under {r.disk_min_free / 2**30:g} GiB)"
                )
        return out

    def subjects(self, kind: str) -> set[str]:
        return {s for k, s in self.active if k == kind}


def _overdue(run: Run, mono: float, deadline: float) -> tuple[int, str]:
    """How many of the run's queued tasks have been ready for ``deadline`` or longer, and the
    oldest one's name. Each queue is in the order tasks became ready: read from its head,
    stopping at the first one younger than the deadline."""
    n, oldest, oldest_at = 0, "", float("inf")
    for dq in list(run.queues.values()):
        for t in dq:
            if not t.queued:
                continue  # removed lazily
            if mono - t.ready_at < deadline:
                break
            n += 1
            if t.ready_at < oldest_at:
                oldest, oldest_at = t.name, t.ready_at
    return n, oldest
