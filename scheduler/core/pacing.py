"""Keeping heavy requests from starving everyone else.

The core runs on one thread, the event loop, which also answers health checks and
renews every agent's leases. A plan of 150,000 tasks once held it for 20 s: health
checks timed out, and an unrelated task on another agent lost its lease. So work
proportional to the size of one request is either

* pure (validating and converting a spec, working out its static needs, building
  its tasks, converting an answer): done on a worker thread (:func:`offload`); the
  loop keeps running between the interpreter's switches (every few milliseconds); or
* reading shared state (planning against the registered agents, queueing a big
  run's tasks): done on the loop in slices of at most :data:`SLICE_S` of CPU time
  (:class:`Pacer`), yielding to every other ready callback in between. The slices are
  short because one gRPC call needs about ten turns of the loop (accept, read, run,
  write, finish): with 20 ms slices a health check took 200 ms; with 2 ms, 20 ms.

Small requests (at most :data:`INLINE_TASKS` tasks) are done inline: for them a
thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

#: Requests with at most this many tasks are handled inline.
INLINE_TASKS = 2000
#: The longest stretch of CPU time a paced loop holds the event loop.
SLICE_S = 0.002

P = ParamSpec("P")
R = TypeVar("R")


async def offload(big: bool, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)``: on a worker thread when ``big``, else inline.

    ``fn`` must not touch the core's mutable state (only its arguments, and thread-safe
    lookups such as interning in a dict).
    """
    if not big:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


class Pacer:
    """Call :meth:`step` in a long loop on the event loop: it yields once a slice is used up."""

    def __init__(self, slice_s: float = SLICE_S) -> None:
        self._slice = slice_s
        self._since = time.perf_counter()

    async def step(self) -> None:
        if time.perf_counter() - self._since >= self._slice:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
