"""Plain regression tests for what tests/integration/test_fuzz_servicers.py found, each
against a real scheduler, so they run with every suite (the fuzz test is ``slow``).

1. ``grpc.health.v1.Health/List`` is in RULES (any role) but the aio health servicer of
   grpcio-health-checking does not implement it: every call was ``UNIMPLEMENTED`` "Unexpected
   <class 'NotImplementedError'>" with a traceback in the log. Now it lists every service.
2. On the enrolment port the health service was passed through unparsed: bytes that are not a
   ``HealthCheckRequest`` were ``UNKNOWN`` "Unexpected <class '...DecodeError'>" with a traceback
   in the log. Now ``INVALID_ARGUMENT`` naming the message, as on the main port.
"""

from __future__ import annotations

import re

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(90)

SERVING = health_pb2.HealthCheckResponse.SERVING


def _raw(channel: grpc.Channel, method: str, payload: bytes, streaming: bool = False) -> tuple[grpc.StatusCode, str]:
    kw = {"request_serializer": None, "response_deserializer": None}
    try:
        if streaming:
            call = channel.unary_stream(method, **kw)(payload, timeout=10)
            next(call)
            call.cancel()
        else:
            channel.unary_unary(method, **kw)(payload, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _no_tracebacks(cluster: LocalCluster) -> None:
    log = (cluster.root / "logs" / "scheduler.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:1500]


def test_health_list_answers_every_service(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    with cluster.client("viewer") as client:
        stub = health_pb2_grpc.HealthStub(client._channel)
        got = stub.List(health_pb2.HealthListRequest(), timeout=10)
    statuses = {name: s.status for name, s in got.statuses.items()}
    assert statuses[""] == SERVING and statuses["outrider.v1.AuditService"] == SERVING, statuses
    assert statuses["outrider.v1.ControlService"] == SERVING, statuses
    _no_tracebacks(cluster)


def test_undecodable_health_requests_on_the_enrolment_port_are_invalid_argument(cluster: LocalCluster) -> None:
    cluster.start_scheduler(["--enroll-listen", "127.0.0.1:0"])
    log = cluster.root / "logs" / "scheduler.log"
    address = wait_for(
        lambda: (re.findall(r"enrolment serving on (\S+)", log.read_text()) or [None])[-1], 20, "the enrolment port"
    )
    creds = grpc.ssl_channel_credentials(root_certificates=(cluster.pki / "ca.crt").read_bytes())
    with grpc.secure_channel(address, creds) as channel:
        for method, streaming in (("Check", False), ("Watch", True)):
            code, details = _raw(channel, f"/grpc.health.v1.Health/{method}", b"\x00", streaming)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
            assert details == "request is not a valid grpc.health.v1.HealthCheckRequest message", details
        # A good request is still answered.
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
        first = next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10))
        assert first.status == SERVING
    _no_tracebacks(cluster)
