"""The agent's artifact cache: its index, LRU eviction, and keeping outputs."""

from __future__ import annotations

import time
from pathlib import Path

from agent.cache import BlobCache
from tests.helpers.agents import digest_of, put_blob


def test_scan_builds_index_in_lru_order_and_cleans_leftovers(tmp_path: Path) -> None:
    now = time.time()
    old = put_blob(tmp_path, b"old" * 100, now - 300)
    new = put_blob(tmp_path, b"new" * 10, now - 10)
    mid = put_blob(tmp_path, b"mid", now - 100)
    sha = tmp_path / "sha256"
    (sha / old[:2] / ".part-xyz").write_bytes(b"half a download")
    (sha / "tmpabc.tar").write_bytes(b"half a packed dir")
    (sha / "zz").mkdir()
    (sha / "zz" / "not-a-digest").write_bytes(b"x")  # foreign files are left alone
    (sha / new[:2] / ("0" * 64)).write_bytes(b"wrong dir")  # not in its digest's dir: ignored

    cache = BlobCache(tmp_path, 0)
    assert cache.scan() == 3
    assert cache.digests() == [old, mid, new]
    assert cache.total == 300 + 30 + 3
    assert cache.size(mid) == 3
    assert not (sha / old[:2] / ".part-xyz").exists()
    assert not (sha / "tmpabc.tar").exists()
    assert (sha / "zz" / "not-a-digest").exists()
    assert {(r.digest, r.size) for r in cache.refs()} == {(old, 300), (mid, 3), (new, 30)}


def test_add_touch_discard_update_index_and_version(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, 0)
    cache.scan()
    v = cache.version
    a, b = put_blob(tmp_path, b"a" * 10, time.time()), put_blob(tmp_path, b"b" * 20, time.time())
    cache.add(a, 10, "file")
    cache.add(b, 20)
    assert cache.digests() == [a, b] and cache.total == 30 and cache.version > v
    v = cache.version
    cache.touch(a)
    assert cache.digests() == [b, a]
    assert cache.version == v  # order is not inventory
    cache.touch(b, "dir")  # kind learned later
    assert {r.digest: r.kind for r in cache.refs()} == {a: "file", b: "dir"}
    cache.add(a, 10, "file")  # the same blob again: no change
    v = cache.version
    cache.add(a, 10)
    assert cache.version == v and {r.digest: r.kind for r in cache.refs()}[a] == "file"
    cache.discard(b)
    assert b not in cache and cache.total == 10 and cache.version > v


def test_touch_survives_a_restart(tmp_path: Path) -> None:
    now = time.time()
    a = put_blob(tmp_path, b"a", now - 100)
    b = put_blob(tmp_path, b"b", now - 50)
    cache = BlobCache(tmp_path, 0)
    cache.scan()
    cache.touch(a)
    again = BlobCache(tmp_path, 0)
    again.scan()
    assert again.digests() == [b, a]


def test_evict_least_recently_used_first_and_never_in_use(tmp_path: Path) -> None:
    now = time.time()
    blobs = [put_blob(tmp_path, bytes([i]) * 100, now - 100 + i) for i in range(5)]  # oldest first
    cache = BlobCache(tmp_path, 250)
    cache.scan()
    assert cache.total == 500
    cache.acquire(blobs[0])  # the oldest is being placed by a stage
    cache.acquire(blobs[0])
    cache.touch(blobs[1])  # and blob 1 was just used
    v = cache.version
    evicted = cache.evict()
    assert evicted == [blobs[2], blobs[3], blobs[4]]
    assert cache.total == 200 and cache.digests() == [blobs[0], blobs[1]]
    assert cache.version > v
    for d in evicted:
        assert not cache.path(d).exists()
    assert cache.path(blobs[0]).exists()
    # Still over nothing now; adding more evicts blob 1 (blob 0 is still in use).
    big = put_blob(tmp_path, b"z" * 100, now)
    cache.add(big, 100)
    assert cache.evict() == [blobs[1]]
    cache.release(blobs[0])
    assert cache.in_use(blobs[0])  # acquired twice
    cache.release(blobs[0])
    assert not cache.in_use(blobs[0])
    cache.max_bytes = 100
    assert cache.evict() == [blobs[0]]
    assert cache.digests() == [big]


def test_evict_everything_in_use_leaves_cache_over_bound(tmp_path: Path) -> None:
    a = put_blob(tmp_path, b"a" * 100, time.time())
    cache = BlobCache(tmp_path, 10)
    cache.scan()
    cache.acquire(a)
    assert cache.evict() == [] and a in cache
    cache.release(a)
    assert cache.evict() == [a]


def test_no_bound_means_no_eviction(tmp_path: Path) -> None:
    put_blob(tmp_path, b"a" * 1000, time.time())
    cache = BlobCache(tmp_path, 0)
    cache.scan()
    assert cache.evict() == [] and len(cache) == 1


def test_ingest_and_adopt_keep_an_output(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", 0)
    cache.scan()
    out = tmp_path / "model.bin"
    out.write_bytes(b"weights" * 1000)
    digest, size, tmp = cache.ingest_file(out)
    assert (digest, size) == (digest_of(out.read_bytes()), 7000)
    assert tmp.parent == cache.staging()
    blob = cache.adopt(digest, size, "file", tmp)
    assert blob == cache.path(digest) and blob.read_bytes() == out.read_bytes()
    assert not tmp.exists() and cache.size(digest) == 7000
    # Publishing the same bytes again drops the new temporary and keeps the blob.
    _, _, tmp2 = cache.ingest_file(out)
    assert cache.adopt(digest, size, "file", tmp2) == blob and not tmp2.exists()
    assert len(cache) == 1 and cache.total == 7000
