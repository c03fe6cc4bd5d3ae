"""Tests for content-addressed artifacts: outrider.artifacts (pack, unpack, receive)
and scheduler.artifacts.ArtifactStore (verified uploads).

Invariant 6: every artifact's bytes match its digest wherever it is read, so a
mismatch anywhere is DataLoss and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from outrider.artifacts import Receiver, describe, hash_file, pack_dir, place, unpack_dir
from outrider.errors import DataLoss, InvalidArgument, NotFound
from scheduler.artifacts import ArtifactStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tree(root: Path, order: tuple[str, ...] = ("b", "a", "sub")) -> Path:
    """A small tree, created in the given order (creation order must not matter)."""
    root.mkdir(parents=True)
    for name in order:
        if name == "sub":
            (root / "sub" / "deeper").mkdir(parents=True)
            (root / "sub" / "z.txt").write_text("zzz")
            (root / "sub" / "deeper" / "w.bin").write_bytes(bytes(range(256)))
        else:
            (root / f"{name}.txt").write_text(f"content of {name}\n")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "empty").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None, bool]]:
    out: dict[str, tuple[str, bytes | None, bool]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir", None, False)
        else:
            out[rel] = ("file", p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


# --------------------------------------------------------------------------- pack_dir


def test_pack_dir_is_deterministic_across_mtimes_and_creation_order(tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one")
    d1, s1 = pack_dir(one, tmp_path / "one.tar")
    assert (d1, s1) == hash_file(tmp_path / "one.tar")

    # Same tree again, later: different mtimes.
    for p in one.rglob("*"):
        os.utime(p, (1_000_000, 1_000_000))
    os.utime(one, (2_000_000, 2_000_000))
    d2, s2 = pack_dir(one, tmp_path / "again.tar")
    assert (d2, s2) == (d1, s1)

    # The same content built elsewhere, in another order, with another mode on a plain file.
    two = make_tree(tmp_path / "two", order=("sub", "a", "b"))
    (two / "a.txt").chmod(0o600)
    assert pack_dir(two, tmp_path / "two.tar") == (d1, s1)


def test_pack_dir_digest_changes_with_content_names_and_exec_bit(tmp_path: Path) -> None:
    base = pack_dir(make_tree(tmp_path / "t0"), tmp_path / "t0.tar")[0]

    t1 = make_tree(tmp_path / "t1")
    (t1 / "a.txt").write_text("content of A\n")
    assert pack_dir(t1, tmp_path / "t1.tar")[0] != base

    t2 = make_tree(tmp_path / "t2")
    (t2 / "a.txt").rename(t2 / "c.txt")
    assert pack_dir(t2, tmp_path / "t2.tar")[0] != base

    t3 = make_tree(tmp_path / "t3")
    (t3 / "run.sh").chmod(0o644)
    assert pack_dir(t3, tmp_path / "t3.tar")[0] != base


def test_pack_dir_entries_are_sorted_and_anonymous(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    pack_dir(root, tmp_path / "t.tar")
    with tarfile.open(tmp_path / "t.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["empty", "sub", "a.txt", "b.txt"]  # per directory: dirs, then files, sorted
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)


def test_pack_dir_refuses_symlinks_and_non_directories(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    (root / "link").symlink_to(root / "a.txt")
    with pytest.raises(InvalidArgument, match="link"):
        pack_dir(root, tmp_path / "t.tar")
    with pytest.raises(InvalidArgument, match="not a directory"):
        pack_dir(root / "a.txt", tmp_path / "x.tar")


def test_describe_file_and_dir(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert describe(f, tmp_path) == (sha(b"hello"), 5, "file", f)
    root = make_tree(tmp_path / "t")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    digest, size, kind, blob = describe(root, scratch)
    assert kind == "dir" and blob.parent == scratch
    assert (digest, size) == pack_dir(root, tmp_path / "ref.tar")
    with pytest.raises(InvalidArgument):
        describe(tmp_path / "missing", tmp_path)


# --------------------------------------------------------------------------- unpack_dir


def test_unpack_dir_round_trips(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src")
    digest, _ = pack_dir(root, tmp_path / "t.tar")
    out = tmp_path / "out"
    unpack_dir(tmp_path / "t.tar", out)
    assert snapshot(out) == snapshot(root)
    assert os.access(out / "run.sh", os.X_OK)
    # And repacking what came out gives the same digest.
    assert pack_dir(out, tmp_path / "again.tar")[0] == digest


def test_place_copies_files_and_unpacks_dirs(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"data")
    place(blob, "file", tmp_path / "copy")
    (tmp_path / "copy").write_bytes(b"changed")  # a stage writing to its input...
    assert blob.read_bytes() == b"data"  # ...never changes the cached blob
    root = make_tree(tmp_path / "src")
    pack_dir(root, tmp_path / "t.tar")
    place(tmp_path / "t.tar", "dir", tmp_path / "dir")
    assert snapshot(tmp_path / "dir") == snapshot(root)


def evil_tar(path: Path, *members: tarfile.TarInfo, data: bytes = b"pwned") -> Path:
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))  # a harmless entry first: nothing may be extracted at all
        for m in members:
            if m.isfile():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)
    return path


def file_entry(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_entry(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        file_entry("../escape.txt"),
        file_entry("sub/../../escape.txt"),
        file_entry("/tmp/outrider-test-absolute-escape.txt"),
        link_entry("link", "/etc/passwd"),
        link_entry("link", "../escape.txt"),
        link_entry("hard", "fine.txt", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-abs", "symlink-rel", "hardlink"],
)
def test_unpack_dir_refuses_unsafe_entries(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = evil_tar(tmp_path / "evil.tar", member)
    dest = tmp_path / "work" / "out"
    with pytest.raises(DataLoss, match="unsafe entry"):
        unpack_dir(archive, dest)
    assert not (tmp_path / "work" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/outrider-test-absolute-escape.txt").exists()
    assert list(dest.iterdir()) == []  # refused before anything was extracted


def test_unpack_dir_refuses_sibling_prefix_escape(tmp_path: Path) -> None:
    """``../out-evil/x`` resolves to a sibling whose path *starts with* the
    destination's path string; it is still outside the destination."""
    dest = tmp_path / "out"
    archive = evil_tar(tmp_path / "evil.tar", file_entry("../out-evil/x.txt"))
    with pytest.raises(DataLoss, match="unsafe entry"):
        unpack_dir(archive, dest)
    assert not (tmp_path / "out-evil").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


