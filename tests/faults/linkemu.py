"""A user-space link emulator: netem's delay, jitter, duplication and reordering over two TUN devices.

This kernel has no ``netem`` qdisc, so the lab routes a host's traffic through this
program in the router namespace (see ``netlab.NetLab.impair``). It opens two TUN
devices, the *host side* and the *core side*, and moves every IP packet read from one
to the other after the delay netem would give it:

* delay ``d`` ms with jitter ``j`` ms: each packet waits ``d + U[-j, +j]`` ms (netem's
  default jitter distribution is uniform too); packets leave in the order of their
  due times, so jitter reorders as it does under netem;
* reorder ``r`` %: that share of packets is sent at once, ahead of the delayed ones
  (netem's ``reorder``: "r % of packets are sent immediately, the rest delayed");
* duplicate ``p`` %: that share of packets is sent twice, each copy with its own delay.

Loss is not done here but by an nftables random-drop rule, and rate by ``tbf``: each
impairment by the kernel where the kernel can. Parameters are per direction ("up": host
to core, "down": core to host) and change at run time: the parent writes one JSON object
per line on stdin, e.g. ``{"up": {"delay_ms": 300, "jitter_ms": 200}, "down": {...}}``.
The program prints ``ready`` once both devices exist, and exits when stdin closes, so it
never outlives the test that started it; its TUN devices (not persistent) vanish with it.

Standard library only: it is started as ``python linkemu.py`` inside a namespace.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import random
import selectors
import struct
import sys
import time
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


@dataclass
class Direction:
    """What one direction of the link does to a packet (netem's knobs, percentages as 0-100)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0

    @classmethod
    def from_json(cls, obj: dict[str, float] | None) -> Direction:
        obj = obj or {}
        known = {k: float(v) for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def delay_s(self, rng: random.Random) -> float:
        """The delay of one copy of a packet, in seconds."""
        if self.reorder_pct and rng.random() * 100 < self.reorder_pct:
            return 0.0
        d = self.delay_ms
        if self.jitter_ms:
            d += rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, d) / 1000.0


def open_tun(name: str) -> int:
    """Create (or attach to) TUN device ``name`` in this namespace; a non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


class Emulator:
    """Moves packets between two TUN fds with per-direction delays (one thread, a heap of due packets)."""

    def __init__(self, host_fd: int, core_fd: int, seed: int | None = None) -> None:
        self.host_fd = host_fd
        self.core_fd = core_fd
        self.up = Direction()  # read from the host side, written to the core side
        self.down = Direction()  # read from the core side, written to the host side
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self.counts = {"up": 0, "down": 0, "dup": 0, "written": 0, "write_errors": 0}

    def configure(self, obj: dict[str, dict[str, float]]) -> None:
        if "up" in obj:
            self.up = Direction.from_json(obj["up"])
        if "down" in obj:
            self.down = Direction.from_json(obj["down"])

    def _schedule(self, packet: bytes, out_fd: int, d: Direction, now: float) -> None:
        copies = 2 if d.duplicate_pct and self.rng.random() * 100 < d.duplicate_pct else 1
        if copies == 2:
            self.counts["dup"] += 1
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._heap, (now + d.delay_s(self.rng), self._seq, out_fd, packet))

    def on_readable(self, fd: int) -> None:
        """Drain every packet waiting on ``fd`` into the heap."""
        up = fd == self.host_fd
        out_fd, d = (self.core_fd, self.up) if up else (self.host_fd, self.down)
        while True:
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not packet:
                return
            self.counts["up" if up else "down"] += 1
            self._schedule(packet, out_fd, d, time.monotonic())

    def flush_due(self) -> float | None:
        """Write every packet whose time has come; the seconds until the next one (None: none waits)."""
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, out_fd, packet = heapq.heappop(self._heap)
            try:
                os.write(out_fd, packet)
                self.counts["written"] += 1
            except OSError:
                # A full queue or a device going down: the packet is lost, as on a wire.
                self.counts["write_errors"] += 1
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - now)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-dev", required=True, help="TUN device on the host's side")
    ap.add_argument("--core-dev", required=True, help="TUN device on the core (router) side")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    host_fd = open_tun(args.host_dev)
    core_fd = open_tun(args.core_dev)
    emu = Emulator(host_fd, core_fd, args.seed)
    sel = selectors.DefaultSelector()
    sel.register(host_fd, selectors.EVENT_READ, "tun")
    sel.register(core_fd, selectors.EVENT_READ, "tun")
    stdin_fd = sys.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_READ, "ctl")
    pending = b""
    print("ready", flush=True)
    timeout: float | None = None
    while True:
        for key, _ in sel.select(timeout):
            if key.data == "tun":
                emu.on_readable(key.fd)
                continue
            try:
                chunk = os.read(stdin_fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:  # the test that started us is gone: stop, taking the devices with us
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    obj = json.loads(line)
                    if obj.get("stats"):
                        print(json.dumps(emu.counts), flush=True)
                    emu.configure(obj)
        timeout = emu.flush_due()


if __name__ == "__main__":
    sys.exit(main())
