"""Content-addressed artifacts on the client and agent side: hash, pack, move.

A file artifact is its bytes; a directory artifact is a deterministic tar of
the tree (sorted names, zero mtimes and owners), so the same tree always has
the same sha256 wherever it is packed. Transfers are chunked streams verified
by digest at both ends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from outrider.errors import DataLoss, InvalidArgument

CHUNK = 1 << 20  # 1 MiB: large enough to amortise per-message cost, small for memory


def hash_file(path: str | os.PathLike[str] | BinaryIO) -> tuple[str, int]:
    """sha256 hex and size of a file (a path, or one open for reading), read in chunks."""
    h = hashlib.sha256()
    size = 0
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(open(path, "rb")) if isinstance(path, (str, os.PathLike)) else path
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


#: At most this many entries in a directory artifact: extracting one, or what the links
#: in an output add when it is packed.
MAX_MEMBERS = 1 << 20
#: The most ``outrider artifact get --extract`` lets a directory artifact expand to (the
#: agent's ceiling is its ``max_extract_bytes`` setting).
CLI_MAX_EXTRACT_BYTES = 1 << 40
#: Characters of a link target an error quotes (a target can be 4 KiB long).
_SHOWN = 200
#: Opening an entry of a tree being packed: never through a link (a link is checked, then
#: opened by its resolved path), never blocking (a FIFO), as a file or a directory.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir():
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


def _entry(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    """The header of a regular file or directory from its ``fstat``: anonymous, no mtime."""
    info = tarfile.TarInfo(arcname)
    info.mode = st.st_mode
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    return _reset(info)


def _shown(target: str) -> str:
    return repr(target if len(target) <= _SHOWN else target[:_SHOWN] + "...")


def _is_dir_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is (or links to) a directory: where it sorts, nothing is read."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


class _Tree:
    """Opens the entries of one tree without following a link it has not checked.

    ``root_real`` is the real path of the directory links may lead into (an output's
    outputs dir); None: no link is allowed at all. A link is resolved in full and must
    lead inside ``root_real``; what it leads to is then opened one path component at a
    time from ``root_fd`` with ``O_NOFOLLOW``, so a link swapped in after the check is
    refused, not followed. ``what`` names the tree in errors ("output 'out'").
    """

    def __init__(self, what: str, root_real: str | None = None, root_fd: int | None = None) -> None:
        self.what = what
        self.root_real = root_real
        self.root_fd = root_fd

    def rel(self, path: str) -> str:
        if self.root_real is not None and (path + os.sep).startswith(self.root_real + os.sep):
            return os.path.relpath(path, self.root_real)
        return path

    def open(self, dir_fd: int | None, name: str, location: str) -> tuple[int, str, bool]:
        """(fd, real path, whether through a link) of entry ``name`` of ``dir_fd``, at ``location``."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise InvalidArgument(f"{location}: only regular files and directories can be packed")
            return self._open(dir_fd, name, location), location, False
        if self.root_real is None or self.root_fd is None:
            raise InvalidArgument(f"{location}: only regular files and directories can be packed (a symlink)")
        real = self.resolve(location)
        fd = self.root_fd
        parts = [p for p in os.path.relpath(real, self.root_real).split(os.sep) if p not in ("", ".")]
        if not parts:  # the outputs dir itself: packing it would contain itself
            raise InvalidArgument(f"{self.what}: the symlink {self.rel(location)} leads round a cycle of links")
        opened: list[int] = []
        try:
            for part in parts[:-1]:
                fd = self._open(fd, part, real)
                opened.append(fd)
            last = self._open(fd, parts[-1], real)
        finally:
            for d in opened:
                os.close(d)
        mode = os.fstat(last).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            os.close(last)
            raise InvalidArgument(f"{real}: only regular files and directories can be packed")
        return last, real, True

    def resolve(self, location: str) -> str:
        """Where the link at ``location`` leads, in full; it must lie inside ``root_real``."""
        assert self.root_real is not None
        try:
            target = _shown(os.readlink(location))
        except OSError:
            target = "?"
        link = f"{self.what}: the symlink {self.rel(location)} -> {target}"
        try:
            real = os.path.realpath(location, strict=True)
        except OSError as exc:
            why = "a cycle of links" if exc.errno == errno.ELOOP else "nothing (it dangles)"
            raise InvalidArgument(f"{link} leads to {why}") from None
        if not (real + os.sep).startswith(self.root_real + os.sep):
            raise InvalidArgument(f"{link} points outside the outputs dir (a link may lead only inside it)")
        return real

    def _open(self, dir_fd: int | None, name: str, location: str) -> int:
        try:
            return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
                raise InvalidArgument(f"{self.what}: {self.rel(location)} changed while it was read") from None
            raise


