"""Content-addressed artifacts on the client and agent side: hash, pack, move.

A file artifact is its bytes; a directory artifact is a deterministic tar of
the tree (sorted names, zero mtimes and owners), so the same tree always has
the same sha256 wherever it is packed. Transfers are chunked streams verified
by digest at both ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from outrider.errors import DataLoss, InvalidArgument

CHUNK = 1 << 20  # 1 MiB: large enough to amortise per-message cost, small for memory


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 hex and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir():
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


def pack_dir(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> tuple[str, int]:
    """Write a deterministic tar of ``src`` to ``dest``; return (sha256, size)."""
    root = Path(src)
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            for name in sorted(dirnames) + sorted(filenames):
                full = Path(dirpath) / name
                arcname = str(rel_dir / name) if str(rel_dir) != "." else name
                if full.is_symlink() or not (full.is_file() or full.is_dir()):
                    raise InvalidArgument(f"{full}: only regular files and directories can be packed")
                tar.add(full, arcname=arcname, recursive=False, filter=_reset)
    return hash_file(dest)


def unpack_dir(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract a packed directory, refusing anything outside ``dest`` or not a plain file/dir."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(archive, "r") as tar:
        # Check every entry before extracting any: nothing lands outside ``dest``.
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise DataLoss(f"artifact archive has an unsafe entry {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; entries were checked above
            tar.extractall(dest)


def describe(path: str | os.PathLike[str], scratch: str | os.PathLike[str]) -> tuple[str, int, str, Path]:
    """Hash an output: (digest, size, kind, file to upload). Dirs are packed into ``scratch``."""
    p = Path(path)
    if p.is_dir():
        fd, tmp = tempfile.mkstemp(dir=scratch, suffix=".tar")
        os.close(fd)
        digest, size = pack_dir(p, tmp)
        return digest, size, "dir", Path(tmp)
    if p.is_file():
        digest, size = hash_file(p)
        return digest, size, "file", p
    raise InvalidArgument(f"{p} is neither a file nor a directory")


def upload_chunks(path: str | os.PathLike[str], digest: str, size: int, kind: str) -> Iterator[Any]:
    """UploadChunk messages for a file: the header first, then the bytes."""
    from outrider.v1 import artifact_pb2

    yield artifact_pb2.UploadChunk(header=artifact_pb2.ArtifactHeader(digest=digest, size=size, kind=kind))
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield artifact_pb2.UploadChunk(data=chunk)


class Receiver:
    """Write downloaded chunks to a temporary file, verifying the digest before publishing."""

    def __init__(self, digest: str, dest: str | os.PathLike[str]) -> None:
        self.digest = digest
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.dest.parent, prefix=".part-")
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._fh.write(data)
        self.size += len(data)

    def finish(self) -> Path:
        self._fh.close()
        got = self._hash.hexdigest()
        if got != self.digest:
            os.unlink(self._tmp)
            raise DataLoss(f"downloaded artifact does not match its digest: expected {self.digest}, got {got}")
        os.replace(self._tmp, self.dest)
        return self.dest

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def place(blob: Path, kind: str, dest: Path) -> None:
    """Make an artifact appear at ``dest``: a copied file or an unpacked dir.

    A copy, not a hard link: a stage that wrote to its input would otherwise
    change the cached blob under its digest (invariant 6).
    """
    if kind == "dir":
        unpack_dir(blob, dest)
    else:
        shutil.copyfile(blob, dest)
