"""Watchers of runs and followers of logs: who is told what, once it is durable.

The state machine (:mod:`scheduler.core.lifecycle`) hands every event here after
the commit that recorded it; this module decides which watchers get it. Log
chunks are handed to a task's followers as they arrive, and followers are told
when the task ends.

A watch first replays the run's durable history (the events table, in ``seq``
order, after the ``seq`` the watcher already saw), then follows live events, with
neither gaps nor duplicates (:func:`replay_then_follow`): the watcher is registered
*before* the history is read, so every event recorded after the read reaches its
queue; a barrier first makes every event emitted before the registration durable,
so the read holds it; and queued events the read already returned are dropped by
their ``seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from scheduler.core.events import EventFeed
from scheduler.core.model import TERMINAL_RUN_EVENTS, Run
from scheduler.core.views import LogLine, RunEvent, run_status

#: Events read from the history per page.
HISTORY_PAGE = 2000


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
        self.feed = EventFeed()  # readers of every run's events (outrider events)

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
            return bool(self.feed)
        return bool(self.feed) or not task_event or any(not w.run_only for w in ws)

    def publish(self, run: Run, ev: RunEvent) -> None:
        """Hand a durable event to the run's watchers; the run's last event carries its outcome."""
        if self.feed:
            self.feed.publish(ev)
        if not ev.task and run.terminal and run.run_id in self._runs:
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


async def replay_then_follow(
    watcher: Watcher,
    run: Run,
    after: int,
    barrier: Callable[[], Awaitable[None]],
    history: Callable[[int, int], Awaitable[list[RunEvent]]],
) -> AsyncIterator[RunEvent]:
    """The run's events after ``after``: first its durable history, then live ones, each
    once and in ``seq`` order; ends once the run has ended and its last event was sent.

    ``watcher`` must be registered already; ``history(after, limit)`` reads recorded
    events (off the loop); ``barrier()`` resolves once everything emitted is durable.
    """
    await barrier()
    last = after
    while True:
        page = await history(last, HISTORY_PAGE)
        for ev in page:
            last = max(last, ev.seq)
            if watcher.run_only and ev.task:
                continue
            yield ev
        if len(page) < HISTORY_PAGE:
            break
    # What the queue caught meanwhile: the part the read already returned is dropped.
    caught = []
    while not watcher.queue.empty():
        ev = watcher.queue.get_nowait()
        if ev.seq > last:
            caught.append(ev)
    if run.terminal and run.state_seq <= last and not caught:
        return  # the event that ended the run was sent (or was before ``after``)
    for ev in caught:
        last = ev.seq
        yield ev
        if not ev.task and ev.state in TERMINAL_RUN_EVENTS:
            return
    while True:
        ev = await watcher.queue.get()
        if ev.seq and ev.seq <= last:
            continue
        last = max(last, ev.seq)
        yield ev
        if not ev.task and ev.state in TERMINAL_RUN_EVENTS:
            return
