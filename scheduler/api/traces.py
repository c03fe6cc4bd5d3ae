"""A run's trace on the wire (``GetTrace``): :class:`~scheduler.core.tracing.Span` to protobuf.

Beside :mod:`scheduler.api.wire` (which is at its size limit), as it is one message's conversion.
"""

from __future__ import annotations

from collections.abc import Sequence

from outrider.v1 import control_pb2
from scheduler.core.tracing import Span


def trace_to_proto(run_id: str, trace_id: str, spans: Sequence[Span]) -> control_pb2.GetTraceResponse:
    return control_pb2.GetTraceResponse(
        run_id=run_id,
        trace_id=trace_id,
        spans=[
            control_pb2.TraceSpan(
                span_id=s.span_id,
                parent_span_id=s.parent_span_id,
                name=s.name,
                start=s.start,
                end=s.end,
                task=s.task,
                attempt=s.attempt,
                agent=s.agent,
                attributes=s.attributes,
            )
            for s in spans
        ],
    )
