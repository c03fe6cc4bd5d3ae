"""What this machine offers, and how far its clock is off.

The agent advertises :class:`~outrider.v1.common_pb2.Capabilities` when it registers
(CPU, memory, disk, GPUs, OS, labels, zones, power) and again in a heartbeat whenever
the parts that change at run time changed enough to matter
(:func:`capabilities_changed`), and :class:`~outrider.v1.common_pb2.ClockSample`
values with every register/heartbeat, so that the scheduler can place work and pad
lease expiry by the agent's clock uncertainty.

Everything here degrades instead of raising: a box without NVIDIA hardware, without
``/etc/os-release``, or without a reachable NTP server is normal, not an error.

The agent must stay small in memory (idle RSS target <= 40 MB), so the modules that
only a probe needs (``pynvml`` with ctypes, ``ntplib``, ``subprocess``, ``platform``,
``shutil``) are imported inside the functions that use them, not at module level.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import psutil

from outrider.v1 import common_pb2

__all__ = [
    "ClockTracker",
    "NVIDIA_SMI_TIMEOUT_S",
    "best_offset",
    "capabilities_changed",
    "ntp_samples",
    "probe_capabilities",
    "probe_gpus",
    "probe_power",
    "scheduler_sample",
]

log = logging.getLogger(__name__)

#: How long ``nvidia-smi`` may take before we give up on it. A wedged driver can make
#: it hang for minutes; the agent must still come up (just without GPUs).
NVIDIA_SMI_TIMEOUT_S = 5.0

# Query columns, in order. compute_cap is last so that the retry for older drivers
# (which reject the whole query when they do not know a column) can simply drop it.
_SMI_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "memory.total",
    "memory.free",
    "driver_version",
    "uuid",
    "compute_cap",
)
_MIB = 1024 * 1024

#: RFC 5905's frequency tolerance (PHI, 15 ppm): how fast the error of a past clock
#: measurement is assumed to grow. Used to age samples so that an old, once-precise
#: measurement does not outrank a fresh, slightly less precise one forever.
RFC5905_PHI = 15e-6

# Bounds on the reason text in Capabilities.gpu_probe: it is for humans reading
# `outrider agents`, not a log dump.
_MAX_REASON = 120
_MAX_GPU_PROBE = 256


# --------------------------------------------------------------------------------------
# Capabilities
# --------------------------------------------------------------------------------------


def probe_capabilities(
    labels: Mapping[str, str], slots: int, state_dir: str, zones: Sequence[str] = ()
) -> common_pb2.Capabilities:
    """Describe this machine for the scheduler's matcher.

    Args:
        labels: free-form labels from the agent's config (site, zone, tier, ...).
        slots: how many tasks the agent runs at once.
        zones: data-residency zones the agent sits in (from its config).
        state_dir: the agent's state directory; disk figures are those of the
            filesystem holding it (the nearest existing ancestor if it does not
            exist yet), because that is where artifacts and checkpoints land.

    Each field is probed independently; a failing probe leaves its field at the
    proto default and logs a warning rather than failing registration.
    """
    import platform

    import outrider

    gpus, gpu_probe = probe_gpus()
    disk_total, disk_free = _disk_usage(state_dir)
    return common_pb2.Capabilities(
        cpu_cores=_safe("cpu_cores", lambda: psutil.cpu_count(logical=True) or os.cpu_count() or 0, 0),
        arch=_safe("arch", platform.machine, ""),
        cpu_model=_safe("cpu_model", _cpu_model, ""),
        memory_bytes=_safe("memory_bytes", lambda: int(psutil.virtual_memory().total), 0),
        disk_bytes=disk_total,
        disk_free_bytes=disk_free,
        gpus=gpus,
        os=_safe("os", lambda: platform.system().lower(), ""),
        os_release=_safe("os_release", _os_release, ""),
        python_version=platform.python_version(),
        hostname=_safe("hostname", socket.gethostname, ""),
        labels=dict(labels),
        slots=slots,
        agent_version=outrider.__version__,
        gpu_probe=gpu_probe,
        zones=list(zones),
        power=probe_power(),
    )


def probe_power() -> common_pb2.Power:
    """Battery state: whether there is one, whether the machine runs on it, its charge.

    Cheap (a few reads under /sys/class/power_supply on Linux), so the agent calls
    it every heartbeat. Never raises: no battery, no sensor support on this
    platform, or a failing read all give ``has_battery=False``. When the battery
    cannot tell whether mains power is connected, ``on_battery`` stays False: an
    agent does not claim to be on battery without evidence.
    """
    try:
        battery = psutil.sensors_battery()
    except Exception as exc:  # noqa: BLE001 - AttributeError on platforms without it, OSError, ...
        log.debug("battery probe failed: %s", _reason(exc))
        return common_pb2.Power()
    if battery is None:
        return common_pb2.Power(has_battery=False)
    try:
        percent = float(battery.percent)
        percent = min(100.0, percent) if percent >= 0.0 else 0.0  # NaN and negatives: 0
    except (TypeError, ValueError):
        percent = 0.0
    plugged = getattr(battery, "power_plugged", None)
    return common_pb2.Power(has_battery=True, on_battery=plugged is False, battery_percent=percent)


#: Relative change of bandwidth or RTT worth telling the scheduler about.
CAPS_RELATIVE_CHANGE = 0.10
#: RTT changes below this are jitter, whatever their relative size (a LAN's 0.4 ms
#: vs 0.6 ms would otherwise resend the capabilities every heartbeat).
CAPS_RTT_FLOOR_S = 0.002
#: Battery charge change (percentage points) worth telling the scheduler about.
CAPS_BATTERY_POINTS = 5.0


def capabilities_changed(last: common_pb2.Capabilities | None, new: common_pb2.Capabilities) -> bool:
    """Whether ``new`` differs from ``last`` (the ones last sent) enough to send again.

    Compares the parts that change at run time: the cache inventory (any blob in or
    out, by digest and size), bandwidth and RTT (by more than 10 %; RTT also by more
    than 2 ms), power (plugged in or out, battery appearing, charge moving by 5
    points), plus zones and labels. A measurement appearing for the first time
    (0 → something) is a change. Relative changes are against the value last sent. ``last=None`` (nothing sent yet) is a change.
    """
    if last is None:
        return True
    if _moved(last.bandwidth_bps, new.bandwidth_bps, 0.0):
        return True
    if _moved(last.rtt_s, new.rtt_s, CAPS_RTT_FLOOR_S):
        return True
    lp, np_ = last.power, new.power
    if (lp.has_battery, lp.on_battery) != (np_.has_battery, np_.on_battery):
        return True
    if abs(lp.battery_percent - np_.battery_percent) >= CAPS_BATTERY_POINTS:
        return True
    if len(last.cached) != len(new.cached):
        return True
    if {(r.digest, r.size) for r in last.cached} != {(r.digest, r.size) for r in new.cached}:
        return True
    return list(last.zones) != list(new.zones) or dict(last.labels) != dict(new.labels)


def _moved(old: float, new: float, floor: float) -> bool:
    if (old > 0) != (new > 0):
        return True  # measured for the first time (or lost)
    delta = abs(new - old)
    return delta > CAPS_RELATIVE_CHANGE * old and delta > floor


def _safe(what: str, fn, default):  # type: ignore[no-untyped-def]
    """Run one probe, returning ``default`` (and logging) if it raises."""
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - a probe must never stop registration
        log.warning("probe of %s failed: %s", what, exc)
        return default
    return default if value is None else value


def _disk_usage(state_dir: str) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding ``state_dir``.

    ``free`` is what an unprivileged process may still use (statvfs f_bavail), which
    is what the agent, as a service user, can actually fill.
    """
    path = os.path.abspath(state_dir)
    # The agent may be probed before it creates its state dir (e.g. `join`): use the
    # nearest existing ancestor, which is on the filesystem the dir will live on.
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        usage = psutil.disk_usage(path)
    except Exception as exc:  # noqa: BLE001
        log.warning("disk usage of %s failed: %s", path, exc)
        return 0, 0
    return int(usage.total), int(usage.free)


