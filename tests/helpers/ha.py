"""Several scheduler replicas on one PostgreSQL, for the high-availability tests and the
failover benchmark (docs/ha.md).

``Replicas`` starts each ``outrider-scheduler`` on its own free port and state dir, all on one
database and one shared artifact and log directory; ``leader()`` asks each replica's health
service which one serves the control service; ``stop()`` ends every process, even after a
failure (SIGCONT first, for one the test paused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.localcluster import Daemon, LocalCluster
from outrider.tls import channel_credentials
from tests.helpers.pgserver import PgServer, free_port

CONTROL = "outrider.v1.ControlService"


class Replicas:
    def __init__(self, cluster: LocalCluster, pg: PgServer, dbname: str, shared: Path, count: int = 3) -> None:
        self.cluster = cluster
        self.pg = pg
        self.uri = pg.uri(dbname)
        self.shared = shared
        self.ports = [free_port() for _ in range(count)]
        self.http_ports = [free_port() for _ in range(count)]  # each replica's dashboard and /metrics
        self.daemons: dict[int, Daemon] = {}
        cluster.init_pki()
        self.ca, self.cert, self.key = (str(p) for p in cluster.issue("admin", "ha-probe"))
        self._channels: dict[int, grpc.Channel] = {}

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, i: int) -> Daemon:
        port = self.ports[i]
        argv = [
            sys.executable, "-m", "scheduler.main",
            "--listen", f"127.0.0.1:{port}",
            "--state-dir", str(self.cluster.root / f"scheduler-{i}"),
            "--pki-dir", str(self.cluster.pki),
            "--database", self.uri,
            "--artifact-dir", str(self.shared / "artifacts"),
            "--log-dir", str(self.shared / "logs"),
            "--lease-ttl", self.cluster.lease_ttl,
            "--heartbeat-interval", self.cluster.heartbeat_interval,
            "--http-listen", f"127.0.0.1:{self.http_ports[i]}",
        ]  # fmt: skip
        env = {**self.cluster.env, "PGPASSWORD": self.pg.password}
        d = Daemon(f"scheduler-{i}", argv, self.cluster.root / "logs" / f"scheduler-{i}.log", env)
        d.start()
        self.daemons[i] = d
        return d

    def http(self, i: int, path: str) -> tuple[int, str]:
        """GET ``path`` from replica ``i``'s HTTP server (loopback): status and body."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self, i: int, service: str = CONTROL) -> int | None:
        """The health status of ``service`` (default: the control service) on replica ``i``
        (None: no answer)."""
        ch = self._channels.get(i)
        if ch is None:
            creds = channel_credentials(self.ca, self.cert, self.key)
            ch = self._channels[i] = grpc.secure_channel(f"127.0.0.1:{self.ports[i]}", creds)
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
        except grpc.RpcError:
            return None
        return int(resp.status)

    def leader(self, timeout: float = 30.0, exclude: tuple[int, ...] = ()) -> int:
        """The replica serving the control service (polled until one does, past ``timeout``: an error)."""
        deadline = time.monotonic() + timeout
        while True:
            serving = [
                i
                for i, d in self.daemons.items()
                if i not in exclude and d.alive() and self.status(i) == health_pb2.HealthCheckResponse.SERVING
            ]
            if len(serving) == 1:
                return serving[0]
            assert len(serving) <= 1, f"two replicas serve at once: {serving}"
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {d.name}\n{d.tail(15)}" for d in self.daemons.values())
                raise TimeoutError(f"no leader after {timeout:g}s\n{tails}")
            time.sleep(0.02)

    def stop(self) -> None:
        for ch in self._channels.values():
            ch.close()
        for d in self.daemons.values():
            if d.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(d.pid, signal.SIGCONT)
            d.stop(timeout=10)
