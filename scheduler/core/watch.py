"""Watchers of runs and followers of logs: who is told what, once it is durable.

The state machine (:mod:`scheduler.core.lifecycle`) hands every event here after
the commit that recorded it; this module decides which watchers get it. Log
chunks are handed to a task's followers as they arrive, and followers are told
when the task ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from scheduler.core.model import Run
from scheduler.core.views import LogLine, RunEvent, run_status


@dataclass(eq=False)
class Watcher:
    run_id: str
    run_only: bool  # run-level events only
    queue: asyncio.Queue[RunEvent] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class LogFollower:
    run_id: str
    task: str
    queue: asyncio.Queue[LogLine | None] = field(default_factory=asyncio.Queue)  # None: the task ended


class Watchers:
    def __init__(self) -> None:
        self._runs: dict[str, set[Watcher]] = {}
        self._logs: dict[tuple[str, str], set[LogFollower]] = {}

    # -- runs

    def watch(self, run_id: str, run_only: bool) -> Watcher:
        w = Watcher(run_id, run_only)
        self._runs.setdefault(run_id, set()).add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        ws = self._runs.get(w.run_id)
        if ws is not None:
            ws.discard(w)
            if not ws:
                del self._runs[w.run_id]

    def wants(self, run_id: str, task_event: bool) -> bool:
        """Does anyone watch this run for such an event? (Events are built only if so.)"""
        ws = self._runs.get(run_id)
        if not ws:
            return False
        return not task_event or any(not w.run_only for w in ws)

    def publish(self, run: Run, ev: RunEvent) -> None:
        """Hand a durable event to the run's watchers; the run's last event carries its outcome."""
        if not ev.task and run.terminal:
            ev.snapshot = run_status(run)
        for w in self._runs.get(run.run_id, ()):
            if w.run_only and ev.task:
                continue
            w.queue.put_nowait(ev)

    # -- logs

    def follow(self, run_id: str, task: str) -> LogFollower:
        f = LogFollower(run_id, task)
        self._logs.setdefault((run_id, task), set()).add(f)
        return f

    def unfollow(self, f: LogFollower) -> None:
        fs = self._logs.get((f.run_id, f.task))
        if fs is not None:
            fs.discard(f)
            if not fs:
                del self._logs[(f.run_id, f.task)]

    def following(self, run_id: str, task: str) -> bool:
        return (run_id, task) in self._logs

    def log(self, run_id: str, task: str, line: LogLine) -> None:
        for f in self._logs.get((run_id, task), ()):
            f.queue.put_nowait(line)

    def task_ended(self, run_id: str, task: str) -> None:
        for f in self._logs.get((run_id, task), ()):
            f.queue.put_nowait(None)
