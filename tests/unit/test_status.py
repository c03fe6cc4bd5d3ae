"""scheduler.api.status: every error a client gets is bounded and names the problem (issue 8,
item 7); an unexpected exception is INTERNAL without the server's paths or class names."""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from outrider.errors import InvalidArgument, NotFound
from scheduler.api import status


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise Aborted


class Servicer:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    @status.unary
    async def Unary(self, request: Any, context: Any) -> Any:
        raise self.exc

    @status.streaming
    async def Stream(self, request: Any, context: Any) -> Any:
        yield 1
        raise self.exc


def _call_unary(exc: Exception) -> FakeContext:
    ctx = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(Servicer(exc).Unary(None, ctx))
    return ctx


def _call_stream(exc: Exception) -> FakeContext:
    ctx = FakeContext()

    async def drain() -> None:
        async for _ in Servicer(exc).Stream(None, ctx):
            pass

    with pytest.raises(Aborted):
        asyncio.run(drain())
    return ctx


@pytest.mark.parametrize("call", [_call_unary, _call_stream])
def test_a_long_message_is_cut_to_the_bound_and_keeps_its_code(call: Any) -> None:
    ctx = call(InvalidArgument("pipeline name " + "x" * 20_000 + " is bad"))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(ctx.details) <= status.MAX_MESSAGE
    assert ctx.details.startswith("pipeline name xxx") and "more characters" in ctx.details


def test_a_short_message_is_sent_as_it_is() -> None:
    assert _call_unary(NotFound("no run r1")).details == "no run r1"


def test_the_bound_holds_for_characters_that_grpc_percent_encodes() -> None:
    """grpc-message is percent-encoded UTF-8: a character can take 12 bytes there."""
    ctx = _call_unary(InvalidArgument("\N{EURO SIGN}\n" * 20_000))
    encoded = sum(3 * len(ch.encode()) if not " " <= ch <= "~" or ch == "%" else 1 for ch in ctx.details)
    assert encoded < 16_384


@pytest.mark.parametrize("call", [_call_unary, _call_stream])
def test_an_unexpected_exception_is_internal_without_paths_or_class_names(call: Any) -> None:
    ctx = call(OSError(36, "File name too long", "/var/lib/outrider/logs/r1/" + "t" * 300))
    assert ctx.code == grpc.StatusCode.INTERNAL
    assert "/var/lib" not in ctx.details and "OSError" not in ctx.details and "class" not in ctx.details
    assert len(ctx.details) < 200
