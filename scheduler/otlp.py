"""Trace export over OTLP (OpenTelemetry), optional and off by default.

``otlp_endpoint`` (``--otlp-endpoint``) names a collector (``http://HOST:4317``, OTLP over
gRPC); then every span the scheduler records (:mod:`scheduler.core.tracing`) is also sent
there once it has ended: an attempt's spans when its completion is durable, the run's root
span with the completion that ends the run. The ``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp`` packages are the ``otel`` extra (``pip install
'outrider[otel]'``), imported only here and only when an endpoint is set; without them a
scheduler asked to export refuses to start, saying what to install.

``tracing`` (``--tracing on|off``) is checked here too: off records no spans at all (and
exports none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from outrider.errors import ConfigError
from scheduler.core.tracing import Span

log = logging.getLogger(__name__)

SERVICE = "outrider-scheduler"
_INSTALL = "pip install 'outrider[otel]' (opentelemetry-sdk and opentelemetry-exporter-otlp)"


def check_options(merged: dict[str, Any], source: str) -> None:
    """``tracing`` (true/false, or on/off from the flag) and ``otlp_endpoint``, checked in place;
    an endpoint without the OpenTelemetry packages is a ConfigError saying what to install."""
    switch = {"on": True, "off": False, True: True, False: False}
    if not isinstance(merged["tracing"], (str, bool)) or merged["tracing"] not in switch:
        raise ConfigError(f"{source}: tracing must be true or false (--tracing on|off), got {merged['tracing']!r}")
    merged["tracing"] = switch[merged["tracing"]]
    endpoint = merged["otlp_endpoint"]
    if not isinstance(endpoint, str):
        raise ConfigError(f"{source}: otlp_endpoint must be a URL string like http://127.0.0.1:4317 (empty: none)")
    if endpoint:
        if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 1024:
            raise ConfigError(f"{source}: otlp_endpoint must be an http:// or https:// URL, got {endpoint[:80]!r}")
        if not merged["tracing"]:
            raise ConfigError(f"{source}: otlp_endpoint exports traces, but tracing is off")
        missing = available()
        if missing:
            raise ConfigError(f"{source}: otlp_endpoint is set but {missing} is not installed: {_INSTALL}")


def available() -> str:
    """'' if the OpenTelemetry SDK and the OTLP exporter can be imported, else the missing module."""
    for module, package in (
        ("opentelemetry.sdk.trace", "opentelemetry-sdk"),
        ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "opentelemetry-exporter-otlp"),
    ):
        try:
            __import__(module)
        except ImportError:
            return package
    return ""


def to_otel(spans: Sequence[Span], resource: Any = None) -> list[Any]:
    """Our spans as OpenTelemetry ``ReadableSpan`` objects (ended spans only; W3C ids kept)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

    resource = resource if resource is not None else Resource.create({"service.name": SERVICE})
    out = []
    for s in spans:
        if not s.end:
            continue
        tid = int(s.trace_id, 16)
        ctx = SpanContext(tid, int(s.span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent = None
        if s.parent_span_id:
            parent = SpanContext(
                tid, int(s.parent_span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
            )
        attrs: dict[str, Any] = {f"outrider.{k}": v for k, v in s.attributes.items()}
        if s.task:
            attrs.update({"outrider.task": s.task, "outrider.attempt": s.attempt})
        if s.agent:
            attrs["outrider.agent"] = s.agent
        out.append(
            ReadableSpan(
                name=s.name,
                context=ctx,
                parent=parent,
                resource=resource,
                attributes=attrs,
                kind=SpanKind.INTERNAL,
                start_time=int(s.start * 1e9),
                end_time=int(s.end * 1e9),
            )
        )
    return out


class Exporter:
    """The tracer's sink: spans converted and handed to a batching OTLP exporter (its own
    thread: the event loop never waits on the collector)."""

    def __init__(self, endpoint: str, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        self._resource = Resource.create({"service.name": SERVICE})
        self._processor = BatchSpanProcessor(exporter)
        log.info("exporting traces over OTLP to %s", endpoint)

    def __call__(self, spans: list[Span]) -> None:
        for span in to_otel(spans, self._resource):
            self._processor.on_end(span)

    def close(self) -> None:
        """Send what is batched (bounded), then stop."""
        self._processor.force_flush(5000)
        self._processor.shutdown()
