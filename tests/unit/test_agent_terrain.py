"""The agent's view of its terrain: zones, power, and when it tells the scheduler about
changes. Unit level: no scheduler runs. (The link meter, the cache, transfers and the
session's heartbeats have their own test files: test_link, test_cache, test_transfers,
test_session.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

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
