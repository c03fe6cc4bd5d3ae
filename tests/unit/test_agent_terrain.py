"""The agent's view of its terrain: zones, power, link measurements, cache inventory,
and when it tells the scheduler about changes. Unit level: no scheduler runs."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.link import MIN_TRANSFER_BYTES, LinkMeter, TransferTimer
from agent.probe import capabilities_changed, probe_capabilities, probe_power
from outrider import pki
from outrider.errors import ConfigError
from outrider.v1 import common_pb2

MiB = 1 << 20


# --------------------------------------------------------------------------- config: zones and sizes


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, "test.ml")
    pki.issue(d, "agent", "edge-1")
    return d


def load(pki_dir: Path, *argv: str):  # type: ignore[no-untyped-def]
    from agent.main import load_config

    return load_config(["--scheduler", "sched:7443", "--pki-dir", str(pki_dir), "--name", "edge-1", *argv])


def toml(tmp_path: Path, pki_dir: Path, body: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(f'scheduler = "s:1"\npki_dir = "{pki_dir}"\nname = "edge-1"\n{body}')
    return str(path)


def test_defaults(pki_dir: Path) -> None:
    cfg = load(pki_dir)
    assert cfg.zones == []
    assert cfg.bandwidth_probe_bytes == 4 * MiB
    assert cfg.cache_max_bytes == 10 << 30


def test_zones_flag(pki_dir: Path) -> None:
    assert load(pki_dir, "--zones", "eu,eu-west").zones == ["eu", "eu-west"]
    assert load(pki_dir, "--zones", " eu , eu.west_2 ,eu").zones == ["eu", "eu.west_2"]  # trimmed, deduplicated
    assert load(pki_dir, "--zones", "").zones == []


def test_zones_toml_list_and_string(pki_dir: Path, tmp_path: Path) -> None:
    from agent.main import load_config

    assert load_config(["--config", toml(tmp_path, pki_dir, 'zones = ["eu", "eu-west"]\n')]).zones == ["eu", "eu-west"]
    assert load_config(["--config", toml(tmp_path, pki_dir, 'zones = "eu,eu-west"\n')]).zones == ["eu", "eu-west"]
    # Flags win over the file.
    path = toml(tmp_path, pki_dir, 'zones = ["eu"]\n')
    assert load_config(["--config", path, "--zones", "us"]).zones == ["us"]


@pytest.mark.parametrize("body, bad", [
    ('zones = ["eu", ""]\n', "''"),
    ('zones = ["eu west"]\n', "'eu west'"),
    ('zones = ["eu/west"]\n', "'eu/west'"),
    ("zones = [1]\n", "1"),
    ("zones = 5\n", "5"),
    ('zones = "eu,,west"\n', "''"),
])
def test_bad_zones_in_toml_name_the_key_and_value(pki_dir: Path, tmp_path: Path, body: str, bad: str) -> None:
    from agent.main import load_config

    path = toml(tmp_path, pki_dir, body)
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", path])
    msg = str(exc.value)
    assert "zones" in msg and path in msg and bad in msg


def test_bad_zones_flag_names_the_flag(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"--zones.*'eu\*'"):
        load(pki_dir, "--zones", "eu,eu*")


def test_sizes_parse_and_errors_name_the_key(pki_dir: Path, tmp_path: Path) -> None:
    from agent.main import load_config

    cfg = load(pki_dir, "--bandwidth-probe-bytes", "0", "--cache-max-bytes", "512MiB")
    assert (cfg.bandwidth_probe_bytes, cfg.cache_max_bytes) == (0, 512 * MiB)
    cfg = load_config(["--config", toml(tmp_path, pki_dir, 'bandwidth_probe_bytes = "1MiB"\ncache_max_bytes = 1000\n')])
    assert (cfg.bandwidth_probe_bytes, cfg.cache_max_bytes) == (MiB, 1000)
    for key in ("bandwidth_probe_bytes", "cache_max_bytes"):
        path = toml(tmp_path, pki_dir, f'{key} = "lots"\n')
        with pytest.raises(ConfigError) as exc:
            load_config(["--config", path])
        assert key in str(exc.value) and path in str(exc.value)
    with pytest.raises(ConfigError, match="cache_max_bytes"):
        load(pki_dir, "--cache-max-bytes", "-5")


def test_zones_reach_capabilities(tmp_path: Path) -> None:
    caps = probe_capabilities({}, 1, str(tmp_path), ["eu", "eu-west"])
    assert list(caps.zones) == ["eu", "eu-west"]
    assert caps.HasField("power")


# --------------------------------------------------------------------------- power


def test_power_battery_present(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery",
                        lambda: SimpleNamespace(percent=42.5, secsleft=3600, power_plugged=False))
    p = probe_power()
    assert (p.has_battery, p.on_battery, p.battery_percent) == (True, True, 42.5)
    monkeypatch.setattr(psutil, "sensors_battery",
                        lambda: SimpleNamespace(percent=100, secsleft=-2, power_plugged=True))
    p = probe_power()
    assert (p.has_battery, p.on_battery, p.battery_percent) == (True, False, 100.0)
    # Plugged state unknown: not claimed to be on battery.
    monkeypatch.setattr(psutil, "sensors_battery",
                        lambda: SimpleNamespace(percent=float("nan"), secsleft=-1, power_plugged=None))
    p = probe_power()
    assert (p.has_battery, p.on_battery, p.battery_percent) == (True, False, 0.0)


def test_power_no_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    assert probe_power() == common_pb2.Power(has_battery=False)


@pytest.mark.parametrize("exc", [OSError("EIO"), RuntimeError("boom"), AttributeError("no sensors")])
def test_power_probe_never_raises(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    import psutil

    def broken():  # type: ignore[no-untyped-def]
        raise exc

    monkeypatch.setattr(psutil, "sensors_battery", broken)
    assert probe_power() == common_pb2.Power()


def test_power_probe_without_sensors_support(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.delattr(psutil, "sensors_battery", raising=False)
    assert probe_power().has_battery is False


# --------------------------------------------------------------------------- LinkMeter


def test_first_transfer_is_taken_as_is_then_ewma() -> None:
    m = LinkMeter(alpha=0.3, full_weight_bytes=MiB)
    assert (m.bandwidth_bps, m.rtt_s) == (0.0, 0.0)
    assert m.observe_transfer(10 * MiB, 1.0)
    assert m.bandwidth_bps == pytest.approx(10 * MiB)
    assert m.observe_transfer(2 * MiB, 1.0)  # full weight: bw += 0.3 * (2 MiB/s - 10 MiB/s)
    assert m.bandwidth_bps == pytest.approx(10 * MiB + 0.3 * (2 * MiB - 10 * MiB))
    expected = m.bandwidth_bps
    for _ in range(20):  # converges to a steady new rate
        m.observe_transfer(4 * MiB, 2.0)
        expected += 0.3 * (2 * MiB - expected)
    assert m.bandwidth_bps == pytest.approx(expected)
    assert m.bandwidth_bps == pytest.approx(2 * MiB, rel=0.01)
    assert m.transfers == 22


def test_small_transfers_weigh_less() -> None:
    m = LinkMeter(alpha=0.3, full_weight_bytes=MiB)
    m.observe_transfer(8 * MiB, 1.0)  # 8 MiB/s
    m.observe_transfer(256 * 1024, 1.0)  # a quarter of full weight: 0.075
    assert m.bandwidth_bps == pytest.approx(8 * MiB + 0.075 * (256 * 1024 - 8 * MiB))


def test_tiny_and_nonsense_transfers_are_ignored() -> None:
    m = LinkMeter()
    assert not m.observe_transfer(MIN_TRANSFER_BYTES - 1, 0.001)
    assert not m.observe_transfer(MiB, 0.0)
    assert not m.observe_transfer(MiB, -1.0)
    assert not m.observe_transfer(MiB, float("nan"))
    assert not m.observe_transfer(MiB, float("inf"))
    assert (m.bandwidth_bps, m.transfers) == (0.0, 0)
    assert m.observe_transfer(MIN_TRANSFER_BYTES, 0.5)
    assert m.bandwidth_bps == pytest.approx(MIN_TRANSFER_BYTES / 0.5)


def test_rtt_is_the_min_over_a_sliding_window() -> None:
    m = LinkMeter(rtt_window=3)
    for rtt in (0.050, 0.020, 0.200):  # a queueing spike does not show
        assert m.observe_rtt(rtt)
    assert m.rtt_s == pytest.approx(0.020)
    m.observe_rtt(0.090)
    m.observe_rtt(0.080)  # the 20 ms sample has left the window: the path got longer
    assert m.rtt_s == pytest.approx(0.080)
    # Clock steps between send and reply are not round trips.
    assert not m.observe_rtt(-0.5)
    assert not m.observe_rtt(1e6)
    assert not m.observe_rtt(float("nan"))
    assert m.rtt_s == pytest.approx(0.080)


def test_meter_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LinkMeter(alpha=0)
    with pytest.raises(ValueError):
        LinkMeter(rtt_window=0)


def test_transfer_timer_leaves_out_the_first_chunk_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.link as link

    clock = iter([100.0, 100.5, 100.6, 100.7, 100.8])  # start, then four chunks
    monkeypatch.setattr(link.time, "monotonic", lambda: next(clock))
    t = TransferTimer()
    for _ in range(4):
        t.chunk(MiB)
    assert t.first_byte_s == pytest.approx(0.5)
    nbytes, seconds = t.result()
    assert nbytes == 3 * MiB and seconds == pytest.approx(0.3)


def test_transfer_timer_single_chunk_uses_the_whole_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.link as link

    clock = iter([10.0, 10.25])
    monkeypatch.setattr(link.time, "monotonic", lambda: next(clock))
    t = TransferTimer()
    t.chunk(512 * 1024)
    assert t.result() == (512 * 1024, pytest.approx(0.25))


# --------------------------------------------------------------------------- cache index


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(root: Path, data: bytes, mtime: float) -> str:
    d = digest_of(data)
    p = root / "sha256" / d[:2] / d
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (mtime, mtime))
    return d


def test_scan_builds_index_in_lru_order_and_cleans_leftovers(tmp_path: Path) -> None:
    from agent.daemon import BlobCache

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
    from agent.daemon import BlobCache

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
    from agent.daemon import BlobCache

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
    from agent.daemon import BlobCache

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
    from agent.daemon import BlobCache

    a = put_blob(tmp_path, b"a" * 100, time.time())
    cache = BlobCache(tmp_path, 10)
    cache.scan()
    cache.acquire(a)
    assert cache.evict() == [] and a in cache
    cache.release(a)
    assert cache.evict() == [a]


def test_no_bound_means_no_eviction(tmp_path: Path) -> None:
    from agent.daemon import BlobCache

    put_blob(tmp_path, b"a" * 1000, time.time())
    cache = BlobCache(tmp_path, 0)
    cache.scan()
    assert cache.evict() == [] and len(cache) == 1


def test_ingest_and_adopt_keep_an_output(tmp_path: Path) -> None:
    from agent.daemon import BlobCache

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


# --------------------------------------------------------------------------- the daemon's cache use


def make_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **cfg_kw):  # type: ignore[no-untyped-def]
    """An Agent with probing stubbed out (no scheduler, no GPUs needed)."""
    import agent.daemon as daemon
    import agent.probe as probe
    from agent.config import AgentConfig

    monkeypatch.setattr(probe, "probe_capabilities",
                        lambda labels, slots, state_dir, zones=(): common_pb2.Capabilities(
                            slots=slots, labels=labels, zones=list(zones)))
    monkeypatch.setattr(daemon, "reap_orphans", lambda root: 0)
    cfg = AgentConfig(scheduler="s:1", state_dir=str(tmp_path / "state"), slots=1, **cfg_kw)
    return daemon.Agent(cfg)


def test_published_outputs_stay_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.daemon as daemon

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

        agent._artifacts = FakeArtifacts()  # type: ignore[assignment]
        agent.connected.set()
        f = tmp_path / "out.txt"
        f.write_bytes(b"x" * 5000)
        d = tmp_path / "outdir"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "a").write_text("hello")
        ref_f = await agent._publish("f", f)
        ref_d = await agent._publish("d", d)
        assert uploads == [ref_f.digest, ref_d.digest]
        assert ref_f.kind == "file" and ref_d.kind == "dir"
        assert agent.cache.path(ref_f.digest).read_bytes() == f.read_bytes()
        assert digest_of(agent.cache.path(ref_d.digest).read_bytes()) == ref_d.digest
        assert not agent.cache.in_use(ref_f.digest) and not agent.cache.in_use(ref_d.digest)
        assert list((agent.cache.root).glob("*.tar")) == [] and list(agent.scratch.iterdir()) == []
        caps = agent.capabilities()
        assert list(caps.zones) == ["eu"]
        assert {(r.digest, r.size, r.kind) for r in caps.cached} == {
            (ref_f.digest, 5000, "file"), (ref_d.digest, ref_d.size, "dir")}
        # A downstream stage here finds its input locally: no download.
        async def no_download(*a):  # type: ignore[no-untyped-def]
            raise AssertionError("downloaded a cached input")

        monkeypatch.setattr(agent, "_download", no_download)
        dest = tmp_path / "input"
        await agent._fetch(common_pb2.ArtifactRef(digest=ref_f.digest, kind="file"), dest)
        assert dest.read_bytes() == f.read_bytes()
        await agent._fetch(common_pb2.ArtifactRef(digest=ref_d.digest, kind="dir"), tmp_path / "indir")
        assert (tmp_path / "indir" / "sub" / "a").read_text() == "hello"

    assert daemon  # imported for monkeypatching in make_agent
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
            agent._evict()  # as the real one does: the fresh blob is in use, so it stays
            assert digest in agent.cache
            return blob

        monkeypatch.setattr(agent, "_download", fake_download)
        a, b = list(payloads)
        await agent._fetch(common_pb2.ArtifactRef(digest=a, kind="file"), tmp_path / "a")
        assert agent.cache.digests() == [a]
        await agent._fetch(common_pb2.ArtifactRef(digest=b, kind="file"), tmp_path / "b")
        assert seen_in_use == [True, True]
        assert agent.cache.digests() == [b]  # 200 > 150: the least recently used went
        assert (tmp_path / "a").read_bytes() == b"A" * 100

    asyncio.run(scenario())


# --------------------------------------------------------------------------- changed → send capabilities


def caps(**kw) -> common_pb2.Capabilities:  # type: ignore[no-untyped-def]
    base = dict(cpu_cores=4, zones=["eu"], bandwidth_bps=10e6, rtt_s=0.050,
                power=common_pb2.Power(has_battery=True, on_battery=False, battery_percent=80),
                cached=[common_pb2.ArtifactRef(digest="a" * 64, size=10)])
    base.update(kw)
    return common_pb2.Capabilities(**base)


def test_nothing_sent_yet_is_a_change() -> None:
    assert capabilities_changed(None, caps())


def test_unchanged_and_small_changes_are_not_sent() -> None:
    assert not capabilities_changed(caps(), caps())
    assert not capabilities_changed(caps(), caps(bandwidth_bps=10.9e6))  # +9 %
    assert not capabilities_changed(caps(), caps(rtt_s=0.054))  # +8 %
    assert not capabilities_changed(caps(), caps(power=common_pb2.Power(
        has_battery=True, on_battery=False, battery_percent=77)))
    assert not capabilities_changed(caps(rtt_s=0.0004), caps(rtt_s=0.0009))  # LAN jitter: > 10 %, < 2 ms
    # Same inventory in another order.
    two = [common_pb2.ArtifactRef(digest="a" * 64, size=10), common_pb2.ArtifactRef(digest="b" * 64, size=5)]
    assert not capabilities_changed(caps(cached=two), caps(cached=two[::-1]))


@pytest.mark.parametrize("new", [
    caps(bandwidth_bps=11.1e6),
    caps(bandwidth_bps=8.9e6),
    caps(rtt_s=0.056),
    caps(rtt_s=0.044),
    caps(power=common_pb2.Power(has_battery=True, on_battery=True, battery_percent=80)),
    caps(power=common_pb2.Power(has_battery=True, on_battery=False, battery_percent=74)),
    caps(power=common_pb2.Power()),
    caps(cached=[]),
    caps(cached=[common_pb2.ArtifactRef(digest="b" * 64, size=10)]),
    caps(cached=[common_pb2.ArtifactRef(digest="a" * 64, size=10), common_pb2.ArtifactRef(digest="b" * 64, size=1)]),
    caps(zones=["eu", "eu-west"]),
])
def test_real_changes_are_sent(new: common_pb2.Capabilities) -> None:
    assert capabilities_changed(caps(), new)


def test_first_measurement_is_a_change() -> None:
    assert capabilities_changed(caps(bandwidth_bps=0), caps(bandwidth_bps=1.0))
    assert capabilities_changed(caps(rtt_s=0), caps(rtt_s=0.0001))


def test_heartbeats_carry_capabilities_only_when_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, zones=["eu"])
        agent._caps_sent = agent.capabilities()  # as Register does
        hb = agent._make_heartbeat()
        assert not hb.HasField("capabilities")
        agent.link.observe_transfer(4 * MiB, 0.5)  # the start-up probe measured the link
        hb = agent._make_heartbeat()
        assert hb.HasField("capabilities") and hb.capabilities.bandwidth_bps == pytest.approx(8 * MiB)
        assert list(hb.capabilities.zones) == ["eu"]
        # A replaced, unsent heartbeat's capabilities are not lost.
        again = agent._make_heartbeat(unsent=hb)
        assert again.HasField("capabilities")
        assert not agent._make_heartbeat().HasField("capabilities")
        agent.link.observe_transfer(4 * MiB, 0.52)  # -4 % of full weight: noise
        assert not agent._make_heartbeat().HasField("capabilities")
        blob = put_blob(tmp_path / "state" / "cache", b"new", time.time())
        agent.cache.add(blob, 3, "file")
        hb = agent._make_heartbeat()
        assert [r.digest for r in hb.capabilities.cached] == [blob]
        agent.cache.max_bytes = 1
        agent._evict()
        hb = agent._make_heartbeat()
        assert hb.HasField("capabilities") and list(hb.capabilities.cached) == []
        monkeypatch.setattr(psutil, "sensors_battery",
                            lambda: SimpleNamespace(percent=50, secsleft=100, power_plugged=False))
        hb = agent._make_heartbeat()
        assert hb.capabilities.power.on_battery

    asyncio.run(scenario())


def test_heartbeat_reply_feeds_rtt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from outrider.v1 import agent_pb2

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        sent = time.time() - 0.040
        agent._on_message(agent_pb2.SchedulerMessage(heartbeat=agent_pb2.HeartbeatResponse(
            server_time=time.time(), client_time=sent, lease_ttl_s=15)))
        assert 0.039 < agent.link.rtt_s < 1.0

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
        assert not agent._probed
        agent._artifacts = Stub(fail=True)  # type: ignore[assignment]
        await agent._probe_link()
        assert agent._probed and agent.link.bandwidth_bps == 0.0
        agent._artifacts = Stub(fail=False)  # type: ignore[assignment]
        await agent._probe_link()
        assert agent.link.bandwidth_bps > 0
        assert agent.link.rtt_s == 0.0  # RTT comes from heartbeats, not the probe's first byte

    asyncio.run(scenario())


def test_probe_disabled_by_zero_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, bandwidth_probe_bytes=0)
        assert agent._probed  # the session never starts one

    asyncio.run(scenario())