# --------------------------------------------------------------------------- Receiver


def test_receiver_publishes_verified_bytes(tmp_path: Path) -> None:
    data = os.urandom(3000)
    dest = tmp_path / "cache" / "blob"
    r = Receiver(sha(data), dest)
    for i in range(0, len(data), 1000):
        r.write(data[i : i + 1000])
    assert not dest.exists()  # nothing visible before it is verified
    assert r.finish() == dest
    assert dest.read_bytes() == data and r.size == len(data)
    assert [p.name for p in dest.parent.iterdir()] == ["blob"]  # no temporary left


def test_receiver_refuses_digest_mismatch_and_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "blob"
    r = Receiver(sha(b"expected"), dest)
    r.write(b"something else")
    with pytest.raises(DataLoss) as exc:
        r.finish()
    assert sha(b"expected") in str(exc.value) and sha(b"something else") in str(exc.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_receiver_mismatch_keeps_an_older_good_copy(tmp_path: Path) -> None:
    dest = tmp_path / "blob"
    dest.write_bytes(b"good")
    r = Receiver(sha(b"good"), dest)
    r.write(b"bad")
    with pytest.raises(DataLoss):
        r.finish()
    assert dest.read_bytes() == b"good"


def test_receiver_abort_leaves_no_file(tmp_path: Path) -> None:
    r = Receiver(sha(b"x"), tmp_path / "blob")
    r.write(b"x")
    r.abort()
    r.abort()  # twice is fine
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- ArtifactStore


def stored_files(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


def test_store_upload_with_right_digest_is_stored_and_readable(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = os.urandom((1 << 20) * 2 + 12345)  # more than two read chunks
    digest = sha(data)
    up = store.writer(digest, len(data))
    for i in range(0, len(data), 65536):
        up.write(data[i : i + 65536])
    assert not store.exists(digest)  # not before commit
    up.commit()
    assert store.exists(digest)
    assert store.path(digest) == tmp_path / "artifacts" / "sha256" / digest[:2] / digest
    assert store.size(digest) == len(data)
    assert b"".join(store.read_chunks(digest)) == data
    assert b"".join(store.read_chunks(digest, offset=1000)) == data[1000:]
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []


def test_store_empty_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.writer(sha(b""), 0).commit()
    assert store.exists(sha(b"")) and b"".join(store.read_chunks(sha(b""))) == b""


@pytest.mark.parametrize(
    ("declared_digest", "declared_size", "sent"),
    [
        (sha(b"the real thing"), len(b"the real thing"), b"the fake thing"),  # wrong digest, same size
        (sha(b"the real thing"), 99, b"the real thing"),  # right digest, wrong size
        (sha(b"the real thing"), len(b"the real thing"), b"the real"),  # truncated
    ],
    ids=["digest", "size", "truncated"],
)
def test_store_upload_mismatch_is_data_loss_and_stores_nothing(
    tmp_path: Path, declared_digest: str, declared_size: int, sent: bytes
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    up = store.writer(declared_digest, declared_size)
    up.write(sent)
    with pytest.raises(DataLoss, match="nothing was stored"):
        up.commit()
    assert not store.exists(declared_digest)
    assert not store.exists(sha(sent))
    assert stored_files(store) == []


def test_store_upload_longer_than_declared_is_refused_at_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    up = store.writer(sha(b"abc"), 3)
    up.write(b"ab")
    with pytest.raises(DataLoss, match="declared size"):
        up.write(b"cd")
    assert stored_files(store) == []


def test_store_reupload_is_harmless(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for _ in range(2):
        up = store.writer(sha(b"x"), 1)
        up.write(b"x")
        up.commit()
    assert b"".join(store.read_chunks(sha(b"x"))) == b"x"
    assert len(stored_files(store)) == 1


def test_store_abort_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    up = store.writer(sha(b"x"), 1)
    up.write(b"x")
    up.abort()
    assert stored_files(store) == []


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "a" * 63, "../" + "a" * 61])
def test_store_refuses_malformed_digests(tmp_path: Path, bad: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidArgument, match="digest"):
        store.writer(bad, 1)
    with pytest.raises(InvalidArgument):
        store.path(bad)
    assert store.exists(bad) is False


def test_store_refuses_negative_size_and_reports_missing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidArgument, match="negative"):
        store.writer(sha(b"x"), -1)
    with pytest.raises(NotFound):
        store.size(sha(b"nope"))
    with pytest.raises(NotFound):
        list(store.read_chunks(sha(b"nope")))


# --------------------------------------------------------------------------- symlinks in outputs (issue 8)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """A stage's outputs dir, with a secret beside it (the agent's key, say) that no link may reach."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "agent.key").write_text("PRIVATE KEY")
    out = tmp_path / "work" / ".outrider" / "outputs"
    out.mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    return out


def test_pack_dir_of_a_plain_tree_is_byte_identical_to_before(tmp_path: Path) -> None:
    """Packing from file descriptors changed no digest: caches and checkpoints stay valid."""
    root = make_tree(tmp_path / "one")
    (root / "sub" / ("long" * 40)).mkdir()
    (root / "sub" / ("long" * 40) / "ünï.txt").write_text("x")
    expected = "1b0d96422b8cf9b62631ac74e5cc4164736738f9d9d13b05d8bbe0fb9388971b"  # the os.walk packer's
    assert pack_dir(root, tmp_path / "one.tar") == (expected, 20480)
    assert describe(root, tmp_path)[:2] == (expected, 20480)


@pytest.mark.parametrize("target", ["secret-file", "secret-dir", "/etc/passwd", "relative-escape"])
def test_an_output_that_links_out_of_the_outputs_dir_is_refused(outputs: Path, target: str) -> None:
    secret = outputs.parents[2] / "secret"
    to = {
        "secret-file": str(secret / "agent.key"),
        "secret-dir": str(secret),
        "/etc/passwd": "/etc/passwd",
        "relative-escape": "../../../secret/agent.key",
    }[target]
    (outputs / "out").symlink_to(to)
    with pytest.raises(InvalidArgument, match=r"symlink out -> .* points outside the outputs dir") as err:
        describe(outputs / "out", outputs.parents[2] / "scratch")
    assert to in str(err.value)
    assert list((outputs.parents[2] / "scratch").iterdir()) == []  # no tar left behind


def test_a_link_inside_a_directory_output_that_leads_out_is_refused(outputs: Path) -> None:
    d = outputs / "d"
    (d / "sub").mkdir(parents=True)
    (d / "ok.txt").write_text("ok")
    (d / "sub" / "leak").symlink_to(outputs.parents[2] / "secret" / "agent.key")
    with pytest.raises(InvalidArgument, match=r"output .*: the symlink d/sub/leak -> .* points outside"):
        describe(d, outputs.parents[2] / "scratch")
    with pytest.raises(InvalidArgument, match="outside"):
        pack_dir(d, outputs.parents[2] / "t.tar", within=outputs, what="output 'd'")


@pytest.mark.parametrize("kind", ["dangling", "file-cycle", "dir-cycle", "self", "outputs-dir"])
def test_dangling_links_and_cycles_are_refused(outputs: Path, kind: str) -> None:
    scratch = outputs.parents[2] / "scratch"
    if kind == "dangling":
        (outputs / "out").symlink_to(outputs / "nothing")
        match = r"symlink out -> .*nothing.* leads to nothing \(it dangles\)"
    elif kind == "file-cycle":
        (outputs / "out").symlink_to("other")
        (outputs / "other").symlink_to("out")
        match = r"symlink out -> 'other' leads to a cycle of links"
    elif kind == "dir-cycle":
        (outputs / "out" / "sub").mkdir(parents=True)
        (outputs / "out" / "sub" / "up").symlink_to("..")
        match = r"the symlink out/sub/up leads round a cycle of links"
    elif kind == "self":
        (outputs / "out").symlink_to("out")
        match = r"symlink out -> 'out' leads to a cycle of links"
    else:
        (outputs / "out").mkdir()
        (outputs / "out" / "all").symlink_to(outputs)
        match = r"the symlink out/all leads round a cycle of links"
    with pytest.raises(InvalidArgument, match=match):
        describe(outputs / "out", scratch)
    assert list(scratch.iterdir()) == []


def test_links_inside_the_outputs_dir_are_packed_as_what_they_point_to(outputs: Path, tmp_path: Path) -> None:
    (outputs / "model" / "v3").mkdir(parents=True)
    (outputs / "model" / "v3" / "weights.bin").write_bytes(b"w" * 1000)
    (outputs / "model" / "latest").symlink_to("v3")  # a dir link: packed as its tree
    (outputs / "model" / "readme").symlink_to(outputs / "notes.txt")  # absolute, to a sibling output
    (outputs / "notes.txt").write_text("notes")
    (outputs / "alias").symlink_to("notes.txt")  # an output that is a link to a file
    digest, size, kind, blob = describe(outputs / "model", tmp_path / "scratch")
    assert kind == "dir"
    with tarfile.open(blob) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert all(m.isfile() or m.isdir() for m in members.values())  # links became content
    assert set(members) == {"latest", "v3", "readme", "latest/weights.bin", "v3/weights.bin"}
    unpack_dir(blob, tmp_path / "got")
    assert (tmp_path / "got" / "latest" / "weights.bin").read_bytes() == b"w" * 1000
    assert (tmp_path / "got" / "readme").read_text() == "notes"
    # The same as packing the tree the links stand for.
    plain = tmp_path / "plain"
    (plain / "v3").mkdir(parents=True)
    (plain / "v3" / "weights.bin").write_bytes(b"w" * 1000)
    (plain / "latest").mkdir()
    (plain / "latest" / "weights.bin").write_bytes(b"w" * 1000)
    (plain / "readme").write_text("notes")
    assert pack_dir(plain, tmp_path / "plain.tar") == (digest, size)
    f_digest, f_size, f_kind, f_path = describe(outputs / "alias", tmp_path / "scratch")
    assert (f_digest, f_size, f_kind) == (sha(b"notes"), 5, "file")
    assert f_path == Path(os.path.realpath(outputs / "notes.txt"))  # uploaded from the real file


def test_what_links_add_to_an_output_is_bounded(outputs: Path, tmp_path: Path) -> None:
    """Links that each repeat a big directory must not fill the agent's disk while packing."""
    (outputs / "d" / "big").mkdir(parents=True)
    (outputs / "d" / "big" / "blob").write_bytes(b"b" * 4096)
    for i in range(4):
        (outputs / "d" / f"copy{i}").symlink_to("big")
    with pytest.raises(InvalidArgument, match="the symlinks in it add more than 10000 bytes"):
        pack_dir(outputs / "d", tmp_path / "t.tar", within=outputs, link_budget=10_000, what="output 'd'")
    pack_dir(outputs / "d", tmp_path / "t.tar", within=outputs, link_budget=4 * 4096)


def test_a_fifo_in_an_output_is_refused_without_blocking(outputs: Path, tmp_path: Path) -> None:
    (outputs / "d").mkdir()
    os.mkfifo(outputs / "d" / "pipe")
    (outputs / "p").symlink_to(outputs / "d" / "pipe")
    with pytest.raises(InvalidArgument, match="only regular files and directories"):
        describe(outputs / "d", tmp_path / "scratch")
    with pytest.raises(InvalidArgument, match="only regular files and directories"):
        describe(outputs / "p", tmp_path / "scratch")


# --------------------------------------------------------------------------- bounded extraction (issue 8)


def _zeros_tar(path: Path, size: int, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_unpack_dir_refuses_a_compressed_archive(tmp_path: Path) -> None:
    """A 2 MiB file of zeros gzips to a few KiB: "r" would inflate it; only plain tars are ours."""
    for mode in ("w:gz", "w:bz2", "w:xz"):
        archive = _zeros_tar(tmp_path / f"bomb.{mode[2:]}", 2 << 20, mode)
        assert archive.stat().st_size < 64 << 10
        dest = tmp_path / f"out-{mode[2:]}"
        with pytest.raises(DataLoss, match="artifact archive is compressed or not a tar"):
            unpack_dir(archive, dest)
        assert not dest.exists() or list(dest.iterdir()) == []


def test_unpack_dir_refuses_contents_larger_than_the_declared_size(tmp_path: Path) -> None:
    archive = _zeros_tar(tmp_path / "t.tar", 2 << 20)
    dest = tmp_path / "out"
    with pytest.raises(DataLoss, match=r"more than its own size \(65536 bytes\)"):
        unpack_dir(archive, dest, declared_size=64 << 10)
    assert not dest.exists() or list(dest.iterdir()) == []
    unpack_dir(archive, dest, declared_size=archive.stat().st_size)
    assert (dest / "zeros.bin").stat().st_size == 2 << 20


def test_unpack_dir_refuses_contents_above_the_ceiling_and_too_many_entries(tmp_path: Path) -> None:
    archive = _zeros_tar(tmp_path / "t.tar", 2 << 20)
    dest = tmp_path / "out"
    with pytest.raises(DataLoss, match=r"more than the extraction ceiling of 1048576 bytes"):
        unpack_dir(archive, dest, max_bytes=1 << 20)
    with pytest.raises(DataLoss, match=r"more than 2 entries"):
        root = make_tree(tmp_path / "many")
        pack_dir(root, tmp_path / "many.tar")
        unpack_dir(tmp_path / "many.tar", dest, max_members=2)
    assert list(dest.iterdir()) == []
    with pytest.raises(DataLoss, match=r"ceiling of 1048576"):
        place(archive, "dir", tmp_path / "placed", declared_size=archive.stat().st_size, max_bytes=1 << 20)
    assert list((tmp_path / "placed").iterdir()) == []


def test_two_replicas_writing_one_blob_at_once_store_it_once_and_whole(tmp_path: Path) -> None:
    """High availability (docs/ha.md): two schedulers on one shared artifact dir (two stores on
    one root) upload the same blob at the same moment, many times over; every commit succeeds,
    the blob is whole, and no temporary file is left."""
    import hashlib
    import threading

    from scheduler.artifacts import ArtifactStore as Blobs

    root = tmp_path / "shared"
    replicas = [Blobs(root), Blobs(root)]
    errors: list[BaseException] = []
    for round_ in range(20):
        data = f"blob {round_} ".encode() * 50_000
        digest = hashlib.sha256(data).hexdigest()
        start = threading.Barrier(2)

        def upload(store: Blobs, data: bytes = data, digest: str = digest, start: threading.Barrier = start) -> None:
            try:
                w = store.writer(digest, len(data))
                start.wait()
                for i in range(0, len(data), 65536):
                    w.write(data[i : i + 65536])
                w.commit()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(s,)) for s in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert replicas[1].path(digest).read_bytes() == data
    assert list((root / "tmp").iterdir()) == []