# /proc/cpuinfo keys naming the CPU, by preference. x86 has "model name"; other
# architectures use other keys (arm: "Processor"/"Model"/"Hardware", POWER: "cpu",
# RISC-V: "uarch"), and recent arm64 kernels have none of them.
_CPUINFO_KEYS = ("model name", "Processor", "cpu", "uarch", "Model", "Hardware")


def _cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo on Linux, else platform.processor()."""
    import platform

    if sys.platform.startswith("linux"):
        found: dict[str, str] = {}
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    key, sep, value = line.partition(":")
                    key, value = key.strip(), value.strip()
                    if sep and value and key in _CPUINFO_KEYS:
                        found.setdefault(key, value)
        except OSError as exc:
            log.debug("cannot read /proc/cpuinfo: %s", exc)
        for key in _CPUINFO_KEYS:
            if key in found:
                return found[key]
    # platform.processor() is often empty on Linux, hence the cpuinfo read first.
    return platform.processor() or platform.machine()


def _os_release() -> str:
    """Distribution name (PRETTY_NAME of os-release), else the kernel release."""
    import platform

    # /usr/lib/os-release is the fallback location os-release(5) names.
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    key, sep, value = line.strip().partition("=")
                    if sep and key == "PRETTY_NAME":
                        pretty = _unquote_os_release(value)
                        if pretty:
                            return pretty
        except OSError:
            continue
    return platform.release()


def _unquote_os_release(value: str) -> str:
    """Undo os-release's shell-style quoting of one value (without a shell parser)."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == '"':
            # Inside double quotes os-release allows \" \\ \$ \` escapes.
            for esc in ('\\"', "\\\\", "\\$", "\\`"):
                inner = inner.replace(esc, esc[1])
        return inner
    return value


