"""Domain errors to gRPC status codes, in one place.

Every error raised on purpose is an :class:`~outrider.errors.OutriderError` whose
``code`` names its status; :func:`unary` and :func:`streaming` wrap servicer
methods so that such an error ends the call with that status and its message.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from outrider.errors import OutriderError

F = TypeVar("F", bound=Callable[..., Any])


def status_code(exc: OutriderError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)


def status_number(exc: OutriderError) -> int:
    return int(status_code(exc).value[0])


def unary(fn: F) -> F:
    """Map OutriderError raised by a unary handler to its status code."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except OutriderError as exc:
            await context.abort(status_code(exc), str(exc))

    return wrapper  # type: ignore[return-value]


def streaming(fn: F) -> F:
    """The same for server-streaming handlers (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except OutriderError as exc:
            await context.abort(status_code(exc), str(exc))

    return wrapper  # type: ignore[return-value]
