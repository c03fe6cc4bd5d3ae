"""Measurement ends for the emulator self-test, run inside the lab's namespaces.

Standard library only: the lab starts it as ``python probe.py MODE ...`` with
``ip netns exec``. A server prints one line ``ready`` once bound, so the client never
races it; every mode that measures prints one JSON object on stdout at the end.

Every host of the lab shares this machine's clocks (network namespaces do not
virtualise time), so a timestamp written by the sender and read by the receiver
gives a true one-way delay.

Modes:

* ``udp-echo --bind IP:PORT``: send every datagram back (until killed);
* ``udp-ping --to IP:PORT --count N --interval S``: round trips of numbered
  datagrams; ``{"sent", "received", "rtts_ms"}`` (late and duplicate replies ignored);
* ``udp-sink --bind IP:PORT --idle S``: count numbered datagrams until ``S`` seconds
  pass without one; ``{"received", "unique", "one_way_ms", "late"}`` where ``late``
  counts datagrams that arrived after one sent later than them (reordered);
* ``udp-blast --to IP:PORT --count N --interval S``: send numbered, timestamped datagrams;
* ``tcp-sink --bind IP:PORT``: receive one connection to its end;
  ``{"bytes", "seconds"}`` from the first byte to the last;
* ``tcp-send --to IP:PORT --bytes N``: send N bytes and close.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

_HDR = struct.Struct("!Id")  # sequence number, sender's monotonic time


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def udp_echo(bind: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(_addr(bind))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)


def udp_ping(to: str, count: int, interval: float, timeout: float) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(_addr(to))
    rtts: dict[int, float] = {}
    sent = 0
    next_send = time.monotonic()
    deadline = None
    while True:
        now = time.monotonic()
        if sent < count and now >= next_send:
            s.send(_HDR.pack(sent, now) + b"x" * 56)
            sent += 1
            next_send += interval
            if sent == count:
                deadline = now + timeout
        if deadline is not None and (now >= deadline or len(rtts) == count):
            break
        wait = (next_send if sent < count else deadline or now) - time.monotonic()
        s.settimeout(max(0.0005, wait))
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        seq, t0 = _HDR.unpack_from(data)
        rtts.setdefault(seq, (time.monotonic() - t0) * 1000.0)
    return {"sent": sent, "received": len(rtts), "rtts_ms": [rtts[k] for k in sorted(rtts)]}


def udp_sink(bind: str, idle: float) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(_addr(bind))
    print("ready", flush=True)
    seen: set[int] = set()
    one_way: list[float] = []
    received = late = 0
    highest = -1
    s.settimeout(None)
    while True:
        data = s.recv(65536)
        now = time.monotonic()
        seq, t0 = _HDR.unpack_from(data)
        received += 1
        if seq in seen:
            continue
        seen.add(seq)
        one_way.append((now - t0) * 1000.0)
        if seq < highest:
            late += 1
        highest = max(highest, seq)
        s.settimeout(idle)
        try:
            while True:
                data = s.recv(65536)
                now = time.monotonic()
                seq, t0 = _HDR.unpack_from(data)
                received += 1
                if seq in seen:
                    continue
                seen.add(seq)
                one_way.append((now - t0) * 1000.0)
                if seq < highest:
                    late += 1
                highest = max(highest, seq)
        except TimeoutError:
            break
    return {"received": received, "unique": len(seen), "one_way_ms": one_way, "late": late}


def udp_blast(to: str, count: int, interval: float) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(_addr(to))
    start = time.monotonic()
    for seq in range(count):
        due = start + seq * interval
        while (now := time.monotonic()) < due:
            time.sleep(min(due - now, 0.001))
        s.send(_HDR.pack(seq, time.monotonic()) + b"x" * 56)
    return {"sent": count}


def tcp_sink(bind: str) -> dict[str, object]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(_addr(bind))
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    total = 0
    first = last = 0.0
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        now = time.monotonic()
        if not total:
            first = now
        total += len(chunk)
        last = now
    return {"bytes": total, "seconds": last - first}


def tcp_send(to: str, nbytes: int) -> dict[str, object]:
    s = socket.create_connection(_addr(to), timeout=120)
    block = b"\0" * 65536
    left = nbytes
    while left:
        n = s.send(block[: min(left, len(block))])
        left -= n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the sink to close: every byte arrived
    s.close()
    return {"sent": nbytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--bind")
    ap.add_argument("--to")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    a = ap.parse_args(argv)
    if a.mode == "udp-echo":
        udp_echo(a.bind)
        return 0
    result: dict[str, object]
    if a.mode == "udp-ping":
        result = udp_ping(a.to, a.count, a.interval, a.timeout)
    elif a.mode == "udp-sink":
        result = udp_sink(a.bind, a.idle)
    elif a.mode == "udp-blast":
        result = udp_blast(a.to, a.count, a.interval)
    elif a.mode == "tcp-sink":
        result = tcp_sink(a.bind)
    elif a.mode == "tcp-send":
        result = tcp_send(a.to, a.bytes)
    else:
        ap.error(f"unknown mode {a.mode}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
