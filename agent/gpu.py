"""Which NVIDIA GPUs this machine has: NVML first, then ``nvidia-smi``, else none.

Part of what the agent advertises (:func:`agent.probe.probe_capabilities`).
Never raises: a machine without NVIDIA hardware is the common case. ``pynvml``
(with ctypes), ``subprocess`` and ``shutil`` are imported inside the functions that
use them, so that importing this module costs an idle agent nothing; the agent
forgets ``pynvml`` after its start-up probe (:func:`agent.memory.shed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from agent.diag import MAX_REASON, first_line, reason
from outrider.v1 import common_pb2

__all__ = ["NVIDIA_SMI_TIMEOUT_S", "SMI_FIELDS", "parse_smi_csv", "probe_gpus"]

log = logging.getLogger(__name__)

#: How long ``nvidia-smi`` may take before we give up on it. A wedged driver can make
#: it hang for minutes; the agent must still come up (just without GPUs).
NVIDIA_SMI_TIMEOUT_S = 5.0

#: ``nvidia-smi --query-gpu`` columns, in order. compute_cap is last so that the retry
#: for older drivers (which reject the whole query when they do not know a column) can
#: simply drop it.
SMI_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "memory.total",
    "memory.free",
    "driver_version",
    "uuid",
    "compute_cap",
)
_MIB = 1024 * 1024
#: Bound on Capabilities.gpu_probe: it is for humans reading `outrider agents`, not a log dump.
_MAX_GPU_PROBE = 256


def probe_gpus() -> tuple[list[common_pb2.Gpu], str]:
    """Find NVIDIA GPUs: NVML first, then ``nvidia-smi``, else none.

    Returns:
        ``(gpus, how)`` where ``how`` is ``"nvml"``, ``"nvidia-smi"`` or
        ``"none: <short reason>"``. Never raises: a machine without NVIDIA hardware
        (NVML library not found) is the common case and yields ``([], "none: ...")``.

    NVML is preferred because it is an in-process library call (no fork, no parsing);
    ``nvidia-smi`` covers hosts where the Python bindings cannot load the library
    (unusual library paths, containers that only mount the binary).
    """
    try:
        return _probe_nvml(), "nvml"
    except Exception as exc:  # NVMLError, ImportError, OSError, ...
        nvml_reason = reason(exc)
        log.debug("NVML probe failed (%s); trying nvidia-smi", nvml_reason)
    try:
        gpus, smi_reason = _probe_nvidia_smi()
    except Exception as exc:  # belt and braces: never raise
        gpus, smi_reason = None, reason(exc)
    if gpus is not None:
        return gpus, "nvidia-smi"
    log.debug("nvidia-smi probe failed: %s", smi_reason)
    return [], f"none: NVML: {nvml_reason}; nvidia-smi: {smi_reason}"[:_MAX_GPU_PROBE]


def _as_text(value: object) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _probe_nvml() -> list[common_pb2.Gpu]:
    """Enumerate GPUs through NVML. Raises on any failure that makes the list unusable.

    Name and memory are required (the matcher needs them); driver, UUID and compute
    capability are optional, since some devices/drivers answer NOT_SUPPORTED for them.
    """
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = _nvml_optional(lambda: _as_text(pynvml.nvmlSystemGetDriverVersion()))
        gpus: list[common_pb2.Gpu] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                common_pb2.Gpu(
                    index=index,
                    model=_as_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_bytes=int(mem.total),
                    memory_free_bytes=int(mem.free),
                    driver=driver,
                    uuid=_nvml_optional(_nvml_uuid, pynvml, handle),
                    compute_capability=_nvml_optional(_nvml_compute_capability, pynvml, handle),
                )
            )
        return gpus
    finally:
        # Always release NVML: it holds driver handles, and an init without shutdown
        # leaks a reference count that keeps the library loaded.
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:  # a failed shutdown must not hide the probe's result
            log.debug("nvmlShutdown failed: %s", exc)


def _nvml_optional(fn: Callable[..., str], *args: Any) -> str:
    """One optional NVML field, ``fn(*args)``: its value, or "" when the device cannot say."""
    try:
        return fn(*args)
    except Exception as exc:  # NOT_SUPPORTED and friends: the field stays empty
        log.debug("optional NVML field unavailable: %s", exc)
        return ""


def _nvml_uuid(pynvml: Any, handle: Any) -> str:
    return _as_text(pynvml.nvmlDeviceGetUUID(handle))


def _nvml_compute_capability(pynvml: Any, handle: Any) -> str:
    return "{}.{}".format(*pynvml.nvmlDeviceGetCudaComputeCapability(handle))


def _probe_nvidia_smi() -> tuple[list[common_pb2.Gpu] | None, str]:
    """Enumerate GPUs by running ``nvidia-smi``; ``(None, reason)`` when that fails."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "not found on PATH"
    why = ""
    # Drivers older than ~510 do not know compute_cap and reject the whole query
    # ('Field "compute_cap" is not a valid field to query.'), so retry without it.
    for fields in (SMI_FIELDS, SMI_FIELDS[:-1]):
        argv = [exe, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=NVIDIA_SMI_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # No retry: a hung nvidia-smi will hang again, and each try costs 5 s.
            return None, f"timed out after {NVIDIA_SMI_TIMEOUT_S:g} s"
        except OSError as exc:
            return None, reason(exc)
        if proc.returncode == 0:
            gpus = parse_smi_csv(proc.stdout, fields)
            if gpus is None:
                return None, "unparseable output: " + first_line(proc.stdout)
            return gpus, ""
        why = f"exit {proc.returncode}: " + first_line(proc.stderr or proc.stdout)
        log.debug("%s failed: %s", " ".join(argv), why)
    return None, why[:MAX_REASON]


def _smi_missing(value: str) -> bool:
    # nvidia-smi prints "[N/A]", "[Not Supported]", "[Unknown Error]", ... for fields
    # a device cannot report; treat all of them as absent rather than as data.
    return not value or value.startswith("[") or value.upper() in {"N/A", "NOT SUPPORTED"}


def _smi_int(value: str, default: int = 0) -> int:
    if _smi_missing(value):
        return default
    try:
        return int(float(value))
    except ValueError:
        return default


def _smi_text(row: dict[str, str], field: str) -> str:
    value = row.get(field, "")
    return "" if _smi_missing(value) else value


def parse_smi_csv(text: str, fields: Sequence[str]) -> list[common_pb2.Gpu] | None:
    """Parse ``--format=csv,noheader,nounits`` output for the given ``fields``.

    Returns ``None`` if there was output but no line could be parsed (so the caller
    reports garbage instead of claiming zero GPUs).
    """
    n = len(fields)
    gpus: list[common_pb2.Gpu] = []
    saw_output = False
    for position, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        saw_output = True
        parts = line.split(",")
        if len(parts) < n:
            log.debug("nvidia-smi line with %d of %d fields ignored: %r", len(parts), n, line)
            continue
        if len(parts) > n:
            # The name is the only free-text column; re-join it if it contained commas.
            name_pos = fields.index("name")
            extra = len(parts) - n
            parts = [
                *parts[:name_pos],
                ",".join(parts[name_pos : name_pos + extra + 1]),
                *parts[name_pos + extra + 1 :],
            ]
        row = {field: part.strip() for field, part in zip(fields, parts, strict=True)}
        gpus.append(
            common_pb2.Gpu(
                index=_smi_int(row["index"], default=position),
                model=_smi_text(row, "name"),
                memory_bytes=_smi_int(row["memory.total"]) * _MIB,
                memory_free_bytes=_smi_int(row["memory.free"]) * _MIB,
                driver=_smi_text(row, "driver_version"),
                uuid=_smi_text(row, "uuid"),
                compute_capability=_smi_text(row, "compute_cap"),
            )
        )
    if saw_output and not gpus:
        return None
    return gpus
