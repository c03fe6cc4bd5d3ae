"""How the ``outrider`` command line reports an error: for a person, and under ``--json`` for a script.

Every verb's error ends in :func:`report_error` (called by ``outrider.cli.main``): the line
``outrider: error: MESSAGE`` on stderr, and under ``--json`` one line on stdout,
``{"error": {"code": STATUS, "message": MESSAGE, "exit_code": N}}``; the exit code is the
one :data:`outrider.errors.EXIT_CODES` gives the status. A usage error (argparse) is raised
as :class:`UsageError` by :class:`Parser` so that ``--json`` gets it as JSON too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from outrider.errors import EXIT_OTHER, OutriderError, exit_code, status_name

#: Exit codes the verbs set themselves; errors take theirs from :data:`outrider.errors.EXIT_CODES`.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, EXIT_OTHER, 130


class UsageError(Exception):
    """Raised when argparse refuses the command line; main() reports it and exits 2."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(f"{parser.prog}: {message}")
        self.usage = parser.format_usage()


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors reach main(), so ``--json`` gets them as JSON too.

    Subparsers are made of the same class, so every verb's (``pki``'s and ``audit``'s too).
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def report_error(exc: BaseException, as_json: bool) -> int:
    """Print ``exc`` for a person (stderr) and, under ``--json``, for a script (one JSON line on
    stdout); return its exit code."""
    name = status_name(exc)
    code = exit_code(name)
    message = _message(exc)
    print(f"outrider: error: {message}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"error": {"code": name, "message": message, "exit_code": code}}, sort_keys=True), flush=True)
    return code


def report_usage(exc: UsageError, as_json: bool) -> int:
    """Print a usage error as argparse would (and under ``--json`` as JSON, code ``USAGE``); return 2."""
    prog, _, message = str(exc).partition(": ")
    print(f"{exc.usage}{prog}: error: {message}", file=sys.stderr, flush=True)
    if as_json:
        error = {"code": "USAGE", "message": str(exc), "exit_code": EXIT_USAGE}
        print(json.dumps({"error": error}, sort_keys=True), flush=True)
    return EXIT_USAGE


def rpc_error(exc: Exception) -> OutriderError | None:
    """A gRPC error that reached here untranslated, as the client would have raised it."""
    grpc = sys.modules.get("grpc")
    if grpc is None or not isinstance(exc, grpc.RpcError):
        return None
    from outrider.client import _translate

    return _translate(exc)