# --------------------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------------------


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
    except Exception as exc:  # noqa: BLE001 - NVMLError, ImportError, OSError, ...
        nvml_reason = _reason(exc)
        log.debug("NVML probe failed (%s); trying nvidia-smi", nvml_reason)
    try:
        gpus, smi_reason = _probe_nvidia_smi()
    except Exception as exc:  # noqa: BLE001 - belt and braces: never raise
        gpus, smi_reason = None, _reason(exc)
    if gpus is not None:
        return gpus, "nvidia-smi"
    log.debug("nvidia-smi probe failed: %s", smi_reason)
    return [], f"none: NVML: {nvml_reason}; nvidia-smi: {smi_reason}"[:_MAX_GPU_PROBE]


def _reason(exc: BaseException) -> str:
    """A one-line, bounded description of why a probe failed."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return (msg or type(exc).__name__)[:_MAX_REASON]


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
                    uuid=_nvml_optional(lambda: _as_text(pynvml.nvmlDeviceGetUUID(handle))),
                    compute_capability=_nvml_optional(
                        lambda: "{}.{}".format(*pynvml.nvmlDeviceGetCudaComputeCapability(handle))
                    ),
                )
            )
        return gpus
    finally:
        # Always release NVML: it holds driver handles, and an init without shutdown
        # leaks a reference count that keeps the library loaded.
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001
            log.debug("nvmlShutdown failed: %s", exc)


def _nvml_optional(fn) -> str:  # type: ignore[no-untyped-def]
    """One optional NVML field: its value, or "" when the device cannot say."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        log.debug("optional NVML field unavailable: %s", exc)
        return ""


