"""Stage logs: append-only files, one per attempt, with framed records.

``ROOT/<run>/<task>/<attempt>.log`` holds records of
``<ts: float64><stream: uint8><len: uint32><data>``, so that stdout and stderr
keep their order and timestamps and can be replayed exactly.

Logs are best effort, and a failure to keep them is the scheduler's own, never the
caller's: a chunk that cannot be stored (the disk is full, or a name from a run
recorded before names had a length limit is too long for the file system) is dropped
with a warning, at most one every :data:`WARN_EVERY_S` seconds (the others counted),
so that the agent's work stream it came on goes on. A log that cannot be read is
:class:`LogUnreadable` (``INTERNAL``), whose message names the task, not the file.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from outrider.errors import OutriderError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<dBI")
#: The bytes of each record's header (ts, stream, length) before its data.
HEADER_BYTES = _HEADER.size
_STREAMS = {"stdout": 1, "stderr": 2}
_NAMES = {v: k for k, v in _STREAMS.items()}
#: At most one warning about dropped chunks per this many seconds.
WARN_EVERY_S = 60.0


class LogUnreadable(OutriderError):
    """Raised when a stage's log file exists (or should) but cannot be read."""

    code = "INTERNAL"


class LogStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        #: Chunks dropped since the store was opened, and when the last warning was given.
        self.dropped = 0
        self._warned_at: float | None = None
        self._unwarned = 0

    def _path(self, run_id: str, task: str, attempt: int) -> Path:
        return self.root / run_id / task / f"{attempt}.log"

    def append(self, run_id: str, task: str, attempt: int, stream: str, data: bytes, ts: float) -> None:
        """Store one chunk; one that cannot be stored is dropped (see the module's docstring)."""
        path = self._path(run_id, task, attempt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as fh:
                fh.write(_HEADER.pack(ts, _STREAMS.get(stream, 1), len(data)) + data)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in a name
            self._dropped(run_id, task, attempt, exc)

    def _dropped(self, run_id: str, task: str, attempt: int, exc: Exception) -> None:
        self.dropped += 1
        self._unwarned += 1
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        log.warning(
            "log chunk of %.80s/%.80s attempt %d not stored (%s); %d chunk(s) dropped since the last warning",
            run_id,
            task,
            attempt,
            why,
            self._unwarned,
        )
        self._warned_at, self._unwarned = now, 0

    def attempts(self, run_id: str, task: str) -> list[int]:
        d = self.root / run_id / task
        try:
            return sorted(int(p.stem) for p in d.glob("*.log") if p.stem.isdigit())
        except (OSError, ValueError):
            return []

    def read(self, run_id: str, task: str, attempt: int) -> Iterator[tuple[float, str, bytes]]:
        path = self._path(run_id, task, attempt)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("log of %.80s/%.80s attempt %d cannot be read: %.300s", run_id, task, attempt, exc)
            raise LogUnreadable(f"the log of task {task[:80]!r} attempt {attempt} cannot be read") from None
        pos = 0
        while pos + _HEADER.size <= len(blob):
            ts, stream, n = _HEADER.unpack_from(blob, pos)
            pos += _HEADER.size
            yield ts, _NAMES.get(stream, "stdout"), blob[pos : pos + n]
            pos += n

    def tail(
        self, run_id: str, task: str, attempt: int, offset: int, limit: int = 64 * 1024
    ) -> tuple[list[tuple[float, str, bytes]], int]:
        """The records of one attempt's log from byte ``offset`` (a record boundary this method
        returned before; a negative one, or one past the end: the last ``limit`` bytes' worth), at most
        ``limit`` bytes of data, and the offset to ask from next time. Reads only what it returns (the
        dashboard's live log polls this on a worker thread); a record still being written waits.
        """
        path = self._path(run_id, task, attempt)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            return [], 0
        except (OSError, ValueError) as exc:
            log.warning("log of %.80s/%.80s attempt %d cannot be read: %.300s", run_id, task, attempt, exc)
            raise LogUnreadable(f"the log of task {task[:80]!r} attempt {attempt} cannot be read") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if offset < 0 or offset > size:
                offset = self._tail_start(fh, size, limit)
            fh.seek(offset)
            out: list[tuple[float, str, bytes]] = []
            taken = 0
            while offset + _HEADER.size <= size and taken < limit:
                head = fh.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    break
                ts, stream, n = _HEADER.unpack(head)
                if offset + _HEADER.size + n > size:
                    break  # a record being written: next time
                out.append((ts, _NAMES.get(stream, "stdout"), fh.read(n)))
                offset += _HEADER.size + n
                taken += n
            return out, offset

    @staticmethod
    def _tail_start(fh: Any, size: int, limit: int) -> int:
        """The offset of the first record of the last ``limit`` bytes (walks the headers only)."""
        starts: list[tuple[int, int]] = []  # (offset, data bytes before it)
        pos = total = 0
        while pos + _HEADER.size <= size:
            fh.seek(pos)
            _, _, n = _HEADER.unpack(fh.read(_HEADER.size))
            starts.append((pos, total))
            total += n
            pos += _HEADER.size + n
        for start, before in starts:
            if total - before <= limit:
                return start
        return starts[-1][0] if starts else 0
