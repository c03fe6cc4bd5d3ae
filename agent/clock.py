"""How far this machine's clock is off: NTP, round trips to the scheduler, and tracking.

The agent sends :class:`~outrider.v1.common_pb2.ClockSample` values with every
register and heartbeat, so that the scheduler can pad lease expiry by the agent's
clock uncertainty (and keep work that needs a good clock off agents without one).

Never raises: an unreachable NTP server is normal, not an error. ``ntplib`` is
imported only when NTP servers are queried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from agent.diag import reason
from outrider.v1 import common_pb2

__all__ = [
    "RFC5905_PHI",
    "ClockTracker",
    "best_offset",
    "ntp_samples",
    "scheduler_sample",
    "split_server",
]

log = logging.getLogger(__name__)

#: RFC 5905's frequency tolerance (PHI, 15 ppm): how fast the error of a past clock
#: measurement is assumed to grow. Used to age samples so that an old, once-precise
#: measurement does not outrank a fresh, slightly less precise one forever.
RFC5905_PHI = 15e-6


def split_server(server: str, default_port: int) -> tuple[str, int]:
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


def ntp_samples(servers: Iterable[str], timeout: float = 1.0, port: int = 123) -> list[common_pb2.ClockSample]:
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
            host, server_port = split_server(server, port)
            resp = client.request(host, version=4, port=server_port, timeout=timeout)
            _check_ntp_reply(resp)
        except Exception as exc:  # ntplib raises NTPException, OSError, ...
            log.debug("NTP server %s skipped: %s", server, reason(exc))
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


def _check_ntp_reply(resp: Any) -> None:
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

    def observe_scheduler(self, t_send: float, server_time: float, t_recv: float) -> common_pb2.ClockSample:
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
                if abs(old.offset_s - sample.offset_s) <= self._aged_uncertainty(old, now) + sample.uncertainty_s
            ]
            if len(kept) != len(self._rtts):
                log.info(
                    "clock step detected against the scheduler (offset now %.6f s); dropping %d earlier sample(s)",
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
