"""Transfers: fetching inputs through the cache, publishing outputs into it, and the
start-up bandwidth probe. Unit level: a fake ArtifactService, no scheduler."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from outrider.v1 import common_pb2
from tests.helpers.agents import digest_of, make_agent

MiB = 1 << 20


def test_published_outputs_stay_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, zones=["eu"])
        uploads: list[str] = []

        class FakeArtifacts:
            async def Stat(self, req):  # type: ignore[no-untyped-def]
                return SimpleNamespace(exists=False)

            async def Upload(self, chunks):  # type: ignore[no-untyped-def]
                got = [c async for c in chunks]
                uploads.append(got[0].header.digest)
                assert agent.cache.in_use(got[0].header.digest)  # not evictable mid-upload

        agent.transfers.attach(FakeArtifacts())  # as the session does once registered
        f = tmp_path / "out.txt"
        f.write_bytes(b"x" * 5000)
        d = tmp_path / "outdir"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "a").write_text("hello")
        ref_f = await agent.transfers.publish("f", f)
        ref_d = await agent.transfers.publish("d", d)
        assert uploads == [ref_f.digest, ref_d.digest]
        assert ref_f.kind == "file" and ref_d.kind == "dir"
        assert agent.cache.path(ref_f.digest).read_bytes() == f.read_bytes()
        assert digest_of(agent.cache.path(ref_d.digest).read_bytes()) == ref_d.digest
        assert not agent.cache.in_use(ref_f.digest) and not agent.cache.in_use(ref_d.digest)
        assert list((agent.cache.root).glob("*.tar")) == [] and list(agent.scratch.iterdir()) == []
        caps = agent.session.capabilities()
        assert list(caps.zones) == ["eu"]
        assert {(r.digest, r.size, r.kind) for r in caps.cached} == {
            (ref_f.digest, 5000, "file"), (ref_d.digest, ref_d.size, "dir")}
        # A downstream stage here finds its input locally: no download.
        async def no_download(*a):  # type: ignore[no-untyped-def]
            raise AssertionError("downloaded a cached input")

        monkeypatch.setattr(agent.transfers, "download", no_download)
        dest = tmp_path / "input"
        await agent.transfers.fetch(common_pb2.ArtifactRef(digest=ref_f.digest, kind="file"), dest)
        assert dest.read_bytes() == f.read_bytes()
        await agent.transfers.fetch(common_pb2.ArtifactRef(digest=ref_d.digest, kind="dir"), tmp_path / "indir")
        assert (tmp_path / "indir" / "sub" / "a").read_text() == "hello"

    asyncio.run(scenario())


def test_fetch_holds_the_blob_and_evicts_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, cache_max_bytes=150)
        seen_in_use: list[bool] = []
        payloads = {digest_of(b"A" * 100): b"A" * 100, digest_of(b"B" * 100): b"B" * 100}

        async def fake_download(digest: str, blob: Path, kind: str = "") -> Path:
            seen_in_use.append(agent.cache.in_use(digest))
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(payloads[digest])
            agent.cache.add(digest, 100, kind)
            agent.cache.evict()  # as the real one does: the fresh blob is in use, so it stays
            assert digest in agent.cache
            return blob

        monkeypatch.setattr(agent.transfers, "download", fake_download)
        a, b = list(payloads)
        await agent.transfers.fetch(common_pb2.ArtifactRef(digest=a, kind="file"), tmp_path / "a")
        assert agent.cache.digests() == [a]
        await agent.transfers.fetch(common_pb2.ArtifactRef(digest=b, kind="file"), tmp_path / "b")
        assert seen_in_use == [True, True]
        assert agent.cache.digests() == [b]  # 200 > 150: the least recently used went
        assert (tmp_path / "a").read_bytes() == b"A" * 100

    asyncio.run(scenario())


def test_startup_probe_tolerates_unimplemented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    class Unimplemented(grpc.aio.AioRpcError):
        def __init__(self) -> None:
            super().__init__(grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no Probe")

    class Stub:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def Probe(self, req, timeout=None):  # type: ignore[no-untyped-def]
            async def gen():  # type: ignore[no-untyped-def]
                if self.fail:
                    raise Unimplemented()
                for _ in range(req.size // MiB):
                    await asyncio.sleep(0.001)
                    yield SimpleNamespace(data=b"\0" * MiB)
            return gen()

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        assert not agent.transfers.probed
        agent.transfers.attach(Stub(fail=True))
        await agent.transfers.probe_link()
        assert agent.transfers.probed and agent.link.bandwidth_bps == 0.0
        agent.transfers.attach(Stub(fail=False))
        await agent.transfers.probe_link()
        assert agent.link.bandwidth_bps > 0
        assert agent.link.rtt_s == 0.0  # RTT comes from heartbeats, not the probe's first byte

    asyncio.run(scenario())


def test_probe_disabled_by_zero_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, bandwidth_probe_bytes=0)
        assert agent.transfers.probed  # the session never starts one

    asyncio.run(scenario())


def test_an_output_linking_out_of_the_outputs_dir_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8: a link to the agent's own key was uploaded byte-identical."""
    from outrider.errors import InvalidArgument

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        uploads: list[str] = []

        class FakeArtifacts:
            async def Stat(self, req):  # type: ignore[no-untyped-def]
                return SimpleNamespace(exists=False)

            async def Upload(self, chunks):  # type: ignore[no-untyped-def]
                uploads.append((await chunks.__anext__()).header.digest)

        agent.transfers.attach(FakeArtifacts())
        key = tmp_path / "agent.key"
        key.write_text("PRIVATE KEY")
        outputs = tmp_path / "outputs"
        (outputs / "d").mkdir(parents=True)
        (outputs / "key").symlink_to(key)
        (outputs / "d" / "key").symlink_to(key)
        for name in ("key", "d"):
            with pytest.raises(InvalidArgument, match=rf"output '{name}': the symlink {name}(/key)? -> .*agent.key"):
                await agent.transfers.publish(name, outputs / name)
        assert uploads == [] and agent.cache.digests() == []
        assert list(agent.scratch.iterdir()) == [] and list(agent.cache.root.rglob(".part-*")) == []
        # A link inside the outputs dir is published as the file it points to.
        (outputs / "real").write_text("mine")
        (outputs / "alias").symlink_to("real")
        ref = await agent.transfers.publish("alias", outputs / "alias")
        assert (ref.kind, ref.digest) == ("file", digest_of(b"mine")) and uploads == [ref.digest]

    asyncio.run(scenario())


