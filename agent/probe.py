"""What this machine offers: the capabilities the scheduler places work by.

The agent advertises :class:`~outrider.v1.common_pb2.Capabilities` when it registers
(CPU, memory, disk, GPUs, OS, labels, zones, power) and again in a heartbeat whenever
the parts that change at run time changed enough to matter
(:func:`capabilities_changed`). GPUs are probed by :mod:`agent.gpu`; the clock
samples sent beside the capabilities come from :mod:`agent.clock`.

Everything here degrades instead of raising: a box without NVIDIA hardware or
without ``/etc/os-release`` is normal, not an error.

The agent must stay small in memory (idle RSS target <= 40 MB), so the modules that
only a probe needs (``pynvml`` with ctypes, ``ntplib``, ``subprocess``, ``platform``,
``shutil``) are imported inside the functions that use them, not at module level.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import psutil

# Re-exported: these lived here before GPU probing and clock tracking got their own
# modules, and ``agent.probe`` stays the one place to import "what the agent probes" from.
from agent.clock import ClockTracker, best_offset, ntp_samples, scheduler_sample
from agent.diag import reason
from agent.gpu import probe_gpus
from outrider.v1 import common_pb2

__all__ = [
    "CAPS_BATTERY_POINTS",
    "CAPS_RELATIVE_CHANGE",
    "CAPS_RTT_FLOOR_S",
    "ClockTracker",
    "best_offset",
    "capabilities_changed",
    "cpu_model",
    "ntp_samples",
    "probe_capabilities",
    "probe_gpus",
    "probe_power",
    "scheduler_sample",
    "unquote_os_release",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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
        cpu_model=_safe("cpu_model", cpu_model, ""),
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
    except Exception as exc:  # AttributeError on platforms without it, OSError, ...
        log.debug("battery probe failed: %s", reason(exc))
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
    points), the jobs queued in Slurm (``queued_jobs``), plus zones and labels. A
    measurement appearing for the first time (0 → something) is a change. Relative
    changes are against the value last sent. ``last=None`` (nothing sent yet) is a change.
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
    if last.queued_jobs != new.queued_jobs:  # (jobs pending in Slurm: agent.slurm)
        return True
    return list(last.zones) != list(new.zones) or dict(last.labels) != dict(new.labels)


def _moved(old: float, new: float, floor: float) -> bool:
    if (old > 0) != (new > 0):
        return True  # measured for the first time (or lost)
    delta = abs(new - old)
    return delta > CAPS_RELATIVE_CHANGE * old and delta > floor


def _safe(what: str, fn: Callable[[], _T | None], default: _T) -> _T:
    """Run one probe, returning ``default`` (and logging) if it raises."""
    try:
        value = fn()
    except Exception as exc:  # a probe must never stop registration
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
    except Exception as exc:  # a failed probe leaves the field empty
        log.warning("disk usage of %s failed: %s", path, exc)
        return 0, 0
    return int(usage.total), int(usage.free)


# /proc/cpuinfo keys naming the CPU, by preference. x86 has "model name"; other
# architectures use other keys (arm: "Processor"/"Model"/"Hardware", POWER: "cpu",
# RISC-V: "uarch"), and recent arm64 kernels have none of them.
_CPUINFO_KEYS = ("model name", "Processor", "cpu", "uarch", "Model", "Hardware")


def cpu_model() -> str:
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
                        pretty = unquote_os_release(value)
                        if pretty:
                            return pretty
        except OSError:
            continue
    return platform.release()


def unquote_os_release(value: str) -> str:
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
