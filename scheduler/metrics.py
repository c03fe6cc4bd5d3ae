"""The scheduler's Prometheus metrics: one registry, owned by the scheduler, and its exposition.

Two kinds of figure, kept apart so that the hot path stays cheap:

* what happens (grants, expiries, stale reports, queue waits, dispatch latency, RPCs,
  store commits, artifact bytes): counters and histograms, each recorded where it happens
  by one ``.inc()`` or ``.observe()`` (the core calls them through
  :mod:`scheduler.core.instruments`, which this module fills in);
* what is (tasks and runs by state, each agent's slots, clock, bandwidth, heartbeat age
  and the figures it sends, alerts, leadership): read from memory when Prometheus
  scrapes, by :class:`scheduler.metrics_collect.StateCollector`; nothing on the hot path.

Names follow Prometheus conventions: the ``outrider_`` prefix, base units (seconds,
bytes), ``_total`` on counters; ``promtool check metrics`` passes on the output
(tests/integration/test_metrics.py). ``metrics = false`` (``--metrics off``) builds none
of this: the hooks stay no-ops and ``/metrics`` answers 404.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from scheduler.core.instruments import I

if TYPE_CHECKING:
    from scheduler.metrics_collect import StateCollector
    from scheduler.store.base import Store

__all__ = ["Metrics", "RpcMetrics"]

#: Seconds: from 0.5 ms (a dispatch pass, a commit) to 10 min (a long queue wait).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
#: The text format every Prometheus release reads (what generate_latest writes; newer
#: clients label it 1.0.0, which older servers and promtool releases do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Changes (one per transaction the engine handed over) written in one group commit.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The registry and every counter and histogram of one scheduler process."""

    def __init__(self) -> None:
        # No `*_created` sample beside each counter and histogram: Prometheus reads a counter's reset from its
        # drop, and the extra series would double what every scrape stores.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_wait = Histogram(
            "outrider_queue_wait_seconds",
            "Seconds a task waited ready in the queue before an attempt was leased.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "outrider_dispatch_latency_seconds",
            "Seconds from a dispatch pass's start to its assignments being sent (after their commit).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lease_grants = Counter("outrider_lease_grants_total", "Leases granted (attempts started).", registry=r)
        self.lease_expiries = Counter(
            "outrider_lease_expiries_total", "Leases that ended without a report (the task ran again).", registry=r
        )
        self.stale_rejections = Counter(
            "outrider_stale_rejections_total",
            "Reports (completions, checkpoints) refused: another epoch or agent holds the task.",
            registry=r,
        )
        self.artifact_bytes = Counter(
            "outrider_artifact_bytes_total",
            "Artifact bytes moved through the scheduler; direction in (uploads) or out (downloads).",
            ["direction"],
            registry=r,
        )
        self.alerts_raised = Counter(
            "outrider_alerts_raised_total", "Alerts raised (each is also an event), by alert.", ["alert"], registry=r
        )
        self.commit_seconds = Histogram(
            "outrider_store_commit_seconds",
            "Seconds one group commit of the store took (the write and its sync).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "outrider_store_commit_batch_size",
            "Transactions written together by one group commit of the store.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.rpcs = Counter(
            "outrider_rpcs_total", "RPCs served, by method and gRPC status code.", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "outrider_rpc_duration_seconds",
            "Seconds an RPC took to serve (a stream: its whole life), by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.state: StateCollector | None = None

    def install(self) -> None:
        """Hand this process's hooks (:data:`scheduler.core.instruments.I`) these instruments."""
        I.queue_wait = self.queue_wait
        I.dispatch_latency = self.dispatch_latency
        I.lease_grants = self.lease_grants
        I.lease_expiries = self.lease_expiries
        I.stale_rejections = self.stale_rejections
        I.artifact_bytes = self.artifact_bytes
        I.alerts_raised = self.alerts_raised
        for direction in ("in", "out"):
            self.artifact_bytes.labels(direction)  # both series exist from the start, at 0

    @staticmethod
    def uninstall() -> None:
        I.reset()

    def watch_store(self, store: Store) -> None:
        commit, batch = self.commit_seconds, self.commit_batch

        def on_commit(seconds: float, groups: int) -> None:  # on the store's writer thread
            commit.observe(seconds)
            batch.observe(groups)

        store.on_commit = on_commit

    def add_state(self, collector: StateCollector) -> None:
        """The scrape-time figures (tasks by state, agents, alerts, leadership)."""
        if self.state is not None:
            self.registry.unregister(self.state)
        self.state = collector
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        """The exposition: (body, content type), for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE

    def interceptor(self) -> RpcMetrics:
        return RpcMetrics(self)


def _code_name(context: Any, ended: str) -> str:
    """The call's final status: the code it was ended with, else how it ended (``ended``:
    "OK", "CANCELLED" for a call the client went away from, "UNKNOWN" for an exception)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # some grpc releases keep the number
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return str(c.name)
    return ended


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts each RPC by method and final status code, and times it. The method label
    only takes the names of registered methods (an unknown one is not counted), so the
    label set stays bounded whatever a client sends."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._timers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.lstrip("/")
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self.metrics.rpc_seconds.labels(method)
        rpcs = self.metrics.rpcs

        def done(context: Any, began: float, ended: str) -> None:
            timer.observe(time.perf_counter() - began)
            rpcs.labels(method, _code_name(context, ended)).inc()

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def call(request: Any, context: Any) -> Any:
                began, ended = time.perf_counter(), "UNKNOWN"
                try:
                    result = await inner(request, context)
                    ended = "OK"
                    return result
                except asyncio.CancelledError:
                    ended = "CANCELLED"
                    raise
                finally:
                    done(context, began, ended)

            if handler.unary_unary:
                return handler._replace(unary_unary=call)
            return handler._replace(stream_unary=call)
        inner_stream = handler.unary_stream or handler.stream_stream

        async def written(request: Any, context: Any) -> None:  # a handler that writes with context.write
            began, ended = time.perf_counter(), "UNKNOWN"
            try:
                await inner_stream(request, context)
                ended = "OK"
            except asyncio.CancelledError:
                ended = "CANCELLED"
                raise
            finally:
                done(context, began, ended)

        async def generated(request: Any, context: Any) -> Any:  # a handler that yields its responses
            began, ended = time.perf_counter(), "UNKNOWN"
            try:
                async for item in inner_stream(request, context):
                    yield item
                ended = "OK"
            except (asyncio.CancelledError, GeneratorExit):
                ended = "CANCELLED"
                raise
            finally:
                done(context, began, ended)

        stream = generated if inspect.isasyncgenfunction(inner_stream) else written
        if handler.unary_stream:
            return handler._replace(unary_stream=stream)
        return handler._replace(stream_stream=stream)


async def metrics_off(request: Any) -> Any:
    """``GET /metrics`` where ``metrics = false``: 404 saying so."""
    from outrider.errors import NotFound

    raise NotFound("metrics are off on this scheduler (metrics = false, or --metrics off)")


async def serve_metrics(metrics: Metrics, request: Any) -> Any:
    """``GET /metrics`` on the scheduler's HTTP server (:mod:`scheduler.web.server`), on the event loop."""
    from aiohttp import web

    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})
