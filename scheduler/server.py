"""Wires the scheduler together: storage, engine, gRPC (mTLS), health, reflection.

The composition root: the only module that knows every part.

``Scheduler.run()`` owns the lifecycle and signals; ``Engine.tick()`` does the
time-driven work and is what tests drive with a fixed clock.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from outrider.config import parse_address
from outrider.errors import ConfigError, OutriderError
from outrider.statedir import StateDirLock
from outrider.tls import SERVER_OPTIONS
from outrider.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    artifact_pb2,
    artifact_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
)
from scheduler import otlp
from scheduler.api.agent import AgentServicer
from scheduler.api.artifact import ArtifactServicer
from scheduler.api.audit import AuditServicer, caller_id
from scheduler.api.control import ControlServicer
from scheduler.api.health import HealthServicer
from scheduler.api.identity import EnrollServicer, IdentityServicer
from scheduler.api.standby import StandbyGate
from scheduler.artifacts import ArtifactStore
from scheduler.auth import AuthInterceptor, EnrollGate
from scheduler.core.alerts import AlertRules, Alerts
from scheduler.core.audit import Verdict
from scheduler.core.engine import Engine
from scheduler.core.zones import ZoneRules
from scheduler.enrolment import Enrolment
from scheduler.leader import Leadership, SingleNode
from scheduler.logs import LogStore
from scheduler.metrics import Metrics, metrics_off, serve_metrics
from scheduler.metrics_collect import HaStatus, StateCollector
from scheduler.openstreams import watch_expiry
from scheduler.signer import Signer
from scheduler.store.select import is_postgres, open_store
from scheduler.tlsreload import TlsMaterial

if TYPE_CHECKING:
    from scheduler.web.server import HttpServer

log = logging.getLogger(__name__)

#: Where the dashboard and /metrics are served when http_listen is not set ("auto"): loopback only.
DEFAULT_HTTP_LISTEN = "127.0.0.1:7480"

SERVICE_NAMES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
    artifact_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
)
#: Served alone (with health) on the enrolment port: TLS that asks for no client certificate.
ENROLL_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["EnrollService"].full_name
#: The enrolment port reads requests of at most this many bytes, a few at a time.
ENROLL_MAX_REQUEST = 64 * 1024
ENROLL_MAX_CALLS = 16
#: Its health entry says whether the audit log's chain is intact: NOT_SERVING from the moment a
#: verification (at start, or `outrider audit verify`) finds it broken; the service still answers.
AUDIT_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
TICK_S = 0.05


@dataclass
class SchedulerConfig:
    listen: str = "0.0.0.0:7443"
    state_dir: str = "/var/lib/outrider-scheduler"
    pki_dir: str = "/etc/outrider/pki"
    ready_file: str = ""
    lease_ttl: float = 15.0
    heartbeat_interval: float = 3.0
    placement_wait: float = 5.0  # delay scheduling: how long a task may wait for a better agent
    max_queue_depth: int = 0  # admission control: refuse submissions past this many open tasks
    infeasible_timeout: float = 600.0  # fail a task no agent can run after this long
    max_clock_offset: float = 1.0  # an agent whose |offset| + uncertainty exceeds this is clock_suspect
    max_pipeline_tasks: int = 100_000  # refuse a pipeline (plan, submit) with more tasks
    max_pipeline_bytes: int = 32 << 20  # refuse a pipeline whose encoded spec is larger
    log_level: str = "info"
    log_format: str = "auto"  # auto (json unless stderr is a terminal), json or text (outrider.logfmt)
    tracing: bool = True  # record each run's trace (scheduler.core.tracing); false: none
    otlp_endpoint: str = ""  # export traces over OTLP/gRPC to this collector (needs outrider[otel]); empty: none
    #: agent name -> the zones the configuration gives it (``[agent_zones]``); its certificate's win
    agent_zones: dict[str, list[str]] = field(default_factory=dict)
    require_attested_zones: bool = False  # refuse zones only the agent itself declares
    enroll_listen: str = ""  # HOST:PORT of the enrolment port (join tokens); empty: no enrolment
    agent_cert_ttl: float = 24 * 3600.0  # lifetime of the agent certificates this scheduler signs
    #: the store: empty (SQLite at STATE_DIR/outrider.db), an absolute SQLite path, or a PostgreSQL URI
    database: str = ""
    database_password_file: str = ""  # PostgreSQL: the password's file (else PGPASSWORD, ~/.pgpass)
    #: the content-addressed artifact store; shared by the replicas of high availability (docs/ha.md)
    artifact_dir: str = ""  # empty: STATE_DIR/artifacts
    log_dir: str = ""  # stage logs; shared like artifact_dir; empty: STATE_DIR/logs
    #: HOST:PORT the other replicas name as the leader's; empty: the listen address (hostname if 0.0.0.0)
    advertise: str = ""
    #: HOST:PORT of the dashboard's HTTP server (scheduler/web, docs/dashboard.md); empty: none. Loopback:
    #: plain HTTP for the local operator; any other address: HTTPS requiring a client certificate of our CA.
    #: "auto" (the default): DEFAULT_HTTP_LISTEN if that port is free, else none (a warning says so)
    http_listen: str = "auto"
    #: Prometheus metrics on the HTTP server's /metrics (docs/operations.md); false: none are kept
    metrics: bool = True
    #: an agent's state dir disk is "nearly full" past this fraction used, or under alert_disk_free bytes free
    alert_disk_used: float = 0.9
    alert_disk_free: int = 1 << 30


def server_options(cfg: SchedulerConfig) -> list[tuple[str, int]]:
    """gRPC server options: the shared keepalive settings, plus

    * no ``SO_REUSEPORT`` (gRPC sets it by default): a second scheduler on a port in use
      must fail to start, not take half the calls;
    * a receive bound just above the largest pipeline allowed, so an oversized request is
      refused before it is even parsed (parsing happens on the event loop).
    """
    receive = max(cfg.max_pipeline_bytes + (1 << 20), 16 << 20)
    options = [(k, v) for k, v in SERVER_OPTIONS if k != "grpc.max_receive_message_length"]
    return [*options, ("grpc.max_receive_message_length", receive), ("grpc.so_reuseport", 0)]


def address_in_use(listen: str) -> bool:
    """Whether ``listen`` (HOST:PORT) is bound by another socket right now."""
    try:
        host, port = parse_address(listen)
    except ValueError:
        return False
    if port == 0:
        return False
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def bind(server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials) -> int:
    """Bind ``listen``; the port bound, or ConfigError saying why not."""
    try:
        port = server.add_secure_port(listen, creds)
    except RuntimeError as exc:
        port, why = 0, str(exc)
    else:
        why = "the address is invalid or not available here"
    if port == 0:
        if address_in_use(listen):
            why = "the address is already in use (another scheduler, or another program, listens there)"
        raise ConfigError(f"listen {listen}: cannot bind: {why}")
    return port


def advertised(host: str, port: int) -> str:
    """The address other replicas name as this one's when it leads: the listen host, or this
    machine's name when it listens on every interface."""
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def trust_domain_of(pki_dir: Path) -> str:
    """The trust domain: from ``trust_domain`` beside the CA, else the scheduler cert."""
    marker = pki_dir / "trust_domain"
    if marker.exists():
        return marker.read_text().strip()
    from outrider.pki import identity_from_pem

    return identity_from_pem((pki_dir / "scheduler.crt").read_bytes()).trust_domain


