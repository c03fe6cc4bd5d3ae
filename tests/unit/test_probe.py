"""Unit tests for agent.probe: capabilities, GPU probing fallbacks, clock offsets."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from agent import probe
from agent.probe import (
    ClockTracker,
    best_offset,
    ntp_samples,
    probe_capabilities,
    probe_gpus,
    scheduler_sample,
)
from outrider.v1 import common_pb2
from tests.helpers.ntp_responder import NtpResponder

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------
# GPU probing
# --------------------------------------------------------------------------------------


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make NVML fail the way it does on a machine without the NVIDIA driver."""
    import pynvml

    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)


def _fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Write an executable ``nvidia-smi`` shell script and put its dir first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # First, so that it shadows a real nvidia-smi; the rest stays for cat, sleep, ...
    monkeypatch.setenv("PATH", os.pathsep.join([str(bindir), os.environ.get("PATH", "")]))
    return script


TWO_GPUS = """\
0, NVIDIA H100 80GB HBM3, 81559, 80000, 550.54.15, GPU-11111111-2222-3333-4444-555555555555, 9.0
1, NVIDIA A100-SXM4-40GB, 40960, [N/A], 550.54.15, [N/A], 8.0
"""


def test_probe_gpus_never_raises_on_this_machine() -> None:
    gpus, how = probe_gpus()
    assert how in ("nvml", "nvidia-smi") or how.startswith("none: ")
    if how.startswith("none"):
        assert gpus == []


