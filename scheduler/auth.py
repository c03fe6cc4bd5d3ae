"""Authentication and authorization in one interceptor.

The TLS layer already refused any peer without a certificate from our CA. Here
the peer's SPIFFE ID (``spiffe://<domain>/<role>/<name>``) is read from its
certificate, checked against our trust domain, and its role against the RPC's
service: agents may call only the agent service, users only the control
service (and, where a method needs more than its service, against the method:
``DrainAgent`` is for admins only). The identity is then available to servicers via
:func:`current_identity`.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from outrider.pki import Identity
from outrider.tls import identity_from_auth_context

log = logging.getLogger(__name__)

ANY_ROLE = frozenset({"agent", "submitter", "admin"})
ADMIN = frozenset({"admin"})
# Method or method prefix -> roles allowed; the first match wins, so a method's own rule
# comes before its service's. Anything not listed is refused.
RULES: tuple[tuple[str, frozenset[str]], ...] = (
    ("/outrider.v1.ControlService/DrainAgent", ADMIN),
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


def _wrap(handler: grpc.RpcMethodHandler, method: str, roles: frozenset[str], domain: str) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, domain)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, domain)
            return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner = handler.unary_stream or handler.stream_stream
    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler

    if inspect.isasyncgenfunction(inner):

        async def streaming_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _authorize(context, method, roles, domain)
            async for item in inner(request, context):
                yield item

        return factory(streaming_gen, handler.request_deserializer, handler.response_serializer)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _authorize(context, method, roles, domain)
        return await inner(request, context)

    return factory(streaming, handler.request_deserializer, handler.response_serializer)
