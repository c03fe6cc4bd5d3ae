"""GPU probing: NVML first, then nvidia-smi (faked here by a shell script), else none."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from agent import gpu
from agent.gpu import probe_gpus
from agent.probe import probe_capabilities
from outrider.v1 import common_pb2

MIB = 1024 * 1024


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
    monkeypatch.setattr(gpu, "NVIDIA_SMI_TIMEOUT_S", 0.3)
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
    fields = gpu.SMI_FIELDS
    gpus = gpu.parse_smi_csv("3, Weird, Inc. GPU, 1024, 512, 1.0, GPU-x, 7.5\n", fields)
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


def test_probe_capabilities_uses_fake_gpus(
    no_nvml: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_smi(tmp_path, monkeypatch, f"cat <<'EOF'\n{TWO_GPUS}EOF\n")
    caps = probe_capabilities({}, 1, str(tmp_path))
    assert caps.gpu_probe == "nvidia-smi"
    assert [g.compute_capability for g in caps.gpus] == ["9.0", "8.0"]
