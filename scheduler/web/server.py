"""The scheduler's HTTP server (aiohttp, in the scheduler's event loop): the read-only dashboard,
its JSON under ``/api/``, and room for ``/metrics`` (:meth:`HttpServer.add_route`).

Who is looking (``http_listen``, docs/dashboard.md):

- bound to a loopback address (127.0.0.0/8, ::1, localhost): plain HTTP, and the viewer is the
  local operator, who sees every run (reach it from elsewhere through an SSH tunnel);
- bound anywhere else: HTTPS with the scheduler's certificate, a client certificate from our CA
  required at the handshake, then checked on every request as the gRPC interceptor checks it
  (``scheduler/svid.py``: the SVID rules against the current CA bundle; the SPIFFE ID's trust
  domain): an admin sees every run, a submitter only its own (another's answers 404, as one
  that does not exist), an agent nothing (403). A SIGHUP reload of the TLS files
  (``scheduler/tlsreload.py``) reaches new handshakes here too.

A standby (docs/ha.md) answers every page with 503 and which replica leads. Every request is
bounded: paths it does not know are 404, malformed ids 400, no body is read, only GET and HEAD
exist, and what could be slow (a log file) is read on a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from outrider.config import parse_address
from outrider.errors import ConfigError, InvalidArgument, NotFound, OutriderError
from outrider.pki import identity_from_pem
from scheduler import svid
from scheduler.core.engine import Engine
from scheduler.core.model import Run, Task
from scheduler.core.stagemetrics import StageMetrics
from scheduler.logs import HEADER_BYTES, LogStore
from scheduler.tlsreload import CERT_FILE, KEY_FILE, Material, TlsMaterial
from scheduler.web import data, pages

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: The most stage-metric rows of a run a task page reads (outrider.metrics; every task's, then filtered).
STAGE_METRICS_ROWS = 5000
#: The log tail returns at most this many bytes of output per request.
LOG_CHUNK = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Who makes the request (set by the guard before any handler runs).
VIEWER = web.RequestKey("viewer", data.Viewer)

SECURITY_HEADERS = {
    # No inline script or style, nothing from elsewhere: a name that slipped through escaping still runs nothing.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header: ``[::1]:7480`` -> ``::1``, ``127.0.0.1:7480`` -> ``127.0.0.1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0]


def tls_context(pki_dir: Path, m: Material) -> ssl.SSLContext:
    """HTTPS that requires a client certificate from one of the CAs in ``m``'s bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=m.ca_pem.decode())
    ctx.load_cert_chain(pki_dir / CERT_FILE, pki_dir / KEY_FILE)
    return ctx


class HttpServer:
    """``listen`` is HOST:PORT (port 0: a free one, see :attr:`address`)."""

    def __init__(self, listen: str, tls: TlsMaterial, trust_domain: str, logs: LogStore) -> None:
        host, port = parse_address(listen)
        self.host, self.port = host.strip("[]"), port
        self.listen = listen
        self.loopback = is_loopback(self.host)
        self.tls = tls
        self.domain = trust_domain
        self.logs = logs
        self.engine: Engine | None = None  #: set once this replica leads; None: a standby
        #: a standby: the leader's advertised address, as the leader row says ("": none known)
        self.leader_hint: Callable[[], str] = lambda: ""
        self.address = ""
        self._extra: list[tuple[str, Handler]] = []
        self._runner: web.AppRunner | None = None
        self._ctx: ssl.SSLContext | None = None

    def add_route(self, path: str, handler: Handler) -> None:
        """Serve GET ``path`` with ``handler`` too (``/metrics``); before :meth:`start`. The access
        rules apply to it as to the dashboard (the handler may call :meth:`viewer`)."""
        self._extra.append((path, handler))

    def serve(self, engine: Engine) -> None:
        """This replica leads: the dashboard reads ``engine`` from now on."""
        self.engine = engine

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        app = web.Application(middlewares=[self._guard], client_max_size=4096, handler_args={"max_field_size": 8190})
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/runs/{run_id}", self.run_page)
        r.add_get("/runs/{run_id}/tasks/{task}", self.task_page)
        r.add_get("/artifacts/{digest}", self.lineage_page)
        r.add_get("/static/{name}", self.static)
        r.add_get("/favicon.ico", self.favicon)
        r.add_get("/api/overview", self.api_overview)
        r.add_get("/api/agents", self.api_agents)
        r.add_get("/api/runs", self.api_runs)
        r.add_get("/api/runs/{run_id}", self.api_run)
        r.add_get("/api/runs/{run_id}/tasks/{task}", self.api_task)
        r.add_get("/api/runs/{run_id}/tasks/{task}/log", self.api_log)
        r.add_get("/api/artifacts/{digest}/lineage", self.api_lineage)
        for path, handler in self._extra:
            r.add_get(path, handler)
        if not self.loopback:
            self._ctx = tls_context(self.tls.pki_dir, self.tls.current)
            self.tls.listeners.append(self._reload)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ctx, backlog=128, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"http_listen {self.listen}: cannot bind: {exc.strerror or exc}") from None
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        scheme = "http" if self.loopback else "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{scheme}://{host}:{port}"
        how = "loopback: the local operator sees every run" if self.loopback else "mTLS: client certificates required"
        log.info("dashboard serving on %s (%s)", self.address, how)
        return self.address

    def _reload(self, m: Material) -> None:
        """After a SIGHUP reload: new handshakes get the new certificate and trust the new bundle
        (a CA dropped from it is refused per request by the SVID check, which reads the bundle now)."""
        if self._ctx is None:
            return
        try:
            self._ctx.load_cert_chain(self.tls.pki_dir / CERT_FILE, self.tls.pki_dir / KEY_FILE)
            self._ctx.load_verify_locations(cadata=m.ca_pem.decode())
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("dashboard TLS not reloaded, keeping the previous certificate: %s", exc)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ who is looking

    def viewer(self, request: web.Request) -> data.Viewer:
        """Who makes ``request``; raises :class:`Refused` (401/403) saying why not allowed."""
        if self.loopback:
            # DNS rebinding: a page from elsewhere whose name a resolver points at 127.0.0.1 would be
            # let in as the operator; a browser sends that name as Host, so only loopback names pass.
            if not is_loopback(host_name(request.host or "")):
                raise Refused(403, f"Host {(request.host or '')[:100]!r} is not a loopback name (use 127.0.0.1)")
            return data.Viewer("local operator (loopback)", "operator")
        transport = request.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            raise Refused(401, "a client certificate from the scheduler's CA is required")
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
        try:
            svid.check(pem, self.tls.ca_pem)
            ident = identity_from_pem(pem)
        except svid.SvidError as exc:
            raise Refused(401, f"client certificate refused: {exc}") from None
        except Exception as exc:
            raise Refused(401, f"client certificate rejected: {exc}") from None
        if ident.trust_domain != self.domain:
            raise Refused(401, f"identity {ident.spiffe_id} is not in trust domain {self.domain}")
        if ident.role not in ("admin", "submitter"):
            raise Refused(403, f"{ident.spiffe_id} (role {ident.role}) may not view the dashboard")
        return data.Viewer(ident.spiffe_id, ident.role, ident.spiffe_id)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        api = request.path.startswith("/api/")
        try:
            if request.path.startswith("/static/") or request.path == "/favicon.ico":
                resp = await handler(request)
            else:
                request[VIEWER] = self.viewer(request)
                if self.engine is None and request.path not in {p for p, _ in self._extra}:
                    leader = self.leader_hint()
                    where = f"the leader is {leader} (its gRPC address)" if leader else "no leader is known yet"
                    raise Refused(503, f"this scheduler is a standby (docs/ha.md); {where}")
                resp = await handler(request)
        except Refused as exc:
            resp = self._error(exc.status, str(exc), api)
        except InvalidArgument as exc:
            resp = self._error(400, str(exc), api)
        except NotFound as exc:
            resp = self._error(404, str(exc), api)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = self._error(exc.status, exc.reason, api)
        except OutriderError as exc:
            log.warning("dashboard request %s failed: %s", request.path[:200], exc)
            resp = self._error(500, "the scheduler could not answer this request", api)
        except Exception:
            log.exception("dashboard request %s failed", request.path[:200])
            resp = self._error(500, "the scheduler could not answer this request", api)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    @staticmethod
    def _error(status: int, message: str, api: bool) -> web.Response:
        message = message[:1024]
        if api:
            return web.json_response({"error": message}, status=status)
        titles = {400: "Bad request", 401: "Certificate required", 403: "Forbidden", 404: "Not found"}
        title = titles.get(status, "Standby" if status == 503 else "Error")
        return web.Response(text=pages.message_page(title, message), status=status, content_type="text/html")

    # ------------------------------------------------------------------ pages

    @property
    def _engine(self) -> Engine:
        assert self.engine is not None  # the guard answered 503 on a standby
        return self.engine

    @staticmethod
    def _html(text: str) -> web.Response:
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    @staticmethod
    def _json(value: Any) -> web.Response:
        return web.json_response(value, dumps=lambda v: json.dumps(v, separators=(",", ":")))

    def _task(self, request: web.Request) -> tuple[Run, Task]:
        m = request.match_info
        return data.visible_task(self._engine, request[VIEWER], m["run_id"], m["task"])

    async def index(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        return self._html(pages.index(viewer, data.agents(self._engine, viewer), data.runs(self._engine, viewer)))

    async def run_page(self, request: web.Request) -> web.Response:
        run = data.visible_run(self._engine, request[VIEWER], request.match_info["run_id"])
        return self._html(pages.run_page(request[VIEWER], data.run_detail(run)))

    async def task_page(self, request: web.Request) -> web.Response:
        run, t = data.visible_task(
            self._engine, request[VIEWER], request.match_info["run_id"], request.match_info["task"]
        )
        detail = data.task_detail(self._engine, run, t)
        rows, _ = await StageMetrics(self._engine.journal).read(run.run_id, STAGE_METRICS_ROWS)
        detail["metrics"] = [
            {"attempt": m.attempt, "name": m.name, "value": m.value, "step": m.step, "count": m.count}
            for m in rows
            if m.task == t.name
        ]
        return self._html(pages.task_page(request[VIEWER], detail))

    async def lineage_page(self, request: web.Request) -> web.Response:
        return self._html(pages.lineage_page(request[VIEWER], self._lineage(request)))

    def _lineage(self, request: web.Request) -> dict[str, Any]:
        down = request.query.get("down", "") not in ("", "0")
        return data.lineage(self._engine, request[VIEWER], request.match_info["digest"], down)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        types = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
        if name not in types:
            raise NotFound(f"no file {name[:80]!r}")
        return web.Response(body=(STATIC / name).read_bytes(), content_type=types[name], charset="utf-8")

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)  # browsers ask; there is none

    # ------------------------------------------------------------------ JSON

    async def api_overview(self, request: web.Request) -> web.Response:
        v = request[VIEWER]
        return self._json({"agents": data.agents(self._engine, v), "runs": data.runs(self._engine, v)})

    async def api_agents(self, request: web.Request) -> web.Response:
        return self._json(data.agents(self._engine, request[VIEWER]))

    async def api_runs(self, request: web.Request) -> web.Response:
        return self._json(data.runs(self._engine, request[VIEWER]))

    async def api_run(self, request: web.Request) -> web.Response:
        run = data.visible_run(self._engine, request[VIEWER], request.match_info["run_id"])
        return self._json(data.run_detail(run))

    async def api_task(self, request: web.Request) -> web.Response:
        run, t = data.visible_task(
            self._engine, request[VIEWER], request.match_info["run_id"], request.match_info["task"]
        )
        return self._json(data.task_detail(self._engine, run, t))

    async def api_lineage(self, request: web.Request) -> web.Response:
        return self._json(self._lineage(request))

    async def api_log(self, request: web.Request) -> web.Response:
        """One attempt's log from ``offset`` (-1: its last 64 KiB); read on a worker thread."""
        run, t = data.visible_task(
            self._engine, request[VIEWER], request.match_info["run_id"], request.match_info["task"]
        )
        attempt = _int_arg(request, "attempt", t.attempts, 0, max(t.attempts, 0))
        offset = _int_arg(request, "offset", -1, -1, 1 << 50)
        finished = t.terminal
        lines: list[tuple[float, str, bytes]] = []
        asked, skipped = offset, False
        if attempt:
            lines, offset = await asyncio.to_thread(self.logs.tail, run.run_id, t.name, attempt, offset, LOG_CHUNK)
            skipped = asked < 0 and offset - sum(HEADER_BYTES + len(d) for _, _, d in lines) > 0
        return self._json(
            {
                "attempt": attempt,
                "latest": t.attempts,
                "offset": offset,
                "finished": finished,
                "skipped": skipped,
                "lines": [{"ts": ts, "stream": s, "text": d.decode("utf-8", "replace")} for ts, s, d in lines],
            }
        )


def _int_arg(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be from {low} to {high}, got {value}")
    return value
