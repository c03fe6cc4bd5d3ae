"""A separate process that asks a scheduler's health service, every 50 ms, how it is.

Run as ``python -m tests.helpers.health_probe ADDRESS CA CERT KEY STOP_FILE OUT_FILE``:
until STOP_FILE exists it calls ``Health.Check`` with a 1 s deadline and records how
long each answer took; then it writes ``{"n", "max_s", "failures"}`` as JSON to
OUT_FILE. A process of its own, so that what the test itself does (building a big
pipeline holds its interpreter) never delays the probe and skews the figures.
"""

from __future__ import annotations

import json
import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.tls import channel_credentials


def main(address: str, ca: str, cert: str, key: str, stop_file: str, out_file: str) -> None:
    channel = grpc.secure_channel(address, channel_credentials(ca, cert, key))
    stub = health_pb2_grpc.HealthStub(channel)
    n, worst, failures = 0, 0.0, []
    while not os.path.exists(stop_file):
        t0 = time.monotonic()
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            if resp.status != health_pb2.HealthCheckResponse.SERVING:
                failures.append(f"status {resp.status}")
        except grpc.RpcError as exc:
            failures.append(f"{exc.code().name}: {exc.details()}")
        took = time.monotonic() - t0
        n, worst = n + 1, max(worst, took)
        time.sleep(max(0.0, 0.05 - took))
    channel.close()
    with open(out_file, "w") as fh:
        json.dump({"n": n, "max_s": worst, "failures": failures}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:7])
