"""The agent's artifact cache: content-addressed blobs on disk, and an index of them.

Downloads land here once however many stages want them; published outputs are
kept here too, so that a downstream stage placed on this agent finds its input
locally. The index is what the agent reports as ``Capabilities.cached`` (data
locality), and it bounds the cache by evicting least recently used blobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from outrider.protocol import is_digest
from outrider.v1 import common_pb2

__all__ = ["BlobCache"]

log = logging.getLogger(__name__)


class BlobCache:
    """The agent's artifact cache: ``ROOT/sha256/ab/<digest>`` files, and an index of them.

    The index maps digest → (size, kind), ordered from least to most recently used;
    it is built by :meth:`scan` at start (order: file mtime, which :meth:`touch`
    refreshes, so recency survives a restart) and kept up to date as downloads land
    (:meth:`add`) and outputs are published (:meth:`adopt`). :meth:`refs` is what the
    agent reports as ``Capabilities.cached``; :attr:`version` changes whenever the
    inventory does.

    Bounded by ``max_bytes`` (0: no bound): :meth:`evict` removes least recently used
    blobs until the total fits, skipping those in use (:meth:`acquire` /
    :meth:`release`: a stage is placing it, or it is being uploaded).

    Temporaries live beside the blobs (same filesystem, so publishing one is an
    atomic ``os.replace``): ``ROOT/sha256/<tmp>`` and ``ROOT/sha256/ab/.part-*``;
    :meth:`scan` removes those a previous process left behind.

    Not thread-safe: the index is touched only on the event loop; worker threads
    only write temporaries (:meth:`ingest_file`).
    """

    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        self.root = Path(root) / "sha256"
        self.max_bytes = max(0, int(max_bytes))
        self._index: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self.total = 0
        self.version = 0
        self._refs: tuple[int, list[common_pb2.ArtifactRef]] = (-1, [])

    # -- the index

    def path(self, digest: str) -> Path:
        """Where the blob for ``digest`` lives (whether or not it is there)."""
        return self.root / digest[:2] / digest

    def __contains__(self, digest: object) -> bool:
        return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def size(self, digest: str) -> int | None:
        """The indexed size of a blob, or None when it is not indexed."""
        entry = self._index.get(digest)
        return None if entry is None else entry[0]

    def digests(self) -> list[str]:
        """Indexed digests, least recently used first."""
        return list(self._index)

    def scan(self) -> int:
        """(Re)build the index from the files on disk; returns how many blobs there are."""
        found: list[tuple[float, str, int]] = []
        self.root.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.root) as top:
            entries = list(top)
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                _unlink(entry.path)  # a staging temporary of a previous process
            elif entry.is_dir(follow_symlinks=False) and len(entry.name) == 2:
                with os.scandir(entry.path) as sub:
                    for blob in sub:
                        name = blob.name
                        if name.startswith(".part-"):
                            _unlink(blob.path)  # an interrupted download
                        elif is_digest(name) and name[:2] == entry.name and blob.is_file(follow_symlinks=False):
                            st = blob.stat(follow_symlinks=False)
                            found.append((st.st_mtime, name, st.st_size))
        found.sort()
        self._index = OrderedDict((digest, (size, "")) for _, digest, size in found)
        self.total = sum(size for _, _, size in found)
        self.version += 1
        return len(self._index)

    def add(self, digest: str, size: int, kind: str = "") -> None:
        """Index a blob that is now at :meth:`path` (most recently used)."""
        old = self._index.get(digest)
        if old is not None:
            self.total -= old[0]
            kind = kind or old[1]
        self._index[digest] = (size, kind)
        self._index.move_to_end(digest)
        self.total += size
        if old is None or old[0] != size or old[1] != kind:
            self.version += 1

    def touch(self, digest: str, kind: str = "") -> None:
        """Mark a blob used now (in the index, and its mtime for the next start)."""
        entry = self._index.get(digest)
        if entry is None:
            return
        self._index.move_to_end(digest)
        if kind and not entry[1]:
            self._index[digest] = (entry[0], kind)
            self.version += 1
        with contextlib.suppress(OSError):  # gone or read-only: recency is only a hint
            os.utime(self.path(digest))

    def discard(self, digest: str) -> None:
        """Forget a blob (its file is gone)."""
        entry = self._index.pop(digest, None)
        if entry is not None:
            self.total -= entry[0]
            self.version += 1

    # -- use and eviction

    def acquire(self, digest: str) -> None:
        """Mark a blob in use (counted): :meth:`evict` skips it until released."""
        self._in_use[digest] = self._in_use.get(digest, 0) + 1

    def release(self, digest: str) -> None:
        """Undo one :meth:`acquire`."""
        n = self._in_use.get(digest, 0) - 1
        if n > 0:
            self._in_use[digest] = n
        else:
            self._in_use.pop(digest, None)

    def in_use(self, digest: str) -> bool:
        """Whether some :meth:`acquire` of the blob is not released yet."""
        return digest in self._in_use

    def evict(self) -> list[str]:
        """Remove least recently used blobs not in use until the total fits; returns their digests."""
        if not self.max_bytes or self.total <= self.max_bytes:
            return []
        evicted: list[str] = []
        for digest in list(self._index):
            if self.total <= self.max_bytes:
                break
            if digest in self._in_use:
                continue
            size, _ = self._index.pop(digest)
            self.total -= size
            _unlink(self.path(digest))
            evicted.append(digest)
        if evicted:
            self.version += 1
            log.info(
                "artifact cache over %d bytes: evicted %d least recently used blob(s); %d bytes left",
                self.max_bytes,
                len(evicted),
                self.total,
            )
        return evicted

    def refs(self) -> list[common_pb2.ArtifactRef]:
        """The inventory as ArtifactRefs (digest, size, kind where known)."""
        version, refs = self._refs
        if version != self.version:
            refs = [common_pb2.ArtifactRef(digest=d, size=size, kind=kind) for d, (size, kind) in self._index.items()]
            self._refs = (self.version, refs)
        return refs

    # -- bringing bytes in

    def staging(self) -> Path:
        """Where temporaries that become blobs are written (same filesystem as the blobs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def ingest_file(self, src: Path | BinaryIO) -> tuple[str, int, Path]:
        """Copy a file (a path, or one open for reading) into a staging temporary while
        hashing it: (digest, size, temporary).

        Blocking; for a worker thread. Hashing the copy (not the original a second
        time) guarantees the cached bytes are those the digest names (invariant 6).
        """
        import hashlib
        import tempfile

        from outrider.artifacts import CHUNK

        fd, tmp = tempfile.mkstemp(dir=self.staging(), prefix=".part-")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, contextlib.ExitStack() as stack:
                fh = src if not isinstance(src, Path) else stack.enter_context(open(src, "rb"))
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            _unlink(tmp)
            raise
        return h.hexdigest(), size, Path(tmp)

    def adopt(self, digest: str, size: int, kind: str, tmp: Path) -> Path:
        """Make a staged temporary the blob for ``digest`` (atomically); returns the blob.

        If the blob is already there, the temporary is dropped and the blob marked used.
        """
        blob = self.path(digest)
        if digest in self._index and blob.exists():
            _unlink(tmp)
            self.touch(digest, kind)
            return blob
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, blob)
        self.add(digest, size, kind)
        return blob


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
