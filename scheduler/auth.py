"""Authentication and authorization in one interceptor.

The TLS layer already refused any peer without a certificate from our CA. Here
the peer's SPIFFE ID (``spiffe://<domain>/<role>/<name>``) is read from its
certificate, checked against our trust domain, and its role against the RPC's
service: agents may call only the agent service, users only the control
service (and, where a method needs more than its service, against the method:
``DrainAgent`` is for admins only). The identity is then available to servicers via
:func:`current_identity`.

The interceptor also parses every request itself (:func:`_parser`): bytes that are not the
RPC's request message are ``INVALID_ARGUMENT`` ("request is not a valid outrider.v1.X
message"), for unary and streaming RPCs alike, where gRPC would answer ``UNKNOWN``.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from outrider.errors import InvalidArgument
from outrider.pki import Identity
from outrider.tls import identity_from_auth_context

log = logging.getLogger(__name__)

ANY_ROLE = frozenset({"agent", "submitter", "admin"})
ADMIN = frozenset({"admin"})
# Method or method prefix -> roles allowed; the first match wins, so a method's own rule
# comes before its service's. Anything not listed is refused.
RULES: tuple[tuple[str, frozenset[str]], ...] = (
    ("/outrider.v1.ControlService/DrainAgent", ADMIN),
    ("/outrider.v1.AuditService/", ADMIN),  # the audit log
    ("/outrider.v1.AgentService/", frozenset({"agent"})),
    ("/outrider.v1.ControlService/", frozenset({"submitter", "admin"})),
    ("/outrider.v1.ArtifactService/", ANY_ROLE),
    ("/grpc.health.v1.Health/", ANY_ROLE),
    ("/grpc.reflection.v1alpha.ServerReflection/", ANY_ROLE),
    ("/grpc.reflection.v1.ServerReflection/", ANY_ROLE),
)

_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("outrider_identity")


def current_identity() -> Identity:
    """The authenticated caller of the RPC being served."""
    return _identity.get()


def roles_for(method: str) -> frozenset[str]:
    for prefix, roles in RULES:
        if method.startswith(prefix):
            return roles
    return frozenset()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        return _wrap(handler, details.method, roles_for(details.method), self.trust_domain)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _identify(context: grpc.aio.ServicerContext, method: str, roles: frozenset[str], domain: str) -> Identity:
    """The caller's identity if it may call ``method``; else raises _Refused saying why."""
    try:
        ident = identity_from_auth_context(context.auth_context())
    except Exception as exc:  # a malformed certificate is the caller's problem, not ours
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"client certificate rejected: {exc}") from None
    if ident is None:
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "client certificate has no SPIFFE ID")
    if ident.trust_domain != domain:
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"identity {ident.spiffe_id} is not in trust domain {domain}")
    if ident.role not in roles:
        raise _Refused(
            grpc.StatusCode.PERMISSION_DENIED, f"{ident.spiffe_id} (role {ident.role}) may not call {method}"
        )
    return ident


async def _authorize(context: grpc.aio.ServicerContext, method: str, roles: frozenset[str], domain: str) -> None:
    try:
        ident = _identify(context, method, roles, domain)
    except _Refused as refused:
        await context.abort(refused.code, refused.message)
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


def _wrap(handler: grpc.RpcMethodHandler, method: str, roles: frozenset[str], domain: str) -> grpc.RpcMethodHandler:
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
            await _authorize(context, method, roles, domain)
            try:
                request = parse(raw)
            except Undecodable as exc:
                await _undecodable(context, exc)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, domain)
            try:
                return await inner_su(_parsed(request_iterator, parse), context)
            except Undecodable as exc:
                await _undecodable(context, exc)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)
    inner = handler.unary_stream or handler.stream_stream
    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler

    def request_of(raw: Any) -> Any:
        """The request as the handler takes it: one parsed message, or a parsing stream."""
        return parse(raw) if handler.unary_stream else _parsed(raw, parse)

    if inspect.isasyncgenfunction(inner):

        async def streaming_gen(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, domain)
            try:
                async for item in inner(request_of(raw), context):
                    yield item
            except Undecodable as exc:
                await _undecodable(context, exc)

        return factory(streaming_gen, None, serialize)

    async def streaming(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        await _authorize(context, method, roles, domain)
        try:
            return await inner(request_of(raw), context)
        except Undecodable as exc:
            await _undecodable(context, exc)

    return factory(streaming, None, serialize)
