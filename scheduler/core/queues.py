"""Ready tasks, where dispatch finds them.

A READY task is either in its run's ready queue (``Run.queues``: one FIFO per
distinct :class:`~scheduler.core.model.Needs`, so a poll checks each distinct need
once) or, while its retry backoff runs, in a heap keyed by the wall time it may
run again. Entries are removed lazily: a task that leaves the queue is only
marked (``Task.queued``); dispatch drops marked entries as it meets them.

When a task is queued its inputs exist, so this is where the effective
requirements (residency narrowed by its inputs') and the placement data (the
input digests and sizes, its preferences) are worked out.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator

from scheduler.core.model import NO_PLACEMENT, Needs, Placement, Run, Task, TaskState, narrowed


class ReadyQueues:
    def __init__(self, *, clock: Callable[[], float], wall: Callable[[], float], kick: Callable[[], None]) -> None:
        self._clock = clock
        self._wall = wall
        self._kick = kick
        self.count = 0  # tasks in the queues (not counting those in backoff)
        self._runs: dict[str, Run] = {}  # runs with queued tasks
        self._delayed: list[tuple[float, int, Run, Task]] = []  # (not_before wall, tiebreak, run, task)
        self._order = itertools.count()
        self._needs_pool: dict[Needs, Needs] = {}  # one instance per distinct Needs
        self._placement_pool: dict[Placement, Placement] = {}

    def intern(self, needs: Needs) -> Needs:
        """The one shared instance equal to ``needs`` (dispatch memoises by identity)."""
        return self._needs_pool.setdefault(needs, needs)

    def runs(self) -> Iterator[Run]:
        """Runs that have queued tasks."""
        return iter(self._runs.values())

    @property
    def backoff(self) -> int:
        """Tasks waiting for their retry backoff to end."""
        return len(self._delayed)

    def put(self, run: Run, t: Task) -> None:
        """A task became READY: queue it, or hold it until its backoff ends."""
        if t.not_before > self._wall():
            heapq.heappush(self._delayed, (t.not_before, next(self._order), run, t))
        else:
            self._queue(run, t)

    def remove(self, run: Run, t: Task) -> None:
        """Take a task out of the ready queues (its deque entry is dropped lazily)."""
        if not t.queued:
            return
        t.queued = False
        run.queued -= 1
        self.count -= 1
        if run.queued == 0:
            run.queues.clear()
            self._runs.pop(run.run_id, None)

    def release_due(self, wall: float) -> None:
        """Queue the tasks whose retry backoff has ended by ``wall``."""
        while self._delayed and self._delayed[0][0] <= wall:
            _, _, run, t = heapq.heappop(self._delayed)
            if t.state is TaskState.READY and not t.queued and t.not_before <= wall:
                self._queue(run, t)

    def _queue(self, run: Run, t: Task) -> None:
        if t.queued:
            return
        t.needs = self.intern(narrowed(t.spec_needs, self._input_residencies(run, t)))
        t.placement = self._placement_of(run, t)
        t.ready_at = self._clock()
        t.wait_for, t.wait_until = "", 0.0
        dq = run.queues.get(t.needs)
        if dq is None:
            dq = run.queues[t.needs] = deque()
        dq.append(t)
        t.queued = True
        run.queued += 1
        self.count += 1
        self._runs[run.run_id] = run
        self._kick()

    @staticmethod
    def _input_residencies(run: Run, t: Task) -> Iterator[frozenset[str] | None]:
        for _, ref in t.spec.inputs:
            o = run.tasks[ref.task].outputs.get(ref.output)
            if o is not None:
                yield o.residency

    def _placement_of(self, run: Run, t: Task) -> Placement:
        inputs = []
        for _, ref in t.spec.inputs:
            o = run.tasks[ref.task].outputs.get(ref.output)
            if o is not None:
                inputs.append((o.digest, o.size))
        affinities = tuple((a.expr, a.weight) for a in t.spec.affinities)
        if not inputs and not affinities:
            return NO_PLACEMENT
        placement = Placement(tuple(inputs), affinities)
        if not inputs:  # preferences only: shared by the run's alike tasks, so share one object
            if len(self._placement_pool) > 100_000:
                self._placement_pool.clear()
            placement = self._placement_pool.setdefault(placement, placement)
        return placement