class _Packer:
    """Writes a tree into a tar from open file descriptors, in :func:`os.walk`'s order."""

    def __init__(self, tar: tarfile.TarFile, tree: _Tree, link_budget: int | None) -> None:
        self.tar = tar
        self.t = tree
        self.link_budget = link_budget
        self.link_bytes = 0
        self.link_members = 0

    def walk(self, dir_fd: int, prefix: str, real_dir: str, ancestors: frozenset[tuple[int, int]], via: bool) -> None:
        """Pack the entries of the open directory ``dir_fd`` (at ``real_dir``) under ``prefix``:
        per directory its subdirectories, then its files, each sorted; then each subdirectory's."""
        names = sorted(os.listdir(dir_fd))
        is_dir = {n: _is_dir_at(dir_fd, n) for n in names}
        dirs = [n for n in names if is_dir[n]]
        files = [n for n in names if not is_dir[n]]
        subdirs: list[tuple[str, bool]] = []
        for name in dirs + files:
            fd, real, link = self.t.open(dir_fd, name, os.path.join(real_dir, name))
            with contextlib.closing(_Fd(fd)):
                st = os.fstat(fd)
                arcname = f"{prefix}/{name}" if prefix else name
                if via or link:
                    self._spend(st)
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in ancestors:
                        raise InvalidArgument(
                            f"{self.t.what}: the symlink {self.t.rel(os.path.join(real_dir, name))} "
                            "leads round a cycle of links"
                        )
                    self.tar.addfile(_entry(arcname, st))
                    subdirs.append((name, via or link))
                elif stat.S_ISREG(st.st_mode):
                    with os.fdopen(os.dup(fd), "rb") as fh:
                        self.tar.addfile(_entry(arcname, st), fh)
                else:
                    raise InvalidArgument(f"{real}: only regular files and directories can be packed")
        for name, sub_via in subdirs:
            fd, real, _ = self.t.open(dir_fd, name, os.path.join(real_dir, name))
            with contextlib.closing(_Fd(fd)):
                st = os.fstat(fd)
                ident = (st.st_dev, st.st_ino)
                if not stat.S_ISDIR(st.st_mode) or ident in ancestors:
                    raise InvalidArgument(f"{self.t.what}: {self.t.rel(real)} changed while it was read")
                arcname = f"{prefix}/{name}" if prefix else name
                self.walk(fd, arcname, real, ancestors | {ident}, sub_via)

    def _spend(self, st: os.stat_result) -> None:
        """Count what a link adds: many links to one big directory must not fill the disk."""
        self.link_members += 1
        if stat.S_ISREG(st.st_mode):
            self.link_bytes += st.st_size
        if self.link_members > MAX_MEMBERS:
            raise InvalidArgument(f"{self.t.what}: the symlinks in it add more than {MAX_MEMBERS} entries")
        if self.link_budget is not None and self.link_bytes > self.link_budget:
            raise InvalidArgument(f"{self.t.what}: the symlinks in it add more than {self.link_budget} bytes")


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def open_output(path: str | os.PathLike[str], within: str | os.PathLike[str], what: str = "") -> tuple[int, str]:
    """Open an output (a file or directory at ``path``, directly inside ``within``, the
    outputs dir): (fd, its real path). ``path`` may be a symlink that leads inside
    ``within``; one that leads outside, nowhere, or round a cycle is InvalidArgument.

    The fd is opened with ``O_NOFOLLOW``: what is read is what was checked.
    """
    fd, real, _, tree = _open_output(path, within, what)
    assert tree.root_fd is not None
    os.close(tree.root_fd)
    return fd, real


def _open_output(
    path: str | os.PathLike[str], within: str | os.PathLike[str], what: str
) -> tuple[int, str, bool, _Tree]:
    root_real = os.path.realpath(within)
    name = os.path.relpath(os.path.abspath(path), os.path.abspath(within))
    if os.sep in name or name in (os.curdir, os.pardir):
        raise InvalidArgument(f"{path} is not directly inside {within}")
    try:
        root_fd = os.open(root_real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"{within}: not a directory ({exc.strerror or exc})") from None
    tree = _Tree(what or f"output {name!r}", root_real, root_fd)
    try:
        fd, real, link = tree.open(root_fd, name, os.path.join(root_real, name))
    except FileNotFoundError:
        os.close(root_fd)
        raise InvalidArgument(f"{path} is neither a file nor a directory") from None
    except BaseException:
        os.close(root_fd)
        raise
    return fd, real, link, tree


