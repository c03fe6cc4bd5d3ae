"""Figures a stage records about itself (data quality, drift, model scores).

In a Python stage::

    from outrider import metrics

    metrics.log("accuracy", 0.93)                # a value
    metrics.log("loss", 0.21, step=epoch)        # a value at a step (an int: epoch, batch, ...)

Each call appends one JSON line to the file ``$OUTRIDER_METRICS_FILE`` (the agent sets it
for every stage, inside the stage's work dir). Any other stage writes that file itself,
one object per line::

    {"name": "accuracy", "value": 0.93, "step": 3, "ts": 1796000000.5}

``name`` matches :data:`NAME_PATTERN` (a letter, then letters, digits and ``_ . : / -``, at
most 64 characters); ``value`` is a finite number; ``step`` (optional, or null) a whole
number from 0 to 2**53; ``ts`` (optional) the Unix time it was logged. When the stage ends
(however it ends), the agent reads the file (at most :data:`MAX_FILE_BYTES`,
:data:`MAX_LINES` lines and :data:`MAX_NAMES` names), keeps the last value of each name
(with its step, its time and how many values the name had), counts the lines it could not
take and says why the first one was refused, and reports them with the attempt: the
scheduler stores them per attempt; ``outrider status RUN`` shows them and ``outrider
metrics RUN...`` compares them across runs.

Outside Outrider (no ``$OUTRIDER_METRICS_FILE``), :func:`log` writes the same JSON line
to standard error, so a stage run by hand still shows its figures.

Standard library only: a stage imports this without gRPC or the rest of Outrider.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENV",
    "MAX_FILE_BYTES",
    "MAX_LINES",
    "MAX_NAMES",
    "MAX_STEP",
    "NAME_PATTERN",
    "FileSummary",
    "Point",
    "check",
    "log",
    "read_fd",
    "read_file",
    "summarize",
]

#: The environment variable naming the stage's metrics file (JSON lines).
ENV = "OUTRIDER_METRICS_FILE"
#: What a metric's name looks like.
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_.:/-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
#: The largest step (a whole number every JSON reader keeps exactly).
MAX_STEP = 2**53
#: How much of a metrics file the agent reads; the rest is counted as skipped.
MAX_FILE_BYTES = 1 << 20
#: How many lines of it the agent reads at most.
MAX_LINES = 20_000
#: How many distinct names one attempt may report; lines with further names are skipped.
MAX_NAMES = 100
#: The longest line taken.
MAX_LINE_BYTES = 4096
#: How long the reason for skipped lines may be.
MAX_REASON = 240


def check(name: Any, value: Any, step: Any = None) -> tuple[str, float, int | None]:
    """``(name, value, step)`` as stored; ValueError (or TypeError) naming what is wrong."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a string, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"metric name {name[:80]!r} is not valid: a letter, then letters, digits and _ . : / -, "
            "at most 64 characters"
        )
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"metric {name!r}: value must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r}: value must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"metric {name!r}: value must be finite, got {number}")
    if step is None:
        return name, number, None
    if isinstance(step, bool):
        raise TypeError(f"metric {name!r}: step must be a whole number, got bool")
    try:
        whole = operator.index(step)
    except TypeError:
        raise TypeError(f"metric {name!r}: step must be a whole number, got {type(step).__name__}") from None
    if not 0 <= whole <= MAX_STEP:
        raise ValueError(f"metric {name!r}: step must be from 0 to 2**53, got {whole}")
    return name, number, whole


def log(name: str, value: float, step: int | None = None) -> None:
    """Record ``value`` for ``name`` (at ``step``): one JSON line appended to
    ``$OUTRIDER_METRICS_FILE``, or written to standard error outside Outrider.

    Raises ValueError or TypeError, writing nothing, for a bad name, a value that is not a
    finite number, or a step that is not a whole number from 0 to 2**53.
    """
    name, number, whole = check(name, value, step)
    line = json.dumps({"name": name, "value": number, "step": whole, "ts": time.time()}) + "\n"
    path = os.environ.get(ENV)
    if not path:
        sys.stderr.write(line)
        sys.stderr.flush()
        return
    # One write of one short line in append mode: lines from several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Point:
    """The last value a name had in an attempt, and how many values it had."""

    name: str
    value: float
    step: int | None
    ts: float
    count: int


@dataclass(slots=True)
class FileSummary:
    """What a metrics file held: the last point of each name, and the lines not taken."""

    points: list[Point] = field(default_factory=list)
    skipped: int = 0
    reason: str = ""

    def skip(self, n: int, why: str) -> None:
        if n <= 0:
            return
        if not self.skipped:
            self.reason = why[:MAX_REASON]
        self.skipped += n


def _point(raw: bytes, now: float) -> tuple[str, float, int | None, float]:
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("not a JSON object") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "name" not in obj or "value" not in obj:
        raise ValueError('"name" and "value" are required')
    name, value, step = check(obj["name"], obj["value"], obj.get("step"))
    ts = obj.get("ts")
    if ts is None:
        ts = now
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or not 0 <= ts < 1e11:
        raise ValueError(f'metric {name!r}: "ts" must be a Unix time')
    return name, value, step, float(ts)


def summarize(data: bytes, now: float, *, truncated: int = 0) -> FileSummary:
    """The last point of each name in ``data`` (JSON lines), bounded; ``truncated``: bytes of
    the file past ``data`` that were not read. Never raises on what the file holds."""
    out = FileSummary()
    last: dict[str, Point] = {}
    lines = data.split(b"\n")
    if truncated:
        lines.pop()  # the line cut at the limit
    over = len(lines) - MAX_LINES
    del lines[MAX_LINES:]
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            name, value, step, ts = _point(raw, now)
        except (ValueError, TypeError) as exc:
            out.skip(1, f"line {number}: {exc}")
            continue
        before = last.get(name)
        if before is None and len(last) >= MAX_NAMES:
            out.skip(1, f"line {number}: more than {MAX_NAMES} names")
            continue
        last[name] = Point(name, value, step, ts, before.count + 1 if before else 1)
    # (after the lines read: the reason given is the first problem in the file's order)
    out.skip(over, f"the file has over {MAX_LINES} lines; only the first were read")
    if truncated:
        out.skip(1, f"the file is over {MAX_FILE_BYTES} bytes; only the start was read")
    out.points = list(last.values())
    return out


def read_file(path: str | os.PathLike[str], now: float | None = None) -> FileSummary:
    """Read a stage's metrics file (:func:`summarize`), never through a link at its last
    component. A missing file is an empty summary; one that cannot be read is one skipped
    line saying why. Never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return FileSummary()
    except OSError as exc:
        return _unreadable(f"cannot open the metrics file: {exc.strerror or exc}")
    try:
        return read_fd(fd, now)
    finally:
        os.close(fd)


def read_fd(fd: int, now: float | None = None) -> FileSummary:
    """:func:`read_file` from an open descriptor: a regular file with one link only, at most
    :data:`MAX_FILE_BYTES` of it. Never raises."""
    now = time.time() if now is None else now
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return _unreadable("the metrics file is not a regular file with one link")
        chunks = []
        left = MAX_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        return _unreadable(f"cannot read the metrics file: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        return summarize(data[:MAX_FILE_BYTES], now, truncated=len(data) - MAX_FILE_BYTES)
    return summarize(data, now)


def _unreadable(why: str) -> FileSummary:
    out = FileSummary()
    out.skip(1, why)
    return out
