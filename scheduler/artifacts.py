"""The scheduler's content-addressed artifact store: immutable blobs named by sha256.

Layout: ``ROOT/sha256/ab/abcdef…``. An upload streams into a temporary file
while hashing; only when the digest and size match the header is it fsynced
and renamed into place, so a reader never sees a partial or wrong blob
(invariant 6). Re-uploading an existing digest is a cheap no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from outrider.errors import DataLoss, InvalidArgument, NotFound
from outrider.protocol import is_digest

CHUNK = 1 << 20


def check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidArgument(f"digest must be 64 lowercase hex characters (sha256), got {digest!r}")
    return digest


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        try:
            return self.path(digest).exists()
        except InvalidArgument:
            return False

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no artifact {digest}") from None

    def writer(self, digest: str, size: int) -> _Upload:
        check_digest(digest)
        if size < 0:
            raise InvalidArgument(f"artifact size must not be negative, got {size}")
        return _Upload(self, digest, size)

    def open(self, digest: str, offset: int = 0) -> BinaryIO:
        path = self.path(digest)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no artifact {digest}") from None
        if offset:
            fh.seek(offset)
        return fh

    def read_chunks(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        with self.open(digest, offset) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


class _Upload:
    """One upload in progress: hash while writing, publish only when verified."""

    def __init__(self, store: ArtifactStore, digest: str, size: int) -> None:
        self.store, self.digest, self.size = store, digest, size
        fd, name = tempfile.mkstemp(dir=store._tmp, prefix="up-")
        self._fh = os.fdopen(fd, "wb")
        self._tmpname = name
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self.size:
            self.abort()
            raise DataLoss(f"artifact {self.digest}: more bytes than the declared size {self.size}")
        self._hash.update(data)
        self._fh.write(data)

    def commit(self) -> None:
        self._fh.flush()
        got = self._hash.hexdigest()
        if self._written != self.size or got != self.digest:
            self.abort()
            raise DataLoss(
                f"artifact upload does not match its header: declared sha256 {self.digest} size {self.size}, "
                f"received sha256 {got} size {self._written}; nothing was stored"
            )
        os.fsync(self._fh.fileno())
        self._fh.close()
        dest = self.store.path(self.digest)
        dest.parent.mkdir(exist_ok=True)
        os.replace(self._tmpname, dest)
        dirfd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmpname)
