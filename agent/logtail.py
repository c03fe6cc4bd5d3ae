"""Forwarding a stage's output: the stage writes ``.outrider/stdout`` and ``.outrider/stderr``
in its work dir, and the agent reads what is new.

Files, not pipes: a pipe to the agent would tie the stage to the agent process (a stage
whose agent died got SIGPIPE at its next write, or blocked once the pipe filled), and
files let the next agent process pick up the output of a stage it took over. How far each
file was forwarded is kept in ``.outrider/logpos`` (written when something was forwarded
while the stage ran; no sync: it only has to survive the agent process, not the machine),
so a taken-over stage's output is neither lost nor sent twice. The files stay when the
stage is done (an empty pair lets its work dir be recycled: :mod:`agent.workdirs`).

Secrets. Each exact occurrence of a value of the task's ``secret_env`` (of at least
:data:`MIN_MASKED` bytes) in what is forwarded is replaced by ``***``, as CI systems do.
Only exact occurrences within one chunk read: a value split across two reads (chunks of
:data:`READ_CHUNK` bytes), or transformed (encoded, reversed, one character a line) goes
through; the files in the work dir keep the output unmasked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.stageuser import open_own_file
from outrider.v1 import common_pb2

__all__ = ["MASK", "MIN_MASKED", "READ_CHUNK", "LogTail"]

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
#: Shorter secret values are not masked: they would mask too much that is not them.
MIN_MASKED = 4
MASK = b"***"
STREAMS = ("stdout", "stderr")

LogSink = Callable[[common_pb2.LeaseRef, str, bytes], None]


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class LogTail:
    """The output files of one stage and how far they were forwarded to ``sink``."""

    def __init__(
        self,
        lease: common_pb2.LeaseRef,
        outrider_dir: Path,
        sink: LogSink,
        secrets: Iterable[str] = (),
        own_files: bool = False,
    ) -> None:
        self.lease = lease
        # The stage runs as another user (stage_user): read only the files the agent made.
        self._open = open_own_file if own_files else _open
        # Longest first: a secret that contains another is masked whole.
        masked = {v.encode() for v in secrets if len(v.encode()) >= MIN_MASKED}
        self._secrets = sorted(masked, key=len, reverse=True)
        self.dir = outrider_dir
        self._prefix = str(outrider_dir) + "/"
        self.sink = sink
        self.offsets = dict.fromkeys(STREAMS, 0)
        self._fds: dict[str, int] = {}
        self._saved = (0, 0)
        self._wrote_pos = False

    def path(self, stream: str) -> str:
        return self._prefix + stream

    def resume(self) -> None:
        """Start from where a previous agent process left off (``logpos``)."""
        with contextlib.suppress(OSError, ValueError):
            out, err = (int(x) for x in (self.dir / "logpos").read_text().split())
            self.offsets = {"stdout": out, "stderr": err}
            self._saved = (out, err)
            self._wrote_pos = True

    def poll(self, limit: int = 1 << 20) -> bool:
        """Forward what is new (up to ``limit`` bytes per stream); True if anything was."""
        moved = False
        for stream in STREAMS:
            fd = self._fds.get(stream)
            if fd is None:
                try:
                    if os.stat(self.path(stream)).st_size <= self.offsets[stream]:
                        continue
                    fd = self._fds[stream] = self._open(self.path(stream))
                except OSError:
                    continue
            sent = 0
            while sent < limit:
                try:
                    data = os.pread(fd, READ_CHUNK, self.offsets[stream])
                except OSError:
                    break
                if not data:
                    break
                self.offsets[stream] += len(data)
                sent += len(data)
                for secret in self._secrets:  # (none: no work per chunk)
                    data = data.replace(secret, MASK)
                self.sink(self.lease, stream, data)
                moved = True
        return moved

    def save(self) -> None:
        """Write down how far the files were forwarded (for the next agent process)."""
        now = (self.offsets["stdout"], self.offsets["stderr"])
        if now != self._saved:
            with contextlib.suppress(OSError):
                (self.dir / "logpos").write_text(f"{now[0]} {now[1]}\n")
            self._saved = now
            self._wrote_pos = True

    @property
    def empty(self) -> bool:
        """Nothing was forwarded (after :meth:`finish`: the stage printed nothing)."""
        return not (self.offsets["stdout"] or self.offsets["stderr"])

    def finish(self) -> None:
        """Forward the rest (the files stay: a work dir whose stage printed nothing is
        recycled with them, one that printed something is removed)."""
        self.poll(limit=1 << 62)  # the process has ended: what is there is all there is
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._wrote_pos:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._prefix + "logpos")
