"""How good the agent's link to the scheduler is: throughput and round-trip time.

The scheduler turns these into an estimated transfer time for a task's missing
inputs (missing bytes ÷ ``bandwidth_bps``), so they come from the transfers the
agent really does (artifact downloads and uploads, and a start-up probe), not
from a synthetic benchmark run now and then.

Units: ``bandwidth_bps`` is **bytes** per second (like every size on the wire),
``rtt_s`` seconds. 0 means "not measured yet".

Kept free of imports beyond the standard library's basics: the agent stays small.
"""

from __future__ import annotations

import math
import time
from collections import deque

__all__ = ["MIN_TRANSFER_BYTES", "LinkMeter", "TransferTimer"]

#: Transfers smaller than this are ignored for throughput: their time is mostly
#: the request's round trip and per-call overhead, not bytes on the wire.
MIN_TRANSFER_BYTES = 64 * 1024


class LinkMeter:
    """Smoothed throughput and round-trip time to the scheduler.

    Throughput: an exponentially weighted moving average of per-transfer
    throughput (``nbytes / seconds``)::

        bw <- bw + a * (sample - bw),   a = alpha * min(1, nbytes / full_weight_bytes)

    ``alpha`` (default 0.3) is the weight of a full-size sample: after a real
    change of the link, ~90 % of the step shows after 7 large transfers
    (0.7**7 ≈ 0.08), while one odd transfer moves the estimate by at most 30 %.
    The weight shrinks for transfers below ``full_weight_bytes`` (1 MiB): a
    64 KiB transfer counts 1/16 as much, because on a long link its time is
    still largely latency and it would drag the estimate far below what a big
    artifact will see. The first sample is taken as is (nothing to smooth yet).

    Round-trip time: the minimum over the last ``rtt_window`` samples (8; with
    heartbeats every 3 s, about 25 s). A round trip is propagation plus queueing
    (scheduler busy, the event loop late, a burst on the link); only the queueing
    part is noise, and it only ever adds, so the smallest recent sample is the
    best estimate of the path itself (TCP's min-RTT filter, BBR's windowed min).
    An EWMA would carry every queueing spike into the estimate; the window lets
    the estimate rise within ~25 s when the path really gets longer (a route
    change), which an all-time minimum never would.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        full_weight_bytes: int = 1 << 20,
        min_bytes: int = MIN_TRANSFER_BYTES,
        rtt_window: int = 8,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if rtt_window < 1:
            raise ValueError("rtt_window must be >= 1")
        self.alpha = alpha
        self.full_weight_bytes = max(1, full_weight_bytes)
        self.min_bytes = min_bytes
        self._bw = 0.0
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self.transfers = 0  # samples taken into the throughput estimate

    @property
    def bandwidth_bps(self) -> float:
        """Smoothed throughput in bytes per second; 0.0 until a transfer was measured."""
        return self._bw

    @property
    def rtt_s(self) -> float:
        """Smoothed round-trip time in seconds; 0.0 until one was measured."""
        return min(self._rtts) if self._rtts else 0.0

    def observe_transfer(self, nbytes: int, seconds: float) -> bool:
        """Take one transfer into the throughput estimate; False if it was ignored
        (too small to say anything about throughput, or a nonsensical time)."""
        if nbytes < self.min_bytes or not (seconds > 0.0) or not math.isfinite(seconds):
            return False
        sample = nbytes / seconds
        if self.transfers == 0:
            self._bw = sample
        else:
            weight = self.alpha * min(1.0, nbytes / self.full_weight_bytes)
            self._bw += weight * (sample - self._bw)
        self.transfers += 1
        return True

    def observe_rtt(self, seconds: float) -> bool:
        """Take one round trip; False if it was ignored (negative or absurd: the
        wall clock was stepped between send and reply)."""
        if not (0.0 <= seconds < 300.0):
            return False
        self._rtts.append(seconds)
        return True


class TransferTimer:
    """Times one streamed transfer for :class:`LinkMeter`.

    Call :meth:`chunk` for each chunk as it arrives. When the stream is long
    enough, the time is measured from the first chunk's arrival to the last
    one's, over the bytes after the first chunk: that leaves out the request's
    round trip and the sender's start-up, which would otherwise make every
    transfer on a long link look slow. Short streams (one chunk) fall back to
    the whole call.
    """

    __slots__ = ("first_at", "first_bytes", "last_at", "nbytes", "start")

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.first_at = 0.0
        self.first_bytes = 0
        self.last_at = 0.0
        self.nbytes = 0

    def chunk(self, n: int) -> None:
        now = time.monotonic()
        if not self.first_at:
            self.first_at, self.first_bytes = now, n
        self.last_at = now
        self.nbytes += n

    @property
    def first_byte_s(self) -> float:
        """Request to first chunk: a round trip plus the sender's start-up; 0 if none came."""
        return self.first_at - self.start if self.first_at else 0.0

    def result(self, min_bytes: int = MIN_TRANSFER_BYTES) -> tuple[int, float]:
        """(bytes, seconds) to feed :meth:`LinkMeter.observe_transfer`."""
        tail = self.nbytes - self.first_bytes
        if tail >= min_bytes and self.last_at > self.first_at:
            return tail, self.last_at - self.first_at
        end = self.last_at or time.monotonic()
        return self.nbytes, end - self.start
