"""Domain errors to gRPC status codes, in one place.

Every error raised on purpose is an :class:`~outrider.errors.OutriderError` whose
``code`` names its status; :func:`unary` and :func:`streaming` wrap servicer
methods so that such an error ends the call with that status and its message.

What a client is sent is bounded here, for every service: a message is cut to
:data:`MAX_MESSAGE` characters, saying how much was cut. Status details travel in
gRPC metadata, which the client refuses past 16 KiB; a longer message (one that
quotes a long bad value) would reach it as ``RESOURCE_EXHAUSTED`` instead of the
real error. Any other exception is a bug: it is logged with its traceback, and the
client gets ``INTERNAL`` with a short message, never a server path or a class name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from outrider.errors import OutriderError
from scheduler.api.bounds import MAX_MESSAGE

__all__ = ["MAX_MESSAGE", "abort", "bounded", "status_code", "status_number", "streaming", "unary"]

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def status_code(exc: OutriderError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)


def status_number(exc: OutriderError) -> int:
    return int(status_code(exc).value[0])


def bounded(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE` characters, the cut said at its end.

    1024 characters: even where every one is percent-encoded from 4 UTF-8 bytes (12 bytes
    each), the details stay under gRPC's 16 KiB metadata limit.
    """
    if len(message) <= MAX_MESSAGE:
        return message
    keep = MAX_MESSAGE - 40
    return f"{message[:keep]}... ({len(message) - keep} more characters)"


async def abort(context: grpc.aio.ServicerContext, exc: OutriderError) -> NoReturn:
    """End the call with ``exc``'s status and its bounded message."""
    await context.abort(status_code(exc), bounded(str(exc)))
    raise exc  # not reached: abort() raises


async def _unexpected(context: grpc.aio.ServicerContext, fn: Callable[..., Any]) -> NoReturn:
    """The call failed with an exception nobody raised on purpose: log it, answer INTERNAL."""
    log.error("%s failed unexpectedly", fn.__qualname__, exc_info=True)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; the scheduler's log says why")
    raise AssertionError("not reached: abort() raises")


def unary(fn: F) -> F:
    """Map OutriderError raised by a unary handler to its status code."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except OutriderError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:  # the handler ended the call itself
            raise
        except Exception:
            await _unexpected(context, fn)

    return wrapper  # type: ignore[return-value]


def streaming(fn: F) -> F:
    """The same for server-streaming handlers (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except OutriderError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _unexpected(context, fn)

    return wrapper  # type: ignore[return-value]
