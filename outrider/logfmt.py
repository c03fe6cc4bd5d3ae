"""The daemons' logs: JSON lines when stderr is not a terminal, a readable line on one.

Both daemons (``outrider-scheduler``, ``outrider-agent``) call :func:`setup` with their
``log_format`` (``--log-format auto|json|text``; TOML ``log_format``):

* ``json``: one object per line, ``{"ts", "level", "logger", "msg"}`` plus ``run_id``,
  ``task``, ``attempt`` and ``trace_id`` when the record is about one (and ``exc`` with a
  traceback), for a log shipper;
* ``text``: ``2026-11-30 05:40:00,123 INFO agent.runner: msg [run=… task=… attempt=… trace=…]``;
* ``auto`` (the default): ``json`` unless stderr is a terminal.

What a record is about comes from :func:`context` (a ``contextvars`` scope: an asyncio task
started inside it keeps it) or from ``extra=about(run_id, task, attempt, trace_id)`` on the
call; the call's own fields win.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from outrider.errors import ConfigError

FORMATS = ("auto", "json", "text")
#: The fields a record may be about, in the order they are shown.
FIELDS = ("run_id", "task", "attempt", "trace_id")
_TEXT = {"run_id": "run", "task": "task", "attempt": "attempt", "trace_id": "trace"}

_about: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("outrider_log_about", default={})  # noqa: B039


def about(run_id: str = "", task: str = "", attempt: int = 0, trace_id: str = "") -> dict[str, Any]:
    """The fields of what a record is about, for ``extra=`` (empty ones left out)."""
    given = {"run_id": run_id, "task": task, "attempt": attempt, "trace_id": trace_id}
    return {k: v for k, v in given.items() if v}


def trace_of(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` (``00-TRACE-SPAN-01``), or ''."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Records logged inside (and in asyncio tasks started inside) are about these fields."""
    token = _about.set({**_about.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _about.reset(token)


def bind(**fields: Any) -> None:
    """As :func:`context`, for the rest of the current context (an asyncio task's own)."""
    _about.set({**_about.get(), **{k: v for k, v in fields.items() if v}})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out = dict(_about.get())
    for k in FIELDS:
        v = record.__dict__.get(k)
        if v:
            out[k] = v
    return {k: out[k] for k in FIELDS if k in out}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The readable line, with what the record is about in brackets at its end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{_TEXT[k]}={v}" for k, v in fields.items()) + "]"
        return line


def check_format(value: Any, source: str) -> str:
    """``log_format``, checked: auto, json or text; ConfigError naming the value otherwise."""
    if value not in FORMATS:
        raise ConfigError(f"{source}: log_format must be one of auto, json, text (--log-format), got {value!r}")
    return str(value)


def resolve(fmt: str, stream: TextIO) -> str:
    """``auto`` made concrete: ``text`` on a terminal, ``json`` otherwise."""
    if fmt != "auto":
        return fmt
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or odd stream
        return "json"


def setup(fmt: str, level: str = "info", stream: TextIO | None = None) -> str:
    """Configure the root logger of a daemon; returns the format chosen (json or text)."""
    stream = stream if stream is not None else sys.stderr
    chosen = resolve(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return chosen