def _probe_nvidia_smi() -> tuple[list[common_pb2.Gpu] | None, str]:
    """Enumerate GPUs by running ``nvidia-smi``; ``(None, reason)`` when that fails."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "not found on PATH"
    reason = ""
    # Drivers older than ~510 do not know compute_cap and reject the whole query
    # ('Field "compute_cap" is not a valid field to query.'), so retry without it.
    for fields in (_SMI_FIELDS, _SMI_FIELDS[:-1]):
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
            return None, _reason(exc)
        if proc.returncode == 0:
            gpus = _parse_smi_csv(proc.stdout, fields)
            if gpus is None:
                return None, "unparseable output: " + _first_line(proc.stdout)
            return gpus, ""
        reason = f"exit {proc.returncode}: " + _first_line(proc.stderr or proc.stdout)
        log.debug("%s failed: %s", " ".join(argv), reason)
    return None, reason[:_MAX_REASON]


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:_MAX_REASON]
    return ""


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


def _parse_smi_csv(text: str, fields: Sequence[str]) -> list[common_pb2.Gpu] | None:
    """Parse ``--format=csv,noheader,nounits`` output for the given ``fields``.

    Returns ``None`` if there was output but no line could be parsed (so the caller
    reports garbage instead of claiming zero GPUs).
    """
    n = len(fields)
    gpus: list[common_pb2.Gpu] = []
    saw_output = False
    for position, line in enumerate(l for l in text.splitlines() if l.strip()):
        saw_output = True
        parts = line.split(",")
        if len(parts) < n:
            log.debug("nvidia-smi line with %d of %d fields ignored: %r", len(parts), n, line)
            continue
        if len(parts) > n:
            # The name is the only free-text column; re-join it if it contained commas.
            name_pos = fields.index("name")
            extra = len(parts) - n
            parts = [*parts[:name_pos], ",".join(parts[name_pos : name_pos + extra + 1]),
                     *parts[name_pos + extra + 1 :]]
        row = {field: part.strip() for field, part in zip(fields, parts)}

        def text_of(field: str) -> str:
            value = row.get(field, "")
            return "" if _smi_missing(value) else value

        gpus.append(
            common_pb2.Gpu(
                index=_smi_int(row["index"], default=position),
                model=text_of("name"),
                memory_bytes=_smi_int(row["memory.total"]) * _MIB,
                memory_free_bytes=_smi_int(row["memory.free"]) * _MIB,
                driver=text_of("driver_version"),
                uuid=text_of("uuid"),
                compute_capability=text_of("compute_cap"),
            )
        )
    if saw_output and not gpus:
        return None
    return gpus


# --------------------------------------------------------------------------------------
# Clock offset
# --------------------------------------------------------------------------------------


def _split_server(server: str, default_port: int) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` into (host, port).

    A bare IPv6 address (several colons, no brackets) is taken as a host without port.
    """
    s = server.strip()
    port_text = ""
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port_text = rest[1:]
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
    else:
        host = s
    if not host:
        raise ValueError(f"no host in NTP server {server!r}")
    if not port_text:
        return host, default_port
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in NTP server {server!r}")
    return host, port


def ntp_samples(
    servers: Iterable[str], timeout: float = 1.0, port: int = 123
) -> list[common_pb2.ClockSample]:
    """Measure the local clock's offset against each NTP server, one query each.

    Args:
        servers: ``"host"`` or ``"host:port"`` (``"[v6]:port"`` for IPv6).
        timeout: per-server socket timeout in seconds (name resolution is not bounded
            by it; use addresses where that matters).
        port: the port for servers given without one.

    Returns:
        One sample per server that answered sanely, with ``source="ntp:<server>"``
        (the server string as given). Servers that fail, time out, or answer as
        unsynchronized are skipped and logged at debug level. Never raises.

    The uncertainty is RFC 5905's root synchronization distance: half our round trip
    (the offset formula assumes symmetric paths, so asymmetry can err by at most half
    the round trip) plus the server's own bound on its error against the reference
    clock (root_delay / 2 + root_dispersion).
    """
    servers = [s for s in servers if s and s.strip()]
    if not servers:
        return []
    try:
        import ntplib
    except ImportError as exc:  # pragma: no cover - ntplib is a declared dependency
        log.debug("ntplib unavailable: %s", exc)
        return []
    client = ntplib.NTPClient()
    out: list[common_pb2.ClockSample] = []
    for server in servers:
        try:
            host, server_port = _split_server(server, port)
            resp = client.request(host, version=4, port=server_port, timeout=timeout)
            _check_ntp_reply(resp)
        except Exception as exc:  # noqa: BLE001 - ntplib raises NTPException, OSError, ...
            log.debug("NTP server %s skipped: %s", server, _reason(exc))
            continue
        # A negative round trip means the local clock was stepped mid-query; clamp so
        # we never claim better than the server's own error.
        delay = max(0.0, float(resp.delay))
        out.append(
            common_pb2.ClockSample(
                offset_s=float(resp.offset),
                uncertainty_s=delay / 2 + float(resp.root_delay) / 2 + float(resp.root_dispersion),
                source="ntp:" + server.strip(),
                measured_at=time.time(),
            )
        )
    return out


def _check_ntp_reply(resp) -> None:  # type: ignore[no-untyped-def]
    """Reject replies whose timestamps must not be trusted (ntplib does not check)."""
    if resp.mode != 4:
        raise ValueError(f"not a server reply (mode {resp.mode})")
    if resp.stratum == 0:
        # Kiss-o'-Death (RATE, DENY, ...): the server refuses to serve time.
        raise ValueError("kiss-o'-death reply (stratum 0)")
    if resp.leap == 3 or resp.stratum >= 16:
        raise ValueError("server clock is unsynchronized")


def scheduler_sample(t_send: float, server_time: float, t_recv: float) -> common_pb2.ClockSample:
    """A clock sample against the scheduler, by Cristian's algorithm.

    Args:
        t_send: local wall time (``time.time()``) just before the RPC was sent.
        server_time: the scheduler's wall time carried in the reply.
        t_recv: local wall time just after the reply arrived.

    The scheduler read its clock somewhere within the round trip; assuming the
    middle gives ``offset = server_time - (t_send + t_recv) / 2``, off by at most half
    the round trip, which is the uncertainty. (abs() keeps a local clock step during
    the call from producing a negative uncertainty.)
    """
    return common_pb2.ClockSample(
        offset_s=server_time - (t_send + t_recv) / 2.0,
        uncertainty_s=abs(t_recv - t_send) / 2.0,
        source="scheduler",
        measured_at=t_recv,
    )


def best_offset(
    samples: Iterable[common_pb2.ClockSample],
) -> common_pb2.ClockSample | None:
    """The sample with the smallest uncertainty, or ``None`` if there are none.

    Why the minimum rather than an average: each sample's uncertainty bounds its error
    (the true offset lies within ``offset +- uncertainty``), so the tightest interval is
    the best estimate we have; averaging would pull a precise sample toward a loose
    one, and the robust alternatives (NTP's intersection/clustering) need more sources
    than an agent usually has. Ties go to the most recent sample.

    Note that NTP samples measure against UTC and scheduler samples against the
    scheduler's clock; mixing them assumes the scheduler itself keeps NTP time.
    """
    best: common_pb2.ClockSample | None = None
    for sample in samples:
        if (
            best is None
            or sample.uncertainty_s < best.uncertainty_s
            or (sample.uncertainty_s == best.uncertainty_s and sample.measured_at > best.measured_at)
        ):
            best = sample
    return best


class ClockTracker:
    """Keeps the agent's current view of its clock offset, for register/heartbeat.

    * NTP: :meth:`update_ntp` queries the configured servers (blocking network I/O;
      call it from a thread executor every few minutes) and keeps the latest sample
      per server, dropping samples older than ``max_age_s``.
    * Scheduler: :meth:`observe_scheduler` is fed every round trip to the scheduler
      and keeps the last ``window`` of them; the one reported is the one with the
      smallest uncertainty, because the lowest-RTT round trip is the one least
      distorted by queueing, which is what makes a single RPC noisy.

    Reported samples are *aged*: their uncertainty grows by ``drift_rate`` per second
    since they were measured (RFC 5905's 15 ppm by default), so a stale precise
    sample does not outrank a fresh one forever, and the scheduler's lease padding
    stays honest between measurements.

    Thread-safe: the NTP update runs in an executor thread while the heartbeat loop
    reads :meth:`samples`.
    """

    def __init__(
        self,
        ntp_servers: Sequence[str] = (),
        *,
        ntp_timeout: float = 1.0,
        window: int = 8,
        max_age_s: float = 3600.0,
        drift_rate: float = RFC5905_PHI,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._servers = list(ntp_servers)
        self._ntp_timeout = ntp_timeout
        self._max_age_s = max_age_s
        self._drift_rate = drift_rate
        self._lock = threading.Lock()
        self._ntp: dict[str, common_pb2.ClockSample] = {}
        self._rtts: deque[common_pb2.ClockSample] = deque(maxlen=window)

    def update_ntp(self) -> list[common_pb2.ClockSample]:
        """Query the NTP servers once; returns the fresh samples (maybe none)."""
        # Network I/O outside the lock: heartbeats must not wait on a slow server.
        fresh = ntp_samples(self._servers, timeout=self._ntp_timeout)
        with self._lock:
            for sample in fresh:
                # A server that did not answer this round keeps its older sample; it
                # ages, and expires after max_age_s.
                self._ntp[sample.source] = sample
        return fresh

    def observe_scheduler(
        self, t_send: float, server_time: float, t_recv: float
    ) -> common_pb2.ClockSample:
        """Record one round trip to the scheduler; returns the sample it made."""
        sample = scheduler_sample(t_send, server_time, t_recv)
        with self._lock:
            now = sample.measured_at
            # If an older sample's interval no longer overlaps the new one, one of the
            # clocks was stepped since: the old samples describe a past offset, and
            # keeping the min-uncertainty one would report it for a whole window.
            kept = [
                old
                for old in self._rtts
                if abs(old.offset_s - sample.offset_s)
                <= self._aged_uncertainty(old, now) + sample.uncertainty_s
            ]
            if len(kept) != len(self._rtts):
                log.info(
                    "clock step detected against the scheduler (offset now %.6f s); "
                    "dropping %d earlier sample(s)",
                    sample.offset_s,
                    len(self._rtts) - len(kept),
                )
                self._rtts.clear()
                self._rtts.extend(kept)
            self._rtts.append(sample)
        return sample

    def scheduler_offset(self, now: float | None = None) -> common_pb2.ClockSample | None:
        """The best (aged) scheduler sample in the window, or ``None``."""
        now = time.time() if now is None else now
        with self._lock:
            aged = [self._aged(s, now) for s in self._rtts]
        return best_offset(aged)

    def samples(self, now: float | None = None) -> list[common_pb2.ClockSample]:
        """Samples to send in register/heartbeat: each NTP server's latest, then the
        best scheduler sample. All are copies with aged uncertainty."""
        now = time.time() if now is None else now
        with self._lock:
            for source, s in list(self._ntp.items()):
                if now - s.measured_at > self._max_age_s:
                    del self._ntp[source]
            out = [self._aged(s, now) for s in self._ntp.values()]
            best_rtt = best_offset(self._aged(s, now) for s in self._rtts)
        if best_rtt is not None:
            out.append(best_rtt)
        return out

    def best(self, now: float | None = None) -> common_pb2.ClockSample | None:
        """The single most certain current sample (see :func:`best_offset`)."""
        return best_offset(self.samples(now))

    def _aged_uncertainty(self, sample: common_pb2.ClockSample, now: float) -> float:
        return sample.uncertainty_s + self._drift_rate * max(0.0, now - sample.measured_at)

    def _aged(self, sample: common_pb2.ClockSample, now: float) -> common_pb2.ClockSample:
        copy = common_pb2.ClockSample()
        copy.CopyFrom(sample)
        copy.uncertainty_s = self._aged_uncertainty(sample, now)
        return copy