class Scheduler:
    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.pki_dir = Path(cfg.pki_dir)
        for name in ("ca.crt", "scheduler.crt", "scheduler.key"):
            if not (self.pki_dir / name).is_file():
                raise ConfigError(f"pki_dir {self.pki_dir}: missing {name} (make it with `outrider pki init`)")
        #: ca.crt (a bundle during a CA rotation), scheduler.crt and .key, checked; reloaded on SIGHUP
        self.tls = TlsMaterial(self.pki_dir)
        # Before anything in the state dir is touched: one live scheduler per state dir.
        self.lock = StateDirLock(self.state_dir).acquire("scheduler")
        self.store = open_store(cfg.database, cfg.database_password_file, self.state_dir)
        self.artifacts = ArtifactStore(Path(cfg.artifact_dir) if cfg.artifact_dir else self.state_dir / "artifacts")
        self.logs = LogStore(Path(cfg.log_dir) if cfg.log_dir else self.state_dir / "logs")
        self.signer = Signer(self.pki_dir, trust_domain_of(self.pki_dir), cfg.agent_cert_ttl)
        if cfg.enroll_listen and not self.signer.available:
            raise ConfigError(
                f"enroll_listen {cfg.enroll_listen}: enrolment signs agent certificates, and the CA key "
                f"{self.signer.key_path} is missing (keep ca.key in pki_dir, or leave enroll_listen empty)"
            )
        self.tls.listeners.append(self._reload_signer)  # a CA rotation may bring a new ca.key
        self.leadership: Leadership | SingleNode = (
            Leadership(self.store, "") if is_postgres(cfg.database) else SingleNode()
        )
        self.enroll_server: grpc.aio.Server | None = None
        self.enroll_address = ""
        self.server: grpc.aio.Server | None = None
        self._expiry: asyncio.Future[None] | None = None
        self.health = HealthServicer()  # grpc's, with List
        self.http: HttpServer | None = None  # the dashboard (http_listen), started first: a standby serves it too
        self._observe()  # Prometheus metrics (scheduler/metrics.py) and alerts (scheduler/core/alerts.py)
        self.address = ""

    def _build_engine(self) -> None:
        """The engine and what needs it, built once this replica leads (it reads the store)."""
        cfg = self.cfg
        self.engine = Engine(
            self.store,
            lease_ttl=cfg.lease_ttl,
            heartbeat_interval=cfg.heartbeat_interval,
            placement_wait=cfg.placement_wait,
            max_queue_depth=cfg.max_queue_depth,
            infeasible_timeout=cfg.infeasible_timeout,
            max_clock_offset=cfg.max_clock_offset,
            artifact_exists=self.artifacts.exists,
            log_sink=self.logs,
            caller=caller_id,
            zone_rules=ZoneRules(
                {name: frozenset(z) for name, z in cfg.agent_zones.items()}, cfg.require_attested_zones
            ),
        )
        self.enrolment = Enrolment(self.engine, self.signer)
        # Traces (scheduler.core.tracing): the dispatcher's tracer records with the completions too.
        tracer = self.engine.reports.tracer = self.engine.dispatcher.tracer
        tracer.enabled = cfg.tracing  # (the bench compares throughput with it off)
        self._otlp = otlp.Exporter(cfg.otlp_endpoint) if cfg.otlp_endpoint else None
        tracer.sink = self._otlp
        self.alerts = Alerts(self.engine, AlertRules(cfg.alert_disk_used, cfg.alert_disk_free))
        if self.ha is not None:
            self.ha.leader = True
        if self.metrics is not None:
            self.metrics.add_state(StateCollector(self.engine, self.alerts, self.ha))

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        listen, standby = self.cfg.listen, None
        if self.cfg.http_listen:
            await self._start_http()
        if isinstance(self.leadership, Leadership):
            listen, standby = await self._stand_by()  # returns once this replica leads
        self.leadership.hold()
        self._build_engine()
        self.engine.load()  # the standby's listener still refuses calls meanwhile
        self.store.start(loop)
        self.engine.start(loop)
        if self.http is not None:
            self.http.serve(self.engine)
        if standby is not None:
            await standby.stop(grace=None)  # the port is free for the leader's server below
        domain = trust_domain_of(self.pki_dir)
        auth = AuthInterceptor(domain, lambda: self.tls.ca_pem, self.engine.revocations.refusal)
        self.tls.listeners.append(lambda m: auth.streams.recheck(m.ca_pem))  # a dropped CA's streams end
        self._expiry = asyncio.ensure_future(watch_expiry(auth.streams, lambda: self.tls.ca_pem))  # and expired ones
        rpcs = [self.metrics.interceptor()] if self.metrics is not None else []  # outermost: sees refusals too
        server = grpc.aio.server(interceptors=[*rpcs, auth], options=server_options(self.cfg))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(self.engine), server)
        control = ControlServicer(
            self.engine, max_pipeline_tasks=self.cfg.max_pipeline_tasks, max_pipeline_bytes=self.cfg.max_pipeline_bytes
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(control, server)
        artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(self.engine, self.artifacts), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(self.engine), server)
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(self.enrolment), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                AUDIT_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        creds = self.tls.server_credentials()  # new handshakes follow a reload (SIGHUP)
        port = bind(server, listen, creds)
        await server.start()
        self.server = server
        host = listen.rpartition(":")[0] or "0.0.0.0"
        self.address = f"{host}:{port}"
        if self.cfg.enroll_listen:
            await self._start_enrolment(port)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        intact = not self.engine.audit.broken  # as found at start (logged at ERROR if not)
        await self.health.set(
            AUDIT_SERVICE,
            health_pb2.HealthCheckResponse.SERVING if intact else health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        self.engine.audit.on_verdict(self._audit_health)
        self._write_ready()
        log.info("scheduler serving on %s (trust domain %s, state %s)", self.address, domain, self.state_dir)
        return self.address

    def _write_ready(self) -> None:
        if self.cfg.ready_file:
            tmp = f"{self.cfg.ready_file}.tmp"
            with open(tmp, "w") as fh:
                fh.write(self.address + "\n")
            os.replace(tmp, self.cfg.ready_file)  # atomic: readers never see half a line

    async def _stand_by(self) -> tuple[str, grpc.aio.Server]:
        """High availability (docs/ha.md): serve as a standby (health: the overall entry SERVING,
        the services NOT_SERVING; every other call refused naming the leader) until this replica
        wins the lead; returns the address to serve on as the leader (the same port) and the
        standby's server, which keeps refusing (naming this replica now) until it is stopped."""
        assert isinstance(self.leadership, Leadership)
        gate = StandbyGate()
        if self.http is not None:
            self.http.leader_hint = lambda: gate.leader
        server = grpc.aio.server(options=server_options(self.cfg))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_generic_rpc_handlers((gate,))
        port = bind(server, self.cfg.listen, self.tls.server_credentials())
        await server.start()
        host = self.cfg.listen.rpartition(":")[0] or "0.0.0.0"
        self.address = f"{host}:{port}"
        self.leadership.advertise = self.cfg.advertise or advertised(host, port)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("standing by on %s (advertised as %s)", self.address, self.leadership.advertise)
        try:
            await self.leadership.campaign(lambda leader: self._leader_seen(gate, leader))
        except BaseException:
            await server.stop(grace=None)
            raise
        gate.set_leader(self.leadership.advertise)  # until the state is loaded and this one serves
        return self.address, server

    async def _start_enrolment(self, scheduler_port: int) -> None:
        """The enrolment port: EnrollService and health only, over TLS that asks for no client
        certificate (grpc's ``require_client_auth=False`` sends no CertificateRequest at all, so
        one port cannot serve both: a client certificate would never reach the mTLS services).
        Its chain includes the CA, which a joining agent checks against its pin."""
        server = grpc.aio.server(
            interceptors=[EnrollGate()],
            options=[
                ("grpc.max_receive_message_length", ENROLL_MAX_REQUEST),
                ("grpc.max_send_message_length", 1 << 20),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=ENROLL_MAX_CALLS,
        )
        identity_pb2_grpc.add_EnrollServiceServicer_to_server(EnrollServicer(self.enrolment, scheduler_port), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        creds = self.tls.server_credentials(require_client_auth=False, chain_with_ca=True)  # follows SIGHUP too
        try:
            port = server.add_secure_port(self.cfg.enroll_listen, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            busy = address_in_use(self.cfg.enroll_listen)
            why = "the address is already in use" if busy else "the address is invalid or not available here"
            raise ConfigError(f"enroll_listen {self.cfg.enroll_listen}: cannot bind: {why}")
        await server.start()
        self.enroll_server = server
        self.enroll_address = f"{self.cfg.enroll_listen.rpartition(':')[0] or '0.0.0.0'}:{port}"
        await self.health.set(ENROLL_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("enrolment serving on %s (agent certificates last %gs)", self.enroll_address, self.cfg.agent_cert_ttl)

    def _observe(self) -> None:
        """Prometheus metrics, unless ``metrics = false``: the registry, the core's hooks, the
        store's commit times; leadership where high availability is on (a standby's too)."""
        self.ha = HaStatus() if isinstance(self.leadership, Leadership) else None
        self.metrics = Metrics() if self.cfg.metrics else None
        if self.metrics is None:
            Metrics.uninstall()
            return
        self.metrics.install()
        self.metrics.watch_store(self.store)
        self.metrics.add_state(StateCollector(None, None, self.ha))  # until this replica leads

    def _leader_seen(self, gate: StandbyGate, leader: str) -> None:
        """A standby heard who leads ("": no replica does): its refusals name it, and the
        standby-without-leader alert (a standby has no engine and writes nothing: a log line
        and a metric)."""
        gate.set_leader(leader)
        assert self.ha is not None
        if self.ha.leader_known and not leader:
            log.warning("alert standby_without_leader: no replica leads (this one keeps campaigning)")
            if self.metrics is not None:
                self.metrics.alerts_raised.labels("standby_without_leader").inc()
        elif leader and not self.ha.leader_known:
            log.info("alert standby_without_leader cleared: %s leads", leader)
        self.ha.leader_known = bool(leader)

    async def _start_http(self) -> None:
        """The dashboard's HTTP server (scheduler/web/server.py), in this event loop. On the default
        address (``http_listen = "auto"``) a port in use (another scheduler on this host) is a
        warning, not a reason to stop: only an address asked for must be served."""
        from scheduler.web.server import HttpServer  # aiohttp is imported only when asked for

        auto = self.cfg.http_listen == "auto"
        listen = DEFAULT_HTTP_LISTEN if auto else self.cfg.http_listen
        self.http = HttpServer(listen, self.tls, trust_domain_of(self.pki_dir), self.logs)
        # More routes (``/metrics``) are added here, before it starts: self.http.add_route(path, handler).
        m = self.metrics
        self.http.add_route("/metrics", functools.partial(serve_metrics, m) if m is not None else metrics_off)
        try:
            await self.http.start()
        except ConfigError as exc:
            if not auto:
                raise
            self.http = None
            log.warning('%s: no dashboard or /metrics (set http_listen to a free HOST:PORT, or "" for none)', exc)

    def _reload_signer(self, _: object) -> None:
        """After a TLS reload: enrolment and renewal sign with the CA key in pki_dir now (and send
        the new bundle); one that cannot be read leaves the signer as it was."""
        try:
            signer = Signer(self.pki_dir, self.signer.trust_domain, self.signer.ttl_s)
        except OutriderError as exc:
            log.error(
                "TLS reloaded, but enrolment and renewal keep signing with the CA key loaded before: %s "
                "(put the key of a CA in ca.crt in pki_dir as ca.key, then SIGHUP again)",
                exc,
            )
            return
        self.signer = signer
        if hasattr(self, "enrolment"):
            self.enrolment.signer = signer

    def _audit_health(self, v: Verdict) -> None:
        """The audit service's health entry follows each verification of the chain."""
        status = health_pb2.HealthCheckResponse.SERVING if v.ok else health_pb2.HealthCheckResponse.NOT_SERVING
        self._audit_status = asyncio.get_running_loop().create_task(self.health.set(AUDIT_SERVICE, status))

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP: read ca.crt, scheduler.crt and .key again; bad files keep the old ones (logged).
        loop.add_signal_handler(signal.SIGHUP, self.tls.reload)
        starting = asyncio.ensure_future(self.start())  # a standby waits here until it leads
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while standing by
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("stopping (a standby)")
            await self.stop()
            return
        stopping.cancel()
        starting.result()  # a failed start raises here
        ticker = asyncio.ensure_future(self._tick(stop))
        await stop.wait()
        log.info("stopping")
        ticker.cancel()
        await self.stop()

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.leadership.check()
            try:
                self.engine.tick()
                self.alerts.check()
            except Exception:
                log.exception("tick failed")
            await asyncio.sleep(TICK_S)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        await self.health.enter_graceful_shutdown()
        if self.enroll_server is not None:
            await self.enroll_server.stop(grace=1.0)
        if self.server is not None:
            await self.server.stop(grace=2.0)
        if self.http is not None:
            await self.http.stop()
        if hasattr(self, "engine"):  # (a standby that never led has none)
            self.engine.dispatcher.tracer.flush()  # commit spans' ends still waiting for a transaction
        self.store.close()
        exporter = getattr(self, "_otlp", None)
        if exporter is not None:
            exporter.close()
        self.leadership.close()  # after the last commit: a standby takes over from here
        self.lock.release()