def test_fetch_bounds_a_directory_by_max_extract_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from outrider.artifacts import pack_dir
    from outrider.errors import DataLoss

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, max_extract_bytes=1 * MiB)
        src = tmp_path / "src"
        src.mkdir()
        (src / "big").write_bytes(bytes(2 * MiB))
        digest, size = pack_dir(src, tmp_path / "t.tar")
        blob = agent.cache.path(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "t.tar").rename(blob)
        dest = tmp_path / "work" / "in"
        with pytest.raises(DataLoss, match=r"extraction ceiling of 1048576 bytes"):
            await agent.transfers.fetch(common_pb2.ArtifactRef(digest=digest, kind="dir", size=size), dest)
        assert not dest.exists() or list(dest.iterdir()) == []
        with pytest.raises(DataLoss, match=r"more than its own size \(4096 bytes\)"):  # a lying declared size
            await agent.transfers.fetch(common_pb2.ArtifactRef(digest=digest, kind="dir", size=4096), dest)
        agent.transfers.max_extract_bytes = 4 * MiB
        await agent.transfers.fetch(common_pb2.ArtifactRef(digest=digest, kind="dir", size=size), dest)
        assert (dest / "big").stat().st_size == 2 * MiB

    asyncio.run(scenario())


def test_transfers_in_flight_are_counted_as_they_go_and_forgotten_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the heartbeat figures carry for `outrider watch`'s progress line: bytes done of bytes in all."""
    from outrider.artifacts import CHUNK
    from outrider.v1 import artifact_pb2

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        data = b"y" * (3 * CHUNK)
        digest = digest_of(data)
        seen_up: list[tuple[str, int, int]] = []
        seen_down: list[tuple[str, int, int]] = []

        class FakeArtifacts:
            async def Stat(self, req):  # type: ignore[no-untyped-def]
                return SimpleNamespace(exists=False)

            async def Upload(self, chunks):  # type: ignore[no-untyped-def]
                async for _ in chunks:
                    seen_up.extend((t.direction, t.done_bytes, t.total_bytes) for t in agent.transfers.progress())

            async def Download(self, req):  # type: ignore[no-untyped-def]
                for i in range(3):
                    info = artifact_pb2.ArtifactInfo(digest=digest, size=len(data), kind="file") if i == 0 else None
                    yield artifact_pb2.DownloadChunk(info=info, data=data[i * CHUNK:(i + 1) * CHUNK])
                    seen_down.extend((t.direction, t.done_bytes, t.total_bytes) for t in agent.transfers.progress())

        agent.transfers.attach(FakeArtifacts())
        f = tmp_path / "out.bin"
        f.write_bytes(data)
        await agent.transfers.publish("o", f)
        assert seen_up[-1] == ("out", len(data), len(data)) and ("out", CHUNK, len(data)) in seen_up
        assert agent.transfers.progress() == []
        agent.cache.discard(digest)
        agent.cache.path(digest).unlink()
        await agent.transfers.fetch(common_pb2.ArtifactRef(digest=digest, kind="file", size=len(data)), tmp_path / "i")
        assert seen_down == [("in", CHUNK, len(data)), ("in", 2 * CHUNK, len(data)), ("in", 3 * CHUNK, len(data))]
        assert agent.transfers.progress() == []

    asyncio.run(scenario())
