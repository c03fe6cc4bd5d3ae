#!/usr/bin/env python3
"""One client process of bench/scale.py: many lightweight agents on one asyncio loop.

Each agent has its own certificate (``PKI/NAME.crt``), its own gRPC channel (so its own TCP
connection and TLS session) and speaks the real agent protocol over mTLS, as agent/session.py
does: Register, then the work stream (``Connect``) with one credit, a heartbeat on the stream
every heartbeat interval (times a random 0.9-1.0, as the real agent), and every assignment
completed at once (``succeeded``, no process spawned) with the credit given back.

It is driven over stdin/stdout, one JSON object a line:

* on start it connects every agent, then prints ``{"connected": N, "failed": M, ...}``;
* ``mark`` prints the counters so far (heartbeats sent and answered, assignments, errors,
  streams open, heartbeat round trips and this loop's lag since the last mark);
* ``collect`` prints every assignment as ``[run_id, task, wall time received]``;
* ``stop`` closes every stream and channel, prints ``{"stopped": true}`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from outrider.tls import DEFAULT_CHANNEL_OPTIONS, channel_credentials, pki_paths
from outrider.v1 import agent_pb2, agent_pb2_grpc, common_pb2

#: Agents registering at once (each a TLS handshake on both sides).
CONNECT_CONCURRENCY = 32
LAG_TICK_S = 0.1


class Counters:
    def __init__(self) -> None:
        self.hb_sent = 0
        self.hb_acked = 0
        self.assigned = 0
        self.completions_acked = 0
        self.rpc_errors = 0
        self.disconnects = 0
        self.streams = 0
        self.rtts_ms: list[float] = []
        self.lags_ms: list[float] = []
        self.first_errors: list[str] = []

    def error(self, what: str) -> None:
        self.rpc_errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(what)

    def mark(self) -> dict[str, Any]:
        rtts, lags = sorted(self.rtts_ms), sorted(self.lags_ms)
        self.rtts_ms, self.lags_ms = [], []
        return {
            "hb_sent": self.hb_sent,
            "hb_acked": self.hb_acked,
            "assigned": self.assigned,
            "completions_acked": self.completions_acked,
            "rpc_errors": self.rpc_errors,
            "disconnects": self.disconnects,
            "streams": self.streams,
            "rtt_ms": rtts,
            "lag_p99_ms": pct(lags, 0.99),
            "lag_max_ms": lags[-1] if lags else 0.0,
            "first_errors": self.first_errors,
        }


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * q))]


class LightAgent:
    """One agent: a channel, a work stream, a heartbeat loop."""

    def __init__(self, name: str, address: str, pki: Path, counters: Counters, log: list[list[Any]]) -> None:
        ca, cert, key = pki_paths(pki, name)
        self.name = name
        self.channel = grpc.aio.secure_channel(
            address, channel_credentials(ca, cert, key), options=DEFAULT_CHANNEL_OPTIONS
        )
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.c = counters
        self.log = log
        self.call: Any = None
        self.interval = 3.0
        self.lock = asyncio.Lock()  # one write at a time on the stream
        self.leases: dict[tuple[str, str], common_pb2.LeaseRef] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.pending: set[asyncio.Task[None]] = set()  # completions on their way (kept referenced)
        self.stopping = False

    async def start(self) -> None:
        caps = common_pb2.Capabilities(cpu_cores=2, memory_bytes=2**30, slots=1)
        req = agent_pb2.RegisterRequest(capabilities=caps, client_time=time.time(), instance_id=self.name)
        resp = await self.stub.Register(req, timeout=60)
        self.interval = resp.heartbeat_interval_s or self.interval
        self.call = self.stub.Connect()
        await self.send(agent_pb2.AgentMessage(credits=1))
        self.c.streams += 1
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._beats())]

    async def send(self, msg: agent_pb2.AgentMessage) -> None:
        async with self.lock:
            await self.call.write(msg)

    async def _beats(self) -> None:
        await asyncio.sleep(random.uniform(0, self.interval))  # spread the agents' phases
        while True:
            hb = agent_pb2.HeartbeatRequest(
                client_time=time.time(), free_slots=0 if self.leases else 1, leases=list(self.leases.values())
            )
            try:
                await self.send(agent_pb2.AgentMessage(heartbeat=hb))
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                if not self.stopping:
                    self.c.error(f"{self.name} heartbeat: {exc!r}"[:300])
                return
            self.c.hb_sent += 1
            await asyncio.sleep(self.interval * random.uniform(0.9, 1.0))

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                now = time.time()
                if msg.HasField("heartbeat"):
                    self.c.hb_acked += 1
                    if msg.heartbeat.client_time:
                        self.c.rtts_ms.append((now - msg.heartbeat.client_time) * 1000)
                self.c.completions_acked += len(msg.acks)
                for a in msg.assignments:
                    self.c.assigned += 1
                    self.log.append([a.lease.run_id, a.lease.task, now])
                    self.leases[(a.lease.run_id, a.lease.task)] = a.lease
                    t = asyncio.ensure_future(self._complete(a.lease))
                    self.pending.add(t)
                    t.add_done_callback(self.pending.discard)
        except grpc.RpcError as exc:
            if not self.stopping:
                self.c.error(f"{self.name} stream: {exc.code()} {exc.details()}"[:300])
        if not self.stopping:
            self.c.disconnects += 1
        self.c.streams -= 1

    async def _complete(self, lease: common_pb2.LeaseRef) -> None:
        now = time.time()
        done = agent_pb2.Completion(lease=lease, outcome="succeeded", started_at=now, finished_at=now)
        try:
            await self.send(agent_pb2.AgentMessage(credits=1, completions=[done]))
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            if not self.stopping:
                self.c.error(f"{self.name} complete: {exc!r}"[:300])
        self.leases.pop((lease.run_id, lease.task), None)

    async def stop(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()


async def lag_meter(c: Counters) -> None:
    """How late this loop wakes up: a loop too busy to keep its agents' heartbeats on time shows here."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(LAG_TICK_S)
        c.lags_ms.append(max(0.0, (time.monotonic() - t0 - LAG_TICK_S) * 1000))


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    names = [f"{args.prefix}{i:05d}" for i in range(args.first, args.first + args.count)]
    c = Counters()
    log: list[list[Any]] = []
    agents = [LightAgent(n, args.address, Path(args.pki), c, log) for n in names]
    meter = asyncio.ensure_future(lag_meter(c))
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failed = 0

    async def connect(a: LightAgent) -> None:
        nonlocal failed
        async with gate:
            try:
                await a.start()
            except grpc.RpcError as exc:
                failed += 1
                c.error(f"{a.name} register/connect: {exc.code()} {exc.details()}"[:300])

    t0 = time.monotonic()
    await asyncio.gather(*(connect(a) for a in agents))
    emit({"connected": len(agents) - failed, "failed": failed, "connect_s": round(time.monotonic() - t0, 2)})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "mark":
            emit(c.mark())
        elif line == "collect":
            emit({"assignments": log})
        elif line in ("stop", ""):  # "" : our parent is gone
            meter.cancel()
            await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
            emit({"stopped": True})
            return
        else:
            emit({"error": f"unknown command {line!r}"})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="bench/scale.py's agent client process")
    ap.add_argument("--address", required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--prefix", default="scale-")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    asyncio.run(main(ap.parse_args()))
