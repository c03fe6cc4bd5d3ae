"""Unit tests for agent.probe: the capabilities the agent advertises, and its import cost.

GPU probing is tested in test_gpu, clock offsets in test_clock.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent import probe
from agent.probe import probe_capabilities
from outrider.v1 import common_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def test_heavy_modules_not_imported_at_module_level() -> None:
    """The agent's idle RSS budget: importing agent.probe must not pull these in."""
    # Baseline: what the agent loads anyway (psutil, the wire stubs). Only what
    # agent.probe adds on top is its own doing.
    code = (
        "import sys, psutil, outrider, outrider.v1.common_pb2; before = set(sys.modules); "
        "import agent.probe; added = set(sys.modules) - before; "
        "print(','.join(sorted(m for m in added if m.split('.')[0] in "
        "('pynvml', 'ntplib', 'ctypes', 'platform', 'shutil', 'subprocess'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------
# Capabilities
# --------------------------------------------------------------------------------------


def test_probe_capabilities_fields(tmp_path: Path) -> None:
    import outrider

    state_dir = tmp_path / "state" / "not-yet-created"
    caps = probe_capabilities({"site": "plant-7", "tier": "edge"}, 3, str(state_dir))
    assert caps.cpu_cores >= 1
    assert caps.arch
    assert caps.cpu_model
    assert caps.memory_bytes > 64 * MIB
    assert caps.disk_bytes > 0
    assert 0 <= caps.disk_free_bytes <= caps.disk_bytes
    assert caps.os
    if sys.platform.startswith("linux"):
        assert caps.os == "linux"
    assert caps.os_release
    assert caps.python_version == ".".join(map(str, sys.version_info[:3]))
    assert caps.hostname == socket.gethostname()
    assert dict(caps.labels) == {"site": "plant-7", "tier": "edge"}
    assert caps.slots == 3
    assert caps.agent_version == outrider.__version__
    assert caps.gpu_probe in ("nvml", "nvidia-smi") or caps.gpu_probe.startswith("none: ")
    assert not state_dir.exists()  # probing must not create it
    # Round-trips on the wire.
    assert common_pb2.Capabilities.FromString(caps.SerializeToString()) == caps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_model_matches_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    if names:
        assert probe.cpu_model() == names[0]


def test_os_release_unquoting() -> None:
    assert probe.unquote_os_release('"Debian GNU/Linux 12 (bookworm)"') == "Debian GNU/Linux 12 (bookworm)"
    assert probe.unquote_os_release("'Alpine Linux v3.19'") == "Alpine Linux v3.19"
    assert probe.unquote_os_release("Plain") == "Plain"
    assert probe.unquote_os_release(r'"Say \"hi\""') == 'Say "hi"'
