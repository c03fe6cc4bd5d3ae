"""The agent daemon: dials out to the scheduler, pulls work, runs stages, reports.

Connection lifecycle::

    ┌──────────┐ register ok  ┌───────────┐ stream breaks / scheduler gone ┌──────────┐
    │ starting │─────────────▶│ connected │───────────────────────────────▶│ backoff  │
    └──────────┘              └───────────┘                                └──────────┘
          ▲                         ▲        running stages keep running;        │
          │                         └──── re-register, re-send undelivered ◀─────┘
          │                               completions, claim held leases
    SIGTERM: stop asking for work, let running stages finish (drain); a second SIGTERM kills them.
    SIGINT: stop now, killing running stages (their leases expire and they run elsewhere).

The agent only dials out (edge boxes sit behind NAT): one ``Connect`` stream
carries credits (free slots), completions, logs and heartbeats up, and
assignments, acks and cancellations down. A stage whose lease the agent cannot
renew within the lease TTL is killed by the agent itself, so an old holder never
runs beside a new attempt elsewhere (invariant 3). A completion stays in the
outbox until the scheduler acknowledged it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from outrider.tls import DEFAULT_CHANNEL_OPTIONS, channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, artifact_pb2_grpc, common_pb2
from agent.config import AgentConfig
from agent.runner import Runner, Stage, reap_orphans

log = logging.getLogger(__name__)
T = TypeVar("T")
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})

#: Nomad's rule: reconnect no faster than once a second, plus random stagger.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
MAX_PENDING_LOG_BYTES = 8 << 20  # logs buffered while disconnected; the oldest go first


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        from agent.probe import ClockTracker, probe_capabilities

        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.slots = cfg.slots or (os.cpu_count() or 1)
        self.caps = probe_capabilities(cfg.labels, self.slots, str(self.state_dir))
        _shed("pynvml")  # only the start-up probe needs NVML's bindings; an idle agent stays small
        self.clock = ClockTracker(cfg.ntp_servers)
        self.cache_dir = self.state_dir / "cache"
        self.work_root = self.state_dir / "work"
        self.scratch = self.state_dir / "scratch"
        for d in (self.cache_dir, self.work_root, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        reap_orphans(self.work_root)
        self.runner = Runner(self.work_root, self._fetch, self._publish, self._log, kill_grace=cfg.kill_grace)
        self.stages: dict[tuple[str, str, int], Stage] = {}
        self.outbox: dict[tuple[str, str, int], agent_pb2.Completion] = {}
        self.heartbeat_interval = 3.0
        self.lease_ttl = 15.0
        self.connected = asyncio.Event()
        self.draining = False
        self._stop = asyncio.Event()
        # Up-going batch, flushed by the sender: whatever accumulates while one
        # message is being written leaves in the next one.
        self._credits = 0
        self._completions: list[agent_pb2.Completion] = []
        self._logs: list[agent_pb2.LogChunk] = []
        self._log_bytes = 0
        self._heartbeat: agent_pb2.HeartbeatRequest | None = None
        self._wake = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._artifacts: artifact_pb2_grpc.ArtifactServiceStub | None = None
        self._fetching: dict[str, asyncio.Future[Path]] = {}
        self._session_task: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self._stop_now)
        watchdog = asyncio.ensure_future(self._watchdog())
        ntp = asyncio.ensure_future(self._ntp_loop()) if self.cfg.ntp_servers else None
        delay = BACKOFF_MIN_S
        try:
            while not self._stop.is_set():
                try:
                    self._session_task = asyncio.ensure_future(self._session())
                    await self._session_task
                    delay = BACKOFF_MIN_S
                except asyncio.CancelledError:
                    if not self._stop.is_set():
                        raise
                except grpc.aio.AioRpcError as exc:
                    log.warning("scheduler %s unreachable: %s: %s", self.cfg.scheduler, exc.code().name,
                                exc.details())
                except Exception:
                    log.exception("session failed")
                finally:
                    self.connected.clear()
                    await self._close_channel()
                if self._stop.is_set():
                    break
                # Backoff with jitter: base + random stagger, doubling up to a cap.
                wait = delay + random.uniform(0, delay)
                log.info("reconnecting in %.1fs (%d stages still running)", wait, len(self.stages))
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                delay = min(BACKOFF_MAX_S, delay * 2)
        finally:
            watchdog.cancel()
            if ntp is not None:
                ntp.cancel()
            for stage in list(self.stages.values()):
                stage.stop_reason = stage.stop_reason or "agent stopped"
                await self.runner.kill(stage)
            await self._close_channel()

    def _stop_now(self) -> None:
        log.info("stopping now")
        for stage in self.stages.values():
            stage.stop_reason = stage.stop_reason or "agent stopped"
        self._stop.set()
        self._wake.set()
        if self._session_task is not None:
            self._session_task.cancel()

    def _on_sigterm(self) -> None:
        if self.draining or not self.stages:
            self._stop_now()
            return
        log.info("draining: no new work; %d running stages finish first (SIGTERM again to kill them)",
                 len(self.stages))
        self.draining = True

    async def _close_channel(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._artifacts = None

    # ------------------------------------------------------------------ the session

    def _credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.cfg.ca, self.cfg.cert, self.cfg.key)

    async def _session(self) -> None:
        self._channel = grpc.aio.secure_channel(self.cfg.scheduler, self._credentials(),
                                                options=DEFAULT_CHANNEL_OPTIONS)
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        t0 = time.time()
        resp = await stub.Register(agent_pb2.RegisterRequest(
            capabilities=self.caps, clock=self.clock.samples(), client_time=t0,
            leases=[s.lease for s in self.stages.values()],
        ), timeout=30)
        self.clock.observe_scheduler(t0, resp.server_time, time.time())
        self.heartbeat_interval = resp.heartbeat_interval_s or self.heartbeat_interval
        self.lease_ttl = resp.lease_ttl_s or self.lease_ttl
        now = time.monotonic()
        for stage in self.stages.values():
            stage.last_renewed = now
        self._stop_lost(resp.lost, "scheduler no longer knows this lease")
        log.info("registered with %s as %s (%d slots, %d stages held, %d undelivered results)",
                 self.cfg.scheduler, resp.agent_id, self.slots, len(self.stages), len(self.outbox))
        # A fresh stream: all free slots as credit, and every undelivered completion.
        self._credits = 0 if self.draining else max(0, self.slots - len(self.stages))
        self._completions = list(self.outbox.values())
        self._heartbeat = None
        call = stub.Connect()
        self.connected.set()
        sender = asyncio.ensure_future(self._send(call))
        beats = asyncio.ensure_future(self._heartbeats())
        try:
            async for msg in call:
                self._on_message(msg)
                if self._stop.is_set():
                    break
        finally:
            sender.cancel()
            beats.cancel()
            call.cancel()
        if not self._stop.is_set():
            raise ConnectionError("the scheduler closed the work stream")

    async def _send(self, call: Any) -> None:
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not (self._credits or self._completions or self._logs or self._heartbeat):
                continue
            msg = agent_pb2.AgentMessage(credits=self._credits, completions=self._completions, logs=self._logs)
            if self._heartbeat is not None:
                msg.heartbeat.CopyFrom(self._heartbeat)
            self._credits, self._completions, self._logs, self._log_bytes, self._heartbeat = 0, [], [], 0, None
            await call.write(msg)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval * random.uniform(0.9, 1.0))
            self._heartbeat = agent_pb2.HeartbeatRequest(
                # A stage stopping for its timeout still holds its lease: its result is coming.
                leases=[s.lease for s in self.stages.values() if s.stop_reason in ("", "timeout")],
                clock=self.clock.samples(), client_time=time.time(),
                free_slots=max(0, self.slots - len(self.stages)),
            )
            self._wake.set()

    def _on_message(self, msg: agent_pb2.SchedulerMessage) -> None:
        for a in msg.assignments:
            self._start(a)
        for ack in msg.acks:
            key = (ack.lease.run_id, ack.lease.task, ack.lease.epoch)
            self.outbox.pop(key, None)
            if ack.code != 0:
                log.warning("scheduler refused the result of %s/%s attempt %d: %s",
                            ack.lease.run_id, ack.lease.task, ack.lease.epoch, ack.message)
        if msg.cancel:
            self._stop_lost(msg.cancel, "cancelled by the scheduler")
        if msg.HasField("heartbeat"):
            hb = msg.heartbeat
            if hb.client_time:
                self.clock.observe_scheduler(hb.client_time, hb.server_time, time.time())
            self.lease_ttl = hb.lease_ttl_s or self.lease_ttl
            lost = {(r.run_id, r.task, r.epoch) for r in hb.lost}
            now = time.monotonic()
            for key, stage in self.stages.items():
                # Renewed as of when the heartbeat was *sent*: the conservative side.
                if key not in lost and hb.client_time:
                    stage.last_renewed = max(stage.last_renewed, now - (time.time() - hb.client_time))
            self._stop_lost(hb.lost, "lease lost")

    def _stop_lost(self, refs: Any, why: str) -> None:
        for ref in refs:
            stage = self.stages.get((ref.run_id, ref.task, ref.epoch))
            if stage is not None and not stage.stop_reason:
                log.info("stopping %s/%s attempt %d: %s", ref.run_id, ref.task, ref.epoch, why)
                stage.stop_reason = why
                asyncio.ensure_future(self.runner.kill(stage))

    # ------------------------------------------------------------------ stages

    def _start(self, a: agent_pb2.Assignment) -> None:
        stage = Stage(a)
        if stage.key in self.stages:
            return  # a duplicate delivery
        self.stages[stage.key] = stage
        stage.task = asyncio.ensure_future(self._run_stage(stage))

    async def _run_stage(self, stage: Stage) -> None:
        ref = stage.lease
        try:
            completion = await self.runner.run(stage)
        except asyncio.CancelledError:
            self.stages.pop(stage.key, None)
            raise
        self.stages.pop(stage.key, None)
        if stage.stop_reason and stage.stop_reason != "timeout":
            # Cancelled, lease lost, or the agent is stopping: the scheduler has moved on
            # (or will, when the lease expires); a report would be refused.
            log.info("%s/%s attempt %d stopped (%s)", ref.run_id, ref.task, ref.epoch, stage.stop_reason)
        else:
            self.outbox[stage.key] = completion
            self._completions.append(completion)
        if not self.draining:
            self._credits += 1
        self._wake.set()
        if self.draining and not self.stages:
            asyncio.ensure_future(self._finish_drain())

    async def _finish_drain(self, timeout: float = 30.0) -> None:
        """Drained: wait (bounded) for the last results to be acknowledged, then stop."""
        deadline = time.monotonic() + timeout
        while self.outbox and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained (%d results undelivered); stopping", len(self.outbox))
        self._stop_now()

    async def _watchdog(self) -> None:
        """Stop any stage whose lease we could not renew within the TTL (invariant 3)."""
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_interval / 2))
            now = time.monotonic()
            for stage in list(self.stages.values()):
                if not stage.stop_reason and now - stage.last_renewed > self.lease_ttl:
                    log.warning("lease of %s/%s attempt %d not renewed for %.1fs; stopping the stage",
                                stage.lease.run_id, stage.lease.task, stage.lease.epoch, now - stage.last_renewed)
                    stage.stop_reason = "lease expired"
                    asyncio.ensure_future(self.runner.kill(stage))

    async def _ntp_loop(self) -> None:
        while True:
            await asyncio.to_thread(self.clock.update_ntp)
            await asyncio.sleep(300)

    def _log(self, lease: common_pb2.LeaseRef, stream: str, data: bytes) -> None:
        self._logs.append(agent_pb2.LogChunk(lease=lease, stream=stream, data=data, ts=time.time()))
        self._log_bytes += len(data)
        while self._log_bytes > MAX_PENDING_LOG_BYTES and len(self._logs) > 1:
            self._log_bytes -= len(self._logs.pop(0).data)
        self._wake.set()

    # ------------------------------------------------------------------ artifacts

    def _blob(self, digest: str) -> Path:
        return self.cache_dir / "sha256" / digest[:2] / digest

    async def _fetch(self, ref: common_pb2.ArtifactRef, dest: Path) -> None:
        """Make an artifact appear at ``dest``, downloading it into the cache once."""
        from outrider.artifacts import place

        blob = await self._cached(ref.digest)
        await asyncio.to_thread(place, blob, ref.kind or "file", dest)

    async def _cached(self, digest: str) -> Path:
        blob = self._blob(digest)
        if blob.exists():
            return blob
        pending = self._fetching.get(digest)
        if pending is None:  # one download per digest, however many stages want it
            pending = asyncio.ensure_future(self._download(digest, blob))
            self._fetching[digest] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(digest, None))
        return await asyncio.shield(pending)

    async def _with_scheduler(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run an artifact call, riding out a broken link for up to one lease TTL.

        A stage that finished while the scheduler was unreachable must not fail for
        that: its lease is claimed again on reconnect, so wait and retry. Past the
        TTL the lease is gone anyway and the attempt will run elsewhere.
        """
        deadline = time.monotonic() + self.lease_ttl
        while True:
            stub = self._artifacts
            if stub is not None and self.connected.is_set():
                try:
                    return await op(stub)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _TRANSIENT:
                        raise
                    log.info("%s: scheduler unreachable (%s); retrying", what, exc.code().name)
            if time.monotonic() > deadline:
                raise ConnectionError(f"{what}: scheduler unreachable for {self.lease_ttl:g}s")
            await asyncio.sleep(0.2)

    async def _download(self, digest: str, blob: Path) -> Path:
        from outrider.artifacts import Receiver

        async def fetch(stub: Any) -> Path:
            recv = Receiver(digest, blob)
            try:
                async for chunk in stub.Download(artifact_pb2.DownloadRequest(digest=digest)):
                    recv.write(chunk.data)
                return await asyncio.to_thread(recv.finish)
            except BaseException:
                recv.abort()
                raise

        return await self._with_scheduler(f"download {digest[:12]}", fetch)

    async def _publish(self, name: str, path: Path) -> common_pb2.ArtifactRef:
        """Hash an output and upload it unless the scheduler already has those bytes."""
        from outrider.artifacts import describe, upload_chunks

        digest, size, kind, source = await asyncio.to_thread(describe, path, self.scratch)

        async def push(stub: Any) -> None:
            info = await stub.Stat(artifact_pb2.StatRequest(digest=digest))
            if not info.exists:
                await stub.Upload(_aiter(upload_chunks(source, digest, size, kind)))

        try:
            await self._with_scheduler(f"upload of output {name!r}", push)
        finally:
            if kind == "dir":
                source.unlink(missing_ok=True)
        return common_pb2.ArtifactRef(name=name, digest=digest, size=size, kind=kind)


def _shed(*modules: str) -> None:
    """Forget modules that only start-up used, so their memory can be reclaimed."""
    import gc
    import sys

    for name in [m for m in sys.modules if m.split(".")[0] in modules]:
        del sys.modules[name]
    gc.collect()


async def _aiter(it: Any) -> Any:
    for item in it:
        yield item
