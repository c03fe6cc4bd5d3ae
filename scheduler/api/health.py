"""The standard health service (``grpc.health.v1``), with the ``List`` its aio servicer lacks.

``grpc_health.v1.health.aio.HealthServicer`` (grpcio-health-checking 1.85) implements
``Check`` and ``Watch`` but not ``List``, which the proto declares and ``RULES`` lets any
role call: gRPC answered ``UNIMPLEMENTED`` with "Unexpected <class 'NotImplementedError'>"
and logged a traceback on every call (found by tests/integration/test_fuzz_servicers.py).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

#: gRPC's health spec: ``List`` answers ``RESOURCE_EXHAUSTED`` past this many services.
MAX_LISTED = 100


class HealthServicer(health.aio.HealthServicer):
    """Check and Watch as gRPC's; List: every service's status (the overall entry ``""`` too)."""

    async def List(self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext) -> Any:
        statuses = dict(self._server_status)  # the base class's table, read only
        if len(statuses) > MAX_LISTED:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"over {MAX_LISTED} services; ask Check for one")
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )
