"""Authentication and authorization in one interceptor.

The TLS layer already refused any peer without a certificate from our CA. Here, on
every call, the peer's certificate is checked against the SPIFFE X.509-SVID rules
(:mod:`scheduler.svid`: one URI SAN, not a CA, key usage and EKU, signed by our CA
itself), its SPIFFE ID (``spiffe://<domain>/<role>/<name>``) against our trust domain,
then whether it names a revoked agent (``UNAUTHENTICATED``, carrying the metadata key
:data:`outrider.protocol.REVOKED_METADATA_KEY`; :mod:`scheduler.core.revocation`),
and its role against the RPC's row in :data:`RULES`, the one table of every RPC the
scheduler serves; an RPC not in it is refused (``PERMISSION_DENIED``). The identity is
then available to servicers via :func:`current_identity`, and each row names the
ownership check its servicer makes through :mod:`scheduler.api.access`.

The interceptor also parses every request itself (:func:`_parser`): bytes that are not the
RPC's request message are ``INVALID_ARGUMENT`` ("request is not a valid outrider.v1.X
message"), for unary and streaming RPCs alike, where gRPC would answer ``UNKNOWN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from outrider.errors import InvalidArgument
from outrider.pki import Identity
from outrider.protocol import REVOKED_METADATA_KEY
from outrider.tls import identity_from_auth_context
from scheduler import svid
from scheduler.openstreams import OpenCall, OpenStreams

log = logging.getLogger(__name__)

AGENT = frozenset({"agent"})
USERS = frozenset({"submitter", "admin"})
ADMIN = frozenset({"admin"})
ANY_ROLE = AGENT | USERS

# Ownership checks a row can name (what the servicer checks beyond the role, through
# scheduler/api/access.py; an admin passes every one of them).
NONE = "none"  #: the role is enough
LEASE = "lease"  #: an agent reports only on leases granted to the name in its certificate
SUBMITS = "submits"  #: the run it makes is recorded as the caller's
RUN = "run"  #: names a run: a submitter's own, else NOT_FOUND as if it did not exist
OWN_RUNS = "own runs"  #: lists a submitter's own runs, and counts the others'
SHARED = "shared"  #: agents are shared infrastructure: every user sees them whole
ARTIFACT = "artifact"  #: submitter: reachable from its runs; agent: its zones allow it
SELF = "self"  #: an agent's own certificate only: the identity is its peer certificate's, never the request's
TOKEN = "token"  #: no certificate: the join token in the request authorises it (scheduler.core.tokens)

#: Not a role of any certificate: a caller on the enrolment port, which asks for no client
#: certificate. Only rows with the TOKEN check name it, and only :class:`EnrollGate` serves them.
ENROLLING = frozenset({"enrolling"})


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC, and what the servicer checks beyond the role."""

    roles: frozenset[str]
    check: str = NONE


_A = "/outrider.v1.AgentService/"
_C = "/outrider.v1.ControlService/"
_F = "/outrider.v1.ArtifactService/"
#: Every RPC the scheduler serves -> (roles allowed, ownership check). Anything else is
#: refused; tests/unit/test_auth_rules.py checks every method of every service is here.
RULES: dict[str, Rule] = {
    _A + "Register": Rule(AGENT, LEASE),
    _A + "Heartbeat": Rule(AGENT, LEASE),
    _A + "Connect": Rule(AGENT, LEASE),
    _A + "PollTasks": Rule(AGENT, LEASE),
    _A + "ReportLogs": Rule(AGENT, LEASE),
    _A + "Complete": Rule(AGENT, LEASE),
    _A + "ReportCheckpoint": Rule(AGENT, LEASE),
    _C + "Plan": Rule(USERS),
    _C + "Submit": Rule(USERS, SUBMITS),
    _C + "SubmitAndWatch": Rule(USERS, SUBMITS),
    _C + "GetRun": Rule(USERS, RUN),
    _C + "ListRuns": Rule(USERS, OWN_RUNS),
    _C + "WatchRun": Rule(USERS, RUN),
    _C + "CancelRun": Rule(USERS, RUN),
    _C + "RetryRun": Rule(USERS, RUN),
    _C + "ListAgents": Rule(USERS, SHARED),
    _C + "GetLogs": Rule(USERS, RUN),
    _C + "Explain": Rule(USERS, RUN),
    _C + "DrainAgent": Rule(ADMIN),
    _C + "RevokeAgent": Rule(ADMIN),
    _C + "WatchEvents": Rule(USERS, RUN),  # a submitter: its own runs' events only
    _C + "Lineage": Rule(USERS, RUN),  # a submitter: through its own runs only
    _C + "Resolve": Rule(USERS, RUN),  # a submitter: its own runs' ids and artifacts only
    _C + "GetTrace": Rule(USERS, RUN),  # a run's trace (spans): its owner's, or an admin's
    _C + "GetStageMetrics": Rule(USERS, RUN),  # what stages recorded: each run named its owner's, or an admin's
    "/outrider.v1.AuditService/ListAudit": Rule(ADMIN),  # the audit log
    "/outrider.v1.AuditService/VerifyAudit": Rule(ADMIN),
    "/outrider.v1.IdentityService/CreateToken": Rule(ADMIN),  # join tokens
    "/outrider.v1.IdentityService/ListTokens": Rule(ADMIN),
    "/outrider.v1.IdentityService/RevokeToken": Rule(ADMIN),
    "/outrider.v1.IdentityService/RenewCertificate": Rule(AGENT, SELF),
    # Served only on the enrolment port (EnrollGate), never behind AuthInterceptor.
    "/outrider.v1.EnrollService/Enroll": Rule(ENROLLING, TOKEN),
    _F + "Upload": Rule(ANY_ROLE),  # content-addressed: the bytes are checked against their name
    _F + "Download": Rule(ANY_ROLE, ARTIFACT),
    _F + "Stat": Rule(ANY_ROLE, ARTIFACT),  # one the caller may not read is answered "absent"
    _F + "Probe": Rule(ANY_ROLE),  # filler bytes
    "/grpc.health.v1.Health/Check": Rule(ANY_ROLE),
    "/grpc.health.v1.Health/Watch": Rule(ANY_ROLE),
    "/grpc.health.v1.Health/List": Rule(ANY_ROLE),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule(ANY_ROLE),
}
_DENIED = Rule(frozenset())

_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("outrider_identity")


def current_identity() -> Identity:
    """The authenticated caller of the RPC being served."""
    return _identity.get()


def roles_for(method: str) -> frozenset[str]:
    """The roles that may call ``method`` (none for a method not in :data:`RULES`)."""
    return RULES.get(method, _DENIED).roles


@dataclass(frozen=True)
class Trust:
    """What a peer is checked against: our trust domain and our CA (PEM; a bundle of CAs during a
    CA rotation, any of which may have signed the peer's certificate)."""

    domain: str
    ca_pem: bytes
    #: An agent name -> the refusal if it is revoked, else None (scheduler.core.revocation)
    revoked: Callable[[str], str | None] = lambda name: None
    #: Streaming calls open now, ended if a TLS reload's bundle refuses their certificate
    streams: OpenStreams = field(default_factory=OpenStreams)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """``ca`` is the CA bundle (PEM), or what gives the current one (``TlsMaterial`` of
    ``scheduler/tlsreload.py``, so the checks follow a reload on SIGHUP)."""

    def __init__(
        self,
        trust_domain: str,
        ca: bytes | Callable[[], bytes],
        revoked: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self._domain = trust_domain
        self._ca = ca if callable(ca) else (lambda: ca)
        self._revoked = revoked  # the deny-list of agent names (Engine.revocations.refusal)
        self.streams = OpenStreams()  # rechecked after each TLS reload (scheduler/server.py)
        self._trust = Trust(trust_domain, self._ca(), revoked, self.streams)

    @property
    def trust(self) -> Trust:
        """The trust the next call is checked against (a new one after each reload)."""
        ca_pem = self._ca()
        if ca_pem is not self._trust.ca_pem:
            self._trust = Trust(self._domain, ca_pem, self._revoked, self.streams)
        return self._trust

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        return _wrap(handler, details.method, roles_for(details.method), self.trust)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.metadata = code, message, metadata


def _identify(context: grpc.aio.ServicerContext, method: str, roles: frozenset[str], trust: Trust) -> Identity:
    """The caller's identity if it may call ``method``; else raises _Refused saying why."""
    auth = context.auth_context()
    try:
        svid.check(bytes((auth.get("x509_pem_cert") or (b"",))[0]), trust.ca_pem)
    except svid.SvidError as exc:
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"client certificate refused: {exc}") from None
    domain = trust.domain
    try:
        ident = identity_from_auth_context(auth)
    except Exception as exc:  # a malformed certificate is the caller's problem, not ours
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"client certificate rejected: {exc}") from None
    if ident is None:
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "client certificate has no SPIFFE ID")
    if ident.trust_domain != domain:
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"identity {ident.spiffe_id} is not in trust domain {domain}")
    revoked = trust.revoked(ident.name) if ident.role == "agent" else None  # a dict lookup
    if revoked is not None:  # recognised by the agent by its metadata key (it then stops for good)
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, revoked, ((REVOKED_METADATA_KEY, ident.name),))
    if ident.role not in roles:
        raise _Refused(
            grpc.StatusCode.PERMISSION_DENIED, f"{ident.spiffe_id} (role {ident.role}) may not call {method}"
        )
    return ident


async def _authorize(context: grpc.aio.ServicerContext, method: str, roles: frozenset[str], trust: Trust) -> None:
    try:
        ident = _identify(context, method, roles, trust)
    except _Refused as refused:
        await context.abort(refused.code, refused.message, refused.metadata)
        raise  # not reached: abort() raises; this tells readers (and mypy) the call ends here
    _identity.set(ident)


class Undecodable(InvalidArgument):
    """Raised when a request's bytes do not parse as the RPC's request message."""


def _parser(handler: grpc.RpcMethodHandler, method: str) -> Callable[[Any], Any]:
    """The handler's request deserializer, raising :class:`Undecodable` on bytes it cannot parse.

    gRPC would call the deserializer itself, outside any handler, and answer ``UNKNOWN:
    Unexpected <class 'DecodeError'>``; so the wrapped handler is registered without one
    (gRPC hands it the bytes) and parses here, where the failure becomes INVALID_ARGUMENT.
    """
    deserializer = handler.request_deserializer
    if deserializer is None:
        return lambda raw: raw
    message = getattr(getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None), "full_name", None)
    what = f"request is not a valid {message} message" if message else f"request to {method} is not valid"

    def parse(raw: Any) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            raise Undecodable(what) from None

    return parse


async def _parsed(request_iterator: AsyncIterator[Any], parse: Callable[[Any], Any]) -> AsyncIterator[Any]:
    """A client stream's messages, parsed one by one as the handler reads them."""
    async for raw in request_iterator:
        yield parse(raw)


async def _undecodable(context: grpc.aio.ServicerContext, exc: Undecodable) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    raise exc  # not reached: abort() raises


def _leaf(context: grpc.aio.ServicerContext) -> bytes:
    """The caller's certificate (PEM), as the handshake gave it."""
    return bytes((context.auth_context().get("x509_pem_cert") or (b"",))[0])


def _track(trust: Trust, context: grpc.aio.ServicerContext) -> contextlib.AbstractContextManager[OpenCall]:
    """Track a streaming call in ``trust.streams``, with when its certificate expires."""
    leaf = _leaf(context)
    return trust.streams.track(leaf, svid.expiry(leaf, trust.ca_pem) if leaf else None)


async def _ended(context: grpc.aio.ServicerContext, call: OpenCall) -> NoReturn:
    """A streaming call's handler was cancelled: by :meth:`OpenStreams.recheck` (its certificate is
    refused now: ``UNAUTHENTICATED`` saying why), or by gRPC (the caller went away: cancelled on)."""
    if call.refusal is None:
        raise  # called in the handler's ``except CancelledError``: that cancellation goes on
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, call.refusal)
    raise AssertionError("not reached: abort() raises")


def _wrap(handler: grpc.RpcMethodHandler, method: str, roles: frozenset[str], trust: Trust) -> grpc.RpcMethodHandler:
    """``handler`` behind the role check, parsing its requests itself (see :func:`_parser`).

    A unary request is parsed once the caller is authorized; a client stream's messages as
    the handler reads them: an undecodable one raises :class:`Undecodable` in the handler,
    which ends the call with INVALID_ARGUMENT (the work stream, ``Connect``, reads on a task
    of its own and ends itself so).
    """
    parse = _parser(handler, method)
    serialize = handler.response_serializer
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, trust)
            try:
                request = parse(raw)
            except Undecodable as exc:
                await _undecodable(context, exc)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, trust)
            with _track(trust, context) as call:
                try:
                    return await inner_su(_parsed(request_iterator, parse), context)
                except Undecodable as exc:
                    await _undecodable(context, exc)
                except asyncio.CancelledError:
                    await _ended(context, call)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)
    inner = handler.unary_stream or handler.stream_stream
    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler

    def request_of(raw: Any) -> Any:
        """The request as the handler takes it: one parsed message, or a parsing stream."""
        return parse(raw) if handler.unary_stream else _parsed(raw, parse)

    if inspect.isasyncgenfunction(inner):

        async def streaming_gen(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, trust)
            with _track(trust, context) as call:
                try:
                    async for item in inner(request_of(raw), context):
                        yield item
                except Undecodable as exc:
                    await _undecodable(context, exc)
                except asyncio.CancelledError:
                    await _ended(context, call)

        return factory(streaming_gen, None, serialize)

    async def streaming(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        await _authorize(context, method, roles, trust)
        with _track(trust, context) as call:
            try:
                return await inner(request_of(raw), context)
            except Undecodable as exc:
                await _undecodable(context, exc)
            except asyncio.CancelledError:
                await _ended(context, call)

    return factory(streaming, None, serialize)


def _parsing(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` (one request: unary or server-streaming) parsing its request itself, with no
    role check: bytes that are not its message are INVALID_ARGUMENT, never gRPC's ``UNKNOWN:
    Unexpected <class 'DecodeError'>`` (the enrolment port's health service; found by
    tests/integration/test_fuzz_servicers.py)."""
    parse, serialize = _parser(handler, method), handler.response_serializer
    inner = handler.unary_unary or handler.unary_stream
    if inner is None:
        return handler
    factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.unary_stream_rpc_method_handler
    if inspect.isasyncgenfunction(inner):

        async def parsed_gen(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except Undecodable as exc:
                await _undecodable(context, exc)
            async for item in inner(request, context):
                yield item

        return factory(parsed_gen, None, serialize)

    async def parsed(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = parse(raw)
        except Undecodable as exc:
            await _undecodable(context, exc)
        return await inner(request, context)

    return factory(parsed, None, serialize)


class EnrollGate(grpc.aio.ServerInterceptor):
    """The enrolment port's interceptor: there is no client certificate to check, so it
    serves only the rows of :data:`RULES` whose check is :data:`TOKEN` (their servicer
    checks the token) and the health service; anything else is refused
    (``PERMISSION_DENIED``). It parses requests itself, as :class:`AuthInterceptor` does."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if method.startswith("/grpc.health.v1.Health/"):
            return _parsing(handler, method)
        if RULES.get(method, _DENIED).check != TOKEN or not handler.unary_unary:

            async def refuse(raw: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not served on the enrolment port")

            return grpc.unary_unary_rpc_method_handler(refuse)
        parse, inner = _parser(handler, method), handler.unary_unary

        async def unary_unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except Undecodable as exc:
                await _undecodable(context, exc)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, handler.response_serializer)
