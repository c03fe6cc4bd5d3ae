"""The health service's List (the aio servicer of grpcio-health-checking lacks it)."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from scheduler.api.health import HealthServicer


def test_list_answers_every_service_and_follows_changes() -> None:
    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        h = HealthServicer()
        await h.set("outrider.v1.AuditService", health_pb2.HealthCheckResponse.SERVING)
        first = await h.List(health_pb2.HealthListRequest(), None)
        await h.set("outrider.v1.AuditService", health_pb2.HealthCheckResponse.NOT_SERVING)
        await h.enter_graceful_shutdown()
        second = await h.List(health_pb2.HealthListRequest(), None)
        return ({k: v.status for k, v in first.statuses.items()}, {k: v.status for k, v in second.statuses.items()})

    first, second = asyncio.run(scenario())
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert first == {"": serving, "outrider.v1.AuditService": serving}
    assert second == {"": not_serving, "outrider.v1.AuditService": not_serving}
