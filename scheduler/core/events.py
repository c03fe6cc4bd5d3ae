"""The event stream of every run (``outrider events``): durable history, then live events.

Every event the state machine records (:mod:`scheduler.core.lifecycle`: state changes,
placements, retries, lease expiries as ``lost``, releases, checkpoints) has a place in one
global order, its ``seq``. :func:`event_stream` replays the recorded events after a given
``seq`` from the store, then (``follow``) hands on live ones as they are committed, each
once and in ``seq`` order, as :func:`scheduler.core.watch.replay_then_follow` does for one
run: the feed is subscribed *before* the history is read, a barrier makes every event
emitted before the subscription durable, and queued events the read already returned are
dropped by their ``seq``. A subscriber that falls more than :data:`FEED_LIMIT` events behind
is unsubscribed and catches up from the store again: a slow reader costs memory bounded
by that limit, never the scheduler's.

A placement (a task's ``running`` event) says the winning agent's score in its message
(:func:`placement_message`); :func:`placement_score` reads it back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from scheduler import matcher
from scheduler.core.model import EventKind, Placement
from scheduler.core.views import RunEvent

#: Events read from the history per page.
PAGE = 2000
#: Live events a subscriber may have queued before it is sent back to the history.
FEED_LIMIT = 10_000

_SCORE = re.compile(r"^placed with score (-?[0-9]+(?:\.[0-9]+)?)")


def placement_message(p: Placement, view: matcher.AgentView) -> str:
    """The message of a placement's event: the agent's score and its terms (docs/placement.md)."""
    terms = matcher.breakdown(p, view)
    detail = ", ".join(f"{k} {v:.3f}" for k, v in terms.items())
    return f"placed with score {sum(terms.values()):.3f} ({detail})"


def placement_score(state: str, message: str) -> float:
    """The winning score a placement's event records (0.0 for any other event)."""
    if state != EventKind.RUNNING.value:
        return 0.0
    m = _SCORE.match(message)
    return float(m.group(1)) if m else 0.0


@dataclass(eq=False)
class Subscriber:
    """One reader of every run's live events."""

    queue: asyncio.Queue[RunEvent] = field(default_factory=asyncio.Queue)
    behind: bool = False  # more than FEED_LIMIT queued: no more live events; catch up from the store


class EventFeed:
    """Who reads every run's events live (the watchers hand each durable event here)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def __bool__(self) -> bool:
        return bool(self.subscribers)

    def subscribe(self) -> Subscriber:
        s = Subscriber()
        self.subscribers.add(s)
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        self.subscribers.discard(s)

    def publish(self, ev: RunEvent) -> None:
        for s in self.subscribers:
            if s.behind:
                continue
            if s.queue.qsize() >= FEED_LIMIT:
                s.behind = True
                s.queue.put_nowait(RunEvent("", "", "", seq=-1))  # wakes it: go back to the store
                continue
            s.queue.put_nowait(ev)


async def event_stream(
    feed: EventFeed,
    after: int,
    follow: bool,
    barrier: Callable[[], Awaitable[None]],
    history: Callable[[int, int], Awaitable[list[RunEvent]]],
    visible: Callable[[RunEvent], bool],
) -> AsyncIterator[RunEvent]:
    """The events ``visible`` allows with ``seq > after``: recorded ones, then (``follow``)
    live ones without end, each once and in ``seq`` order.

    ``history(after, limit)`` reads recorded events in ``seq`` order (off the loop);
    ``barrier()`` resolves once everything emitted is durable.
    """
    last = after
    while True:
        sub = feed.subscribe() if follow else None
        try:
            await barrier()
            while True:
                page = await history(last, PAGE)
                for ev in page:
                    last = max(last, ev.seq)
                    if visible(ev):
                        yield ev
                if len(page) < PAGE:
                    break
            if sub is None:
                return
            while True:
                ev = await sub.queue.get()
                if sub.behind:
                    break  # fell behind: read the rest from the store, then follow again
                if ev.seq <= last:
                    continue  # the history read returned it already
                last = ev.seq
                if visible(ev):
                    yield ev
        finally:
            if sub is not None:
                feed.unsubscribe(sub)
