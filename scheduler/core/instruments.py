"""The core's hook points for metrics: counters and histograms, no-ops until installed.

The core never imports the metrics library. Its hot paths (dispatch, grants,
completions, reports) call ``I.<name>.inc()`` or ``.observe(value)`` on the
objects here, which do nothing until :func:`scheduler.metrics.Metrics.install`
puts real Prometheus counters and histograms in their place (and nothing at all
when metrics are off: ``metrics = false``). Anything read at scrape time (tasks
by state, per-agent figures, alerts) is not here: the scrape's collectors read
the engine's state (:mod:`scheduler.metrics_collect`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["I", "Instruments", "Noop"]


class Noop:
    """A counter or histogram that records nothing (metrics off, or not installed yet)."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def labels(self, *values: Any, **kw: Any) -> Noop:
        return self


_NOOP = Noop()


class Instruments:
    """The hooks the core and the store call; each one a counter or a histogram."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        #: ready (queued) to leased: seconds a task waited in the ready queue for its attempt
        self.queue_wait: Any = _NOOP
        #: a dispatch pass's start to its assignments handed to the agents' channels (after commit)
        self.dispatch_latency: Any = _NOOP
        self.lease_grants: Any = _NOOP
        self.lease_expiries: Any = _NOOP
        #: reports refused as stale (another epoch or agent holds the task)
        self.stale_rejections: Any = _NOOP
        #: labelled ``direction`` ("in": uploaded to the scheduler, "out": downloaded from it)
        self.artifact_bytes: Any = _NOOP
        #: raised alerts, labelled ``alert``
        self.alerts_raised: Any = _NOOP


#: The one set of hooks of this process (one scheduler per process).
I = Instruments()  # noqa: E741
