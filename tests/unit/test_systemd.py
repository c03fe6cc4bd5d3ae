"""Checks of the deployment files: systemd units (via systemd-analyze) and deploy/*.toml.

``systemd-analyze verify`` also checks that ExecStart's binary exists, and
/usr/bin/outrider-* is not installed here. So each unit is verified as a copy
that differs only in ExecStart's program (an existing binary, same arguments);
the exact ExecStart of the real file is asserted separately. ``verify`` exits 0
even for unknown keys and bad values (it only warns), so any output naming the
unit counts as a failure, and a deliberately broken copy proves that the check
does catch such warnings.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig
from scheduler.server import SchedulerConfig

from outrider import pki
from outrider.config import parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
UNITS = {
    "outrider-scheduler.service": "/usr/bin/outrider-scheduler --config /etc/outrider/scheduler.toml",
    "outrider-agent.service": "/usr/bin/outrider-agent --config /etc/outrider/agent.toml",
}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")

# The keys the daemons accept are their config dataclasses' fields: a deploy file
# may use only those, and the scheduler's example shows every one.
SCHEDULER_KEYS = {f.name for f in dataclasses.fields(SchedulerConfig)}
AGENT_KEYS = {f.name for f in dataclasses.fields(AgentConfig)}
LOG_LEVELS = {"debug", "info", "warning", "error"}
HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")


def _directives(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat; comments and sections dropped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _unit(name: str) -> dict[str, list[str]]:
    return _directives((ROOT / "systemd" / name).read_text())


def _true_binary() -> str:
    for candidate in ("/bin/true", "/usr/bin/true", shutil.which("true")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("no `true` binary to stand in for ExecStart")


def _verify_copy(tmp_path: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    """Write ``text`` as tmp_path/name with ExecStart's program swapped, and verify it."""
    real = UNITS[name]
    program, args = real.split(" ", 1)
    assert f"ExecStart={real}\n" in text
    copy = tmp_path / name
    copy.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={_true_binary()} "))
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )


def _complaints(proc: subprocess.CompletedProcess[str], name: str) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if name in line]


