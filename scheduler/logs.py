"""Stage logs: append-only files, one per attempt, with framed records.

``ROOT/<run>/<task>/<attempt>.log`` holds records of
``<ts: float64><stream: uint8><len: uint32><data>``, so that stdout and stderr
keep their order and timestamps and can be replayed exactly.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("<dBI")
_STREAMS = {"stdout": 1, "stderr": 2}
_NAMES = {v: k for k, v in _STREAMS.items()}


class LogStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str, task: str, attempt: int) -> Path:
        return self.root / run_id / task / f"{attempt}.log"

    def append(self, run_id: str, task: str, attempt: int, stream: str, data: bytes, ts: float) -> None:
        path = self._path(run_id, task, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as fh:
            fh.write(_HEADER.pack(ts, _STREAMS.get(stream, 1), len(data)) + data)

    def attempts(self, run_id: str, task: str) -> list[int]:
        d = self.root / run_id / task
        if not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.log") if p.stem.isdigit())

    def read(self, run_id: str, task: str, attempt: int) -> Iterator[tuple[float, str, bytes]]:
        path = self._path(run_id, task, attempt)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return
        pos = 0
        while pos + _HEADER.size <= len(blob):
            ts, stream, n = _HEADER.unpack_from(blob, pos)
            pos += _HEADER.size
            yield ts, _NAMES.get(stream, "stdout"), blob[pos : pos + n]
            pos += n