def pack_dir(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    within: str | os.PathLike[str] | None = None,
    link_budget: int | None = None,
    what: str = "",
) -> tuple[str, int]:
    """Write a deterministic tar of ``src`` to ``dest``; return (sha256, size).

    The archive holds only regular files and directories. Without ``within`` any symlink
    in the tree is InvalidArgument (``src`` itself may be one: a client's code dir). With
    ``within`` (an output's outputs dir; ``src`` directly inside it) a symlink, ``src``
    included, that leads inside ``within`` is packed as what it leads to (a file, or a
    directory's tree); one that leads outside, nowhere, or round a cycle is InvalidArgument.
    What links add counts against ``link_budget`` bytes and :data:`MAX_MEMBERS` entries.
    A hard link is packed as the file it is: a known residual risk, since a stage that can
    hard-link a file on the same filesystem publishes it (with Linux's protected_hardlinks,
    only a file it could read anyway).
    """
    root = Path(src)
    with contextlib.ExitStack() as stack:
        if within is None:
            try:
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                raise InvalidArgument(f"{root} is not a directory") from None
            tree, real, via = _Tree(what or str(root)), os.path.realpath(root), False
        else:
            fd, real, via, tree = _open_output(root, within, what)
            assert tree.root_fd is not None
            stack.callback(os.close, tree.root_fd)
        stack.callback(os.close, fd)
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{root} is not a directory")
        tar = stack.enter_context(tarfile.open(dest, "w", format=tarfile.PAX_FORMAT))
        _Packer(tar, tree, link_budget).walk(fd, "", real, frozenset({(st.st_dev, st.st_ino)}), via)
    return hash_file(dest)


def unpack_dir(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    declared_size: int | None = None,
    max_bytes: int | None = None,
    max_members: int = MAX_MEMBERS,
) -> None:
    """Extract a packed directory: a plain tar as :func:`pack_dir` writes, never a compressed one.

    Refused (DataLoss), all before anything is extracted: an entry outside ``dest`` or
    not a plain file/dir; contents larger than the archive (``declared_size``, else the
    file's own size: a plain tar is always larger than what it holds) or than
    ``max_bytes``; more than ``max_members`` entries.
    """
    dest = Path(dest)
    limit = os.stat(archive).st_size
    if declared_size is not None:
        limit = min(limit, declared_size)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with _open_plain_tar(archive) as tar:
        # Check every entry before extracting any: nothing lands outside ``dest``, nothing
        # expands past its bounds.
        total = count = 0
        try:
            for member in tar:
                count += 1
                if count > max_members:
                    raise DataLoss(f"artifact archive has more than {max_members} entries")
                target = (root / member.name).resolve()
                if not (member.isfile() or member.isdir()) or member.issparse() or not target.is_relative_to(root):
                    raise DataLoss(f"artifact archive has an unsafe entry {member.name[:_SHOWN]!r}")
                total += member.size if member.isfile() else 0
                if total > limit:
                    raise DataLoss(f"artifact archive holds more than its own size ({limit} bytes): not a plain tar")
                if max_bytes is not None and total > max_bytes:
                    raise DataLoss(f"artifact archive expands to more than the extraction ceiling of {max_bytes} bytes")
        except tarfile.TarError as exc:
            raise DataLoss(f"artifact archive is corrupt: {exc}") from None
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; entries were checked above
            tar.extractall(dest)


def _open_plain_tar(archive: str | os.PathLike[str]) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:")  # "r:": plain only; "r" would inflate gzip, bz2, xz
    except tarfile.TarError:
        raise DataLoss("artifact archive is compressed or not a tar") from None


def describe(
    path: str | os.PathLike[str], scratch: str | os.PathLike[str], *, link_budget: int | None = None
) -> tuple[str, int, str, Path]:
    """Hash an output: (digest, size, kind, file to upload). Dirs are packed into ``scratch``.

    ``path`` is directly inside its outputs dir, and a symlink (``path`` itself or in its
    tree) may lead only inside that dir (:func:`pack_dir`); a file is uploaded from its
    real path.
    """
    p = Path(path)
    fd, real = open_output(p, p.parent)
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if not is_dir:
            with os.fdopen(os.dup(fd), "rb") as fh:
                digest, size = hash_file(fh)
            return digest, size, "file", Path(real)
    finally:
        os.close(fd)
    tmp_fd, tmp = tempfile.mkstemp(dir=scratch, suffix=".tar")
    os.close(tmp_fd)
    try:
        digest, size = pack_dir(p, tmp, within=p.parent, link_budget=link_budget)
    except BaseException:
        os.unlink(tmp)
        raise
    return digest, size, "dir", Path(tmp)


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


def place(blob: Path, kind: str, dest: Path, *, declared_size: int | None = None, max_bytes: int | None = None) -> None:
    """Make an artifact appear at ``dest``: a copied file or an unpacked dir, bounded by
    its declared size and ``max_bytes`` (:func:`unpack_dir`).

    A copy, not a hard link: a stage that wrote to its input would otherwise
    change the cached blob under its digest (invariant 6).
    """
    if kind == "dir":
        unpack_dir(blob, dest, declared_size=declared_size, max_bytes=max_bytes)
    else:
        shutil.copyfile(blob, dest)