@needs_analyze
@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    proc = _verify_copy(tmp_path, name, (ROOT / "systemd" / name).read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _complaints(proc, name) == [], proc.stdout + proc.stderr


@needs_analyze
def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The negative control: the check above would notice a typo or a bad value."""
    name = "outrider-agent.service"
    text = (ROOT / "systemd" / name).read_text()
    broken = text.replace("KillMode=mixed", "KillMode=mixd").replace("[Service]\n", "[Service]\nProtectSystm=strict\n", 1)
    proc = _verify_copy(tmp_path, name, broken)
    complaints = "\n".join(_complaints(proc, name))
    assert "mixd" in complaints and "ProtectSystm" in complaints, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_common_settings(name: str) -> None:
    d = _unit(name)
    short = name.removesuffix(".service")
    assert d["ExecStart"] == [UNITS[name]]
    assert d["User"] == ["outrider"] and d["Group"] == ["outrider"]
    assert "DynamicUser" not in d
    assert d["StateDirectory"] == [short]
    assert d["ConfigurationDirectory"] == ["outrider"]
    assert d["Restart"] == ["on-failure"]
    assert "network-online.target" in " ".join(d["After"]).split()
    assert d["Wants"] == ["network-online.target"]
    for key, value in {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "LockPersonality": "yes", "RestrictSUIDSGID": "yes",
    }.items():
        assert d.get(key) == [value], key
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    # W^X enforcement kills Python at the first cffi/ctypes callback.
    assert "MemoryDenyWriteExecute" not in d
    assert d["WantedBy"] == ["multi-user.target"]


def test_scheduler_unit_is_tight() -> None:
    d = _unit("outrider-scheduler.service")
    for key in ("PrivateDevices", "ProtectClock", "RestrictNamespaces", "ProtectKernelLogs"):
        assert d.get(key) == ["yes"], key
    assert d["CapabilityBoundingSet"] == [""]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["RuntimeDirectory"] == ["outrider-scheduler"]


def test_agent_unit_does_not_restart_a_revoked_agent() -> None:
    """A revoked agent's name is refused for good: systemd must not restart it in a loop."""
    from agent.daemon import EXIT_REVOKED

    codes = " ".join(_unit("outrider-agent.service").get("RestartPreventExitStatus", [])).split()
    assert str(EXIT_REVOKED) in codes


def test_scheduler_unit_reloads_its_tls_files_with_sighup() -> None:
    """`systemctl reload outrider-scheduler` sends SIGHUP: the scheduler re-reads its TLS files."""
    assert _unit("outrider-scheduler.service")["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_agent_unit_does_not_restart_an_agent_whose_certificate_expired() -> None:
    """An expired certificate needs a new join token: a restart cannot help (agent/certcheck.py)."""
    from agent.certcheck import EXIT_CERT_EXPIRED

    codes = " ".join(_unit("outrider-agent.service").get("RestartPreventExitStatus", [])).split()
    assert str(EXIT_CERT_EXPIRED) in codes


def test_agent_unit_drains_and_keeps_devices() -> None:
    d = _unit("outrider-agent.service")
    assert d["KillMode"] == ["mixed"]
    assert parse_duration(d["TimeoutStopSec"][0].replace("min", "m")) >= 300
    # Stages need /dev/nvidia*: no PrivateDevices, and no ProtectClock (which
    # implies DeviceAllow= and so a device allow-list).
    for key in ("PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy", "SystemCallFilter"):
        assert key not in d, key


# ------------------------------------------------------------------ deploy/*.toml


def _toml(name: str) -> dict:
    with (ROOT / "deploy" / name).open("rb") as fh:
        return tomllib.load(fh)


def test_scheduler_toml() -> None:
    cfg = _toml("scheduler.toml")
    assert set(cfg) == SCHEDULER_KEYS
    assert HOST_PORT.match(cfg["listen"])
    assert parse_duration(cfg["heartbeat_interval"]) * 2 < parse_duration(cfg["lease_ttl"])
    assert cfg["log_level"] in LOG_LEVELS
    # Paths agree with the unit's StateDirectory=/RuntimeDirectory= (the only
    # writable places under ProtectSystem=strict).
    unit = _unit("outrider-scheduler.service")
    assert cfg["state_dir"] == f"/var/lib/{unit['StateDirectory'][0]}"
    assert Path(cfg["ready_file"]).parent == Path("/run") / unit["RuntimeDirectory"][0]
    assert cfg["pki_dir"].startswith("/etc/outrider/")


@pytest.mark.parametrize("name, tier", [("agent-gpu.toml", "gpu"), ("agent-hpc.toml", "hpc"), ("agent-edge.toml", "edge")])
def test_agent_toml(name: str, tier: str) -> None:
    cfg = _toml(name)
    assert set(cfg) <= AGENT_KEYS, set(cfg) - AGENT_KEYS
    assert HOST_PORT.match(cfg["scheduler"])
    explicit = {"ca", "cert", "key"} & set(cfg)
    by_dir = {"pki_dir", "name"} & set(cfg)
    assert (explicit == {"ca", "cert", "key"}) != (by_dir == {"pki_dir", "name"}), "one way to name the certs"
    assert not (explicit and by_dir)
    if by_dir:
        pki.validate_name(cfg["name"])
    assert isinstance(cfg["slots"], int) and cfg["slots"] >= 1
    assert cfg["state_dir"] == "/var/lib/outrider-agent"
    assert cfg["ntp_servers"] and all(isinstance(h, str) and h for h in cfg["ntp_servers"])
    assert cfg["log_level"] in LOG_LEVELS
    labels = cfg["labels"]
    assert {"accelerator", "site", "tier", "zone"} <= set(labels)
    assert all(isinstance(v, str) for v in labels.values())
    assert labels["tier"] == tier


@pytest.mark.parametrize("name", ["agent-gpu.toml", "agent-hpc.toml", "agent-edge.toml"])
def test_agent_toml_loads_through_the_agent(name: str, tmp_path: Path) -> None:
    """Each example is accepted by the agent's own loader (with real certificate files)."""
    import agent.main
    from outrider import pki

    cfg = _toml(name)
    pki_dir = cfg.get("pki_dir") or str(Path(cfg["ca"]).parent)
    agent_name = cfg.get("name") or Path(cfg["cert"]).stem
    pki.init_ca(tmp_path / "pki", "acme.ml")
    pki.issue(tmp_path / "pki", "agent", agent_name)
    text = (ROOT / "deploy" / name).read_text().replace(pki_dir, str(tmp_path / "pki"))
    (tmp_path / name).write_text(text)
    loaded = agent.main.load_config(["--config", str(tmp_path / name)])
    assert loaded.zones and loaded.labels["tier"] in name


def test_scheduler_toml_loads_through_the_scheduler() -> None:
    import scheduler.main

    loaded = scheduler.main.load_config(["--config", str(ROOT / "deploy" / "scheduler.toml")])
    assert loaded.lease_ttl == 15.0 and loaded.max_queue_depth == 100000