def test_nvml_absent_and_no_smi_gives_none(
    no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # empty dir: no nvidia-smi
    gpus, how = probe_gpus()
    assert gpus == []
    assert how.startswith("none: ")
    assert "NVML Shared Library Not Found" in how
    assert "not found on PATH" in how


def test_nvml_library_missing_for_real_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without monkeypatching NVML: on a machine without NVIDIA this is the real path."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on GPU machines
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here")
    _fake_smi(tmp_path, monkeypatch, f"cat <<'EOF'\n{TWO_GPUS}EOF\n")
    gpus, how = probe_gpus()
    assert how == "nvidia-smi"
    assert len(gpus) == 2


def test_fake_nvidia_smi_two_gpus(no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "argv.log"
    _fake_smi(
        tmp_path,
        monkeypatch,
        f"""\
        echo "$@" >> {log}
        cat <<'EOF'
        {TWO_GPUS.splitlines()[0]}
        {TWO_GPUS.splitlines()[1]}
        EOF
        """,
    )
    gpus, how = probe_gpus()
    assert how == "nvidia-smi"
    assert len(gpus) == 2
    h100, a100 = gpus
    assert h100 == common_pb2.Gpu(
        index=0,
        model="NVIDIA H100 80GB HBM3",
        memory_bytes=81559 * MIB,
        memory_free_bytes=80000 * MIB,
        driver="550.54.15",
        uuid="GPU-11111111-2222-3333-4444-555555555555",
        compute_capability="9.0",
    )
    assert a100.index == 1
    assert a100.model == "NVIDIA A100-SXM4-40GB"
    assert a100.memory_bytes == 40960 * MIB
    assert a100.memory_free_bytes == 0  # [N/A]
    assert a100.uuid == ""  # [N/A]
    assert a100.compute_capability == "8.0"
    argv = log.read_text()
    assert "--query-gpu=index,name,memory.total,memory.free,driver_version,uuid,compute_cap" in argv
    assert "--format=csv,noheader,nounits" in argv


def test_fake_nvidia_smi_without_compute_cap(
    no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older driver rejects the compute_cap column; we retry without it."""
    calls = tmp_path / "calls"
    _fake_smi(
        tmp_path,
        monkeypatch,
        f"""\
        echo x >> {calls}
        case "$*" in
          *compute_cap*)
            echo 'Field "compute_cap" is not a valid field to query.' >&2
            exit 2 ;;
        esac
        echo '0, Tesla V100-PCIE-16GB, 16160, 16000, 470.82.01, GPU-abc'
        """,
    )
    gpus, how = probe_gpus()
    assert how == "nvidia-smi"
    assert len(calls.read_text().split()) == 2
    assert len(gpus) == 1
    assert gpus[0].model == "Tesla V100-PCIE-16GB"
    assert gpus[0].memory_bytes == 16160 * MIB
    assert gpus[0].driver == "470.82.01"
    assert gpus[0].uuid == "GPU-abc"
    assert gpus[0].compute_capability == ""


def test_broken_nvidia_smi(no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(
        tmp_path,
        monkeypatch,
        """\
        echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        exit 1
        """,
    )
    gpus, how = probe_gpus()
    assert gpus == []
    assert how.startswith("none: ")
    assert "exit 1" in how
    assert "couldn't communicate" in how
    assert "\n" not in how


def test_hung_nvidia_smi_times_out(no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "NVIDIA_SMI_TIMEOUT_S", 0.3)
    _fake_smi(tmp_path, monkeypatch, "exec sleep 30\n")
    start = time.monotonic()
    gpus, how = probe_gpus()
    assert time.monotonic() - start < 5
    assert gpus == []
    assert "timed out" in how


def test_garbage_nvidia_smi_output(no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, monkeypatch, "echo 'No devices were found'\n")
    gpus, how = probe_gpus()
    assert gpus == []
    assert how.startswith("none: ")
    assert "unparseable" in how


def test_smi_name_with_comma() -> None:
    fields = probe._SMI_FIELDS
    gpus = probe._parse_smi_csv("3, Weird, Inc. GPU, 1024, 512, 1.0, GPU-x, 7.5\n", fields)
    assert gpus is not None and len(gpus) == 1
    assert gpus[0].index == 3
    assert gpus[0].model == "Weird, Inc. GPU"
    assert gpus[0].memory_bytes == 1024 * MIB
    assert gpus[0].compute_capability == "7.5"


class _FakeNvml(types.ModuleType):
    """Just enough of pynvml for the NVML path, with call tracking."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_at: str | None = None) -> None:
        super().__init__("pynvml")
        self.fail_at = fail_at
        self.shutdowns = 0

    def _maybe_fail(self, where: str) -> None:
        if self.fail_at == where:
            raise self.NVMLError(where)

    def nvmlInit(self) -> None:
        self._maybe_fail("init")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"535.104.05"  # older bindings return bytes

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._maybe_fail(f"handle{i}")
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return ["NVIDIA H100 PCIe", "NVIDIA L4"][h]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=(h + 1) * 1000 * MIB, free=(h + 1) * 900 * MIB, used=0)

    def nvmlDeviceGetUUID(self, h: int) -> str:
        if h == 1:
            raise self.NVMLError("not supported")  # optional field: tolerated
        return f"GPU-{h}"

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return [(9, 0), (8, 9)][h]


def test_nvml_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus, how = probe_gpus()
    assert how == "nvml"
    assert fake.shutdowns == 1
    assert [g.model for g in gpus] == ["NVIDIA H100 PCIe", "NVIDIA L4"]
    assert gpus[0] == common_pb2.Gpu(
        index=0,
        model="NVIDIA H100 PCIe",
        memory_bytes=1000 * MIB,
        memory_free_bytes=900 * MIB,
        driver="535.104.05",
        uuid="GPU-0",
        compute_capability="9.0",
    )
    assert gpus[1].uuid == ""
    assert gpus[1].compute_capability == "8.9"


def test_nvml_failure_mid_enumeration_shuts_down_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeNvml(fail_at="handle1")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    _fake_smi(tmp_path, monkeypatch, f"cat <<'EOF'\n{TWO_GPUS}EOF\n")
    gpus, how = probe_gpus()
    assert fake.shutdowns == 1
    assert how == "nvidia-smi"
    assert len(gpus) == 2


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


def test_probe_capabilities_uses_fake_gpus(
    no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_smi(tmp_path, monkeypatch, f"cat <<'EOF'\n{TWO_GPUS}EOF\n")
    caps = probe_capabilities({}, 1, str(tmp_path))
    assert caps.gpu_probe == "nvidia-smi"
    assert [g.compute_capability for g in caps.gpus] == ["9.0", "8.0"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_model_matches_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    names = [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")]
    if names:
        assert probe._cpu_model() == names[0]


def test_os_release_unquoting() -> None:
    assert probe._unquote_os_release('"Debian GNU/Linux 12 (bookworm)"') == "Debian GNU/Linux 12 (bookworm)"
    assert probe._unquote_os_release("'Alpine Linux v3.19'") == "Alpine Linux v3.19"
    assert probe._unquote_os_release("Plain") == "Plain"
    assert probe._unquote_os_release(r'"Say \"hi\""') == 'Say "hi"'


# --------------------------------------------------------------------------------------
# NTP
# --------------------------------------------------------------------------------------


def _closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_ntp_samples_against_responder_offset() -> None:
    with NtpResponder(offset=5.0) as ntp:
        samples = ntp_samples([ntp.address], timeout=2.0)
        assert ntp.requests == 1
    assert len(samples) == 1
    (s,) = samples
    assert s.offset_s == pytest.approx(5.0, abs=0.05)
    assert 0 < s.uncertainty_s < 0.05
    assert s.source == f"ntp:{ntp.address}"
    assert abs(s.measured_at - time.time()) < 5


def test_ntp_samples_default_port_argument() -> None:
    with NtpResponder(offset=-3.25) as ntp:
        samples = ntp_samples([ntp.host], timeout=2.0, port=ntp.port)
    assert len(samples) == 1
    assert samples[0].offset_s == pytest.approx(-3.25, abs=0.05)
    assert samples[0].source == f"ntp:{ntp.host}"


def test_responder_offset_can_change_while_running() -> None:
    with NtpResponder(offset=1.0) as ntp:
        first = ntp_samples([ntp.address], timeout=2.0)
        ntp.offset = -7.0
        second = ntp_samples([ntp.address], timeout=2.0)
    assert first[0].offset_s == pytest.approx(1.0, abs=0.05)
    assert second[0].offset_s == pytest.approx(-7.0, abs=0.05)


def test_ntp_uncertainty_covers_path_delay() -> None:
    """A slow request path skews the offset, but never beyond the reported uncertainty."""
    with NtpResponder(offset=2.0, delay_s=0.2, root_delay=0.0, root_dispersion=0.0) as ntp:
        (s,) = ntp_samples([ntp.address], timeout=2.0)
    assert s.uncertainty_s >= 0.1
    assert abs(s.offset_s - 2.0) <= s.uncertainty_s


def test_ntp_unreachable_server_is_skipped_within_timeout() -> None:
    port = _closed_udp_port()
    with NtpResponder(offset=5.0) as good:
        start = time.monotonic()
        samples = ntp_samples([f"127.0.0.1:{port}", good.address], timeout=0.5)
        elapsed = time.monotonic() - start
    assert [s.source for s in samples] == [f"ntp:{good.address}"]
    assert elapsed < 0.5 + 1.0


def test_ntp_silent_server_times_out() -> None:
    with NtpResponder(silent=True) as ntp:
        start = time.monotonic()
        assert ntp_samples([ntp.address], timeout=0.3) == []
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("kwargs", [{"stratum": 0}, {"leap": 3}, {"stratum": 16}])
def test_ntp_unsynchronized_or_kod_replies_rejected(kwargs: dict[str, int]) -> None:
    with NtpResponder(offset=5.0, **kwargs) as ntp:
        assert ntp_samples([ntp.address], timeout=1.0) == []
        assert ntp.requests == 1  # it did answer; we refused to trust it


def test_ntp_bad_server_strings_skipped() -> None:
    assert ntp_samples([], timeout=0.1) == []
    assert ntp_samples(["", "   ", "127.0.0.1:notaport", "127.0.0.1:70000"], timeout=0.1) == []


def test_split_server() -> None:
    split = probe._split_server
    assert split("pool.ntp.org", 123) == ("pool.ntp.org", 123)
    assert split("10.0.0.1:1123", 123) == ("10.0.0.1", 1123)
    assert split("::1", 123) == ("::1", 123)
    assert split("[::1]:4123", 123) == ("::1", 4123)
    assert split("[fe80::1]", 123) == ("fe80::1", 123)
    with pytest.raises(ValueError):
        split(":123", 123)


def test_responder_ignores_non_client_packets() -> None:
    with NtpResponder() as ntp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        # mode 4 (server) and a v2 client packet: both ignored.
        for first_byte in (0x24, 0x13):
            s.sendto(bytes([first_byte]) + bytes(47), (ntp.host, ntp.port))
            with pytest.raises(socket.timeout):
                s.recvfrom(128)
        s.sendto(b"\x23" + bytes(20), (ntp.host, ntp.port))  # short packet
        with pytest.raises(socket.timeout):
            s.recvfrom(128)
        # A well-formed v4 client packet is answered, echoing its transmit timestamp.
        request = b"\x23" + bytes(39) + b"ABCDEFGH"
        s.sendto(request, (ntp.host, ntp.port))
        reply, _ = s.recvfrom(128)
    assert len(reply) == 48
    assert reply[0] & 0x7 == 4
    assert (reply[0] >> 3) & 0x7 == 4
    assert reply[24:32] == b"ABCDEFGH"


def test_responder_stop_closes_and_joins() -> None:
    ntp = NtpResponder().start()
    thread = ntp._thread
    ntp.stop()
    ntp.stop()  # idempotent
    assert thread is not None and not thread.is_alive()
    assert ntp._sock.fileno() == -1
    with pytest.raises(RuntimeError):
        ntp.start()


# --------------------------------------------------------------------------------------
# Scheduler samples and tracking
# --------------------------------------------------------------------------------------


def test_scheduler_sample_math() -> None:
    s = scheduler_sample(t_send=100.0, server_time=110.5, t_recv=100.2)
    assert s.source == "scheduler"
    assert s.offset_s == pytest.approx(110.5 - 100.1)
    assert s.uncertainty_s == pytest.approx(0.1)
    assert s.measured_at == pytest.approx(100.2)
    # A local clock step during the call must not give a negative uncertainty.
    assert scheduler_sample(100.0, 100.0, 99.8).uncertainty_s == pytest.approx(0.1)


def test_best_offset_picks_min_uncertainty() -> None:
    a = common_pb2.ClockSample(offset_s=1.0, uncertainty_s=0.02, source="ntp:a", measured_at=10)
    b = common_pb2.ClockSample(offset_s=1.1, uncertainty_s=0.005, source="scheduler", measured_at=10)
    c = common_pb2.ClockSample(offset_s=0.9, uncertainty_s=0.005, source="ntp:c", measured_at=11)
    assert best_offset([]) is None
    assert best_offset([a]) is a
    assert best_offset([a, b]) is b
    assert best_offset([a, b, c]) is c  # tie: the more recent one


def test_clock_tracker_keeps_min_uncertainty_scheduler_sample() -> None:
    t = ClockTracker(window=4, drift_rate=0.0)
    assert t.samples() == []
    assert t.best() is None
    # Round trips of 40, 4, 100 ms, all seeing the same true offset of +2 s.
    t.observe_scheduler(1000.00, 1002.02, 1000.04)
    t.observe_scheduler(1001.00, 1003.002, 1001.004)
    t.observe_scheduler(1002.00, 1004.05, 1002.10)
    best = t.scheduler_offset(now=1003.0)
    assert best is not None
    assert best.uncertainty_s == pytest.approx(0.002)
    assert best.offset_s == pytest.approx(2.0)
    assert best.measured_at == pytest.approx(1001.004)
    # The window is 4: after four worse round trips the precise one falls out.
    for i in range(4):
        t.observe_scheduler(1010.0 + i, 1012.0 + i + 0.01, 1010.0 + i + 0.02)
    best = t.scheduler_offset(now=1020.0)
    assert best is not None and best.uncertainty_s == pytest.approx(0.01)
    assert [s.source for s in t.samples(now=1020.0)] == ["scheduler"]


def test_clock_tracker_ages_old_samples() -> None:
    t = ClockTracker(window=8, drift_rate=1e-3)
    t.observe_scheduler(1000.0, 1002.001, 1000.002)  # u=1 ms, measured at 1000.002
    t.observe_scheduler(1100.0, 1102.005, 1100.010)  # u=5 ms, measured 100 s later
    best = t.scheduler_offset(now=1100.010)
    # The old one has aged by 0.1 s * 1e-3... = 100 ms: the fresh 5 ms one wins.
    assert best is not None
    assert best.measured_at == pytest.approx(1100.010)
    assert best.uncertainty_s == pytest.approx(0.005)


def test_clock_tracker_drops_samples_after_a_clock_step() -> None:
    t = ClockTracker(window=8, drift_rate=0.0)
    t.observe_scheduler(1000.0, 1002.0005, 1000.001)  # offset +2 s, u=0.5 ms
    # The local clock was stepped by 2 s: offset now ~0; a worse RTT, but it is the truth.
    t.observe_scheduler(1003.0, 1003.01, 1003.02)
    best = t.scheduler_offset(now=1003.02)
    assert best is not None
    assert best.offset_s == pytest.approx(0.0, abs=0.011)


def test_clock_tracker_with_ntp_responder() -> None:
    with NtpResponder(offset=5.0) as a, NtpResponder(offset=5.0, root_dispersion=0.5) as b:
        t = ClockTracker([a.address, b.address, f"127.0.0.1:{_closed_udp_port()}"], ntp_timeout=0.5)
        fresh = t.update_ntp()
    assert {s.source for s in fresh} == {f"ntp:{a.address}", f"ntp:{b.address}"}
    t.observe_scheduler(time.time() - 0.2, time.time() + 5.0, time.time())
    samples = t.samples()
    assert len(samples) == 3
    assert sorted(s.source for s in samples) == sorted(
        [f"ntp:{a.address}", f"ntp:{b.address}", "scheduler"]
    )
    best = t.best()
    assert best is not None and best.source == f"ntp:{a.address}"
    assert best.offset_s == pytest.approx(5.0, abs=0.05)
    # Samples are copies: mutating them does not change the tracker.
    samples[0].offset_s = 1e9
    assert all(s.offset_s < 1e6 for s in t.samples())


def test_clock_tracker_expires_old_ntp_samples() -> None:
    with NtpResponder(offset=1.0) as ntp:
        t = ClockTracker([ntp.address], max_age_s=60.0)
        t.update_ntp()
    assert len(t.samples()) == 1
    assert t.samples(now=time.time() + 3600) == []


def test_clock_tracker_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ClockTracker(window=0)
