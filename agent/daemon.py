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

What the scheduler places work by is kept current: the agent measures its link
(:class:`~agent.link.LinkMeter`, fed by every artifact transfer, every heartbeat's
round trip and a start-up ``Probe``), keeps an index of its artifact cache
(:class:`BlobCache`, which also keeps the outputs it published, for data
locality), and sends its whole capabilities again in a heartbeat when any of
that changed enough to matter (:func:`agent.probe.capabilities_changed`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from outrider.tls import DEFAULT_CHANNEL_OPTIONS, channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, artifact_pb2_grpc, common_pb2
from agent.config import AgentConfig
from agent.link import LinkMeter, TransferTimer
from agent.runner import Runner, Stage, reap_orphans

log = logging.getLogger(__name__)
T = TypeVar("T")
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})

#: Nomad's rule: reconnect no faster than once a second, plus random stagger.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
MAX_PENDING_LOG_BYTES = 8 << 20  # logs buffered while disconnected; the oldest go first
#: The start-up bandwidth probe gives up after this long (what arrived still counts).
PROBE_TIMEOUT_S = 60.0


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        from agent.probe import ClockTracker, probe_capabilities

        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.slots = cfg.slots or (os.cpu_count() or 1)
        self.caps = probe_capabilities(cfg.labels, self.slots, str(self.state_dir), cfg.zones)
        _shed("pynvml")  # only the start-up probe needs NVML's bindings; an idle agent stays small
        _tune_malloc()
        self.clock = ClockTracker(cfg.ntp_servers)
        self.link = LinkMeter()
        self.cache_dir = self.state_dir / "cache"
        self.work_root = self.state_dir / "work"
        self.scratch = self.state_dir / "scratch"
        for d in (self.cache_dir, self.work_root, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self.cache = BlobCache(self.cache_dir, cfg.cache_max_bytes)
        self.cache.scan()
        self._evict()
        log.info("artifact cache: %d blobs, %d bytes", len(self.cache), self.cache.total)
        self._caps_sent: common_pb2.Capabilities | None = None
        self._probed = cfg.bandwidth_probe_bytes <= 0
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
        caps = self.capabilities()
        resp = await stub.Register(agent_pb2.RegisterRequest(
            capabilities=caps, clock=self.clock.samples(), client_time=t0,
            leases=[s.lease for s in self.stages.values()],
        ), timeout=30)
        self._caps_sent = caps
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
        probe = None if self._probed else asyncio.ensure_future(self._probe_link())
        try:
            async for msg in call:
                self._on_message(msg)
                if self._stop.is_set():
                    break
        finally:
            sender.cancel()
            beats.cancel()
            if probe is not None:
                probe.cancel()
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
            self._heartbeat = self._make_heartbeat(self._heartbeat)
            self._wake.set()

    def _make_heartbeat(self, unsent: agent_pb2.HeartbeatRequest | None = None) -> agent_pb2.HeartbeatRequest:
        """The next heartbeat; it carries the whole capabilities only when they changed
        since the last ones sent (or when ``unsent``, the one it replaces, carried them)."""
        from agent.probe import capabilities_changed

        hb = agent_pb2.HeartbeatRequest(
            # A stage stopping for its timeout still holds its lease: its result is coming.
            leases=[s.lease for s in self.stages.values() if s.stop_reason in ("", "timeout")],
            clock=self.clock.samples(), client_time=time.time(),
            free_slots=max(0, self.slots - len(self.stages)),
        )
        caps = self.capabilities()
        if capabilities_changed(self._caps_sent, caps) or (unsent is not None and unsent.HasField("capabilities")):
            log.debug("capabilities changed (%d cached, %.1f MB/s, rtt %.2f ms); sending them",
                      len(caps.cached), caps.bandwidth_bps / 1e6, caps.rtt_s * 1e3)
            hb.capabilities.CopyFrom(caps)
            self._caps_sent = caps
        return hb

    def capabilities(self) -> common_pb2.Capabilities:
        """The capabilities probed at start, with what changes at run time brought up to date:
        link measurements, power, and the cache inventory."""
        from agent.probe import probe_power

        caps = common_pb2.Capabilities()
        caps.CopyFrom(self.caps)
        caps.bandwidth_bps = self.link.bandwidth_bps
        caps.rtt_s = self.link.rtt_s
        caps.power.CopyFrom(probe_power())
        caps.cached.extend(self.cache.refs())
        return caps

    async def _probe_link(self) -> None:
        """Measure the link right after registering: time a ``Probe`` of N filler bytes.

        A scheduler without ``Probe`` (UNIMPLEMENTED) is not an error: the link is then
        measured by real transfers only. Other failures are retried at the next session.
        """
        n = self.cfg.bandwidth_probe_bytes
        stub = self._artifacts
        if stub is None or n <= 0:
            return
        timer = TransferTimer()
        try:
            async for chunk in stub.Probe(artifact_pb2.ProbeRequest(size=n), timeout=PROBE_TIMEOUT_S):
                timer.chunk(len(chunk.data))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.debug("the scheduler has no bandwidth probe; measuring real transfers only")
                self._probed = True
                return
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or not timer.nbytes:
                log.debug("bandwidth probe failed: %s: %s", exc.code().name, exc.details())
                return
            log.debug("bandwidth probe cut off after %gs with %d of %d bytes", PROBE_TIMEOUT_S, timer.nbytes, n)
        except Exception as exc:  # noqa: BLE001 - a measurement must never break the session
            log.debug("bandwidth probe failed: %s", exc)
            return
        self._probed = True
        self.link.observe_transfer(*timer.result())
        _trim_heap()
        log.info("link to the scheduler: %.1f MB/s (probe of %d bytes)", self.link.bandwidth_bps / 1e6, timer.nbytes)

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
                now_wall = time.time()
                self.clock.observe_scheduler(hb.client_time, hb.server_time, now_wall)
                self.link.observe_rtt(now_wall - hb.client_time)
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
        return self.cache.path(digest)

    def _evict(self) -> None:
        evicted = self.cache.evict()
        if evicted:
            log.info("artifact cache over %d bytes: evicted %d least recently used blob(s); %d bytes left",
                     self.cache.max_bytes, len(evicted), self.cache.total)

    async def _fetch(self, ref: common_pb2.ArtifactRef, dest: Path) -> None:
        """Make an artifact appear at ``dest``, downloading it into the cache once.

        The blob is marked in use from before the download until it is placed, so
        eviction never removes it under a stage that is about to read it.
        """
        from outrider.artifacts import place

        self.cache.acquire(ref.digest)
        try:
            blob = await self._cached(ref.digest, ref.kind)
            await asyncio.to_thread(place, blob, ref.kind or "file", dest)
        finally:
            self.cache.release(ref.digest)
            self._evict()

    async def _cached(self, digest: str, kind: str = "") -> Path:
        blob = self._blob(digest)
        if blob.exists():
            if digest in self.cache:
                self.cache.touch(digest, kind)
            else:  # put there behind our back: adopt it
                self.cache.add(digest, blob.stat().st_size, kind)
            return blob
        self.cache.discard(digest)  # indexed but gone (removed by hand): fetch it again
        pending = self._fetching.get(digest)
        if pending is None:  # one download per digest, however many stages want it
            pending = asyncio.ensure_future(self._download(digest, blob, kind))
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

    async def _download(self, digest: str, blob: Path, kind: str = "") -> Path:
        from outrider.artifacts import Receiver

        async def fetch(stub: Any) -> Path:
            nonlocal kind
            recv = Receiver(digest, blob)
            timer = TransferTimer()
            try:
                async for chunk in stub.Download(artifact_pb2.DownloadRequest(digest=digest)):
                    if not kind and chunk.HasField("info"):
                        kind = chunk.info.kind
                    timer.chunk(len(chunk.data))
                    recv.write(chunk.data)
                path = await asyncio.to_thread(recv.finish)
            except BaseException:
                recv.abort()
                raise
            self.link.observe_transfer(*timer.result())
            self.cache.add(digest, recv.size, kind)
            return path

        path = await self._with_scheduler(f"download {digest[:12]}", fetch)
        self._evict()
        return path

    async def _publish(self, name: str, path: Path) -> common_pb2.ArtifactRef:
        """Hash an output, keep it in the cache, and upload it unless the scheduler has it.

        Keeping it (a file is copied in while it is hashed, a dir's packed tar is
        moved in) means a downstream stage placed here finds its input locally, and
        the cache inventory tells the scheduler so (data locality).
        """
        from outrider.artifacts import upload_chunks

        digest, size, kind, tmp, source = await asyncio.to_thread(self._stash_output, path)
        upload_from, remove_after, kept = source, None, False
        if tmp is not None:
            # On the event loop with no await in between: eviction cannot interleave.
            try:
                upload_from = self.cache.adopt(digest, size, kind, tmp)
                self.cache.acquire(digest)  # not evicted while it uploads
                kept = True
            except OSError as exc:
                log.warning("output %r not kept in the artifact cache: %s", name, exc)
                upload_from = remove_after = tmp
        elif kind == "dir":
            remove_after = source

        async def push(stub: Any) -> None:
            info = await stub.Stat(artifact_pb2.StatRequest(digest=digest))
            if not info.exists:
                t0 = time.monotonic()
                await stub.Upload(_aiter(upload_chunks(upload_from, digest, size, kind)))
                self.link.observe_transfer(size, time.monotonic() - t0)

        try:
            await self._with_scheduler(f"upload of output {name!r}", push)
        finally:
            if remove_after is not None:
                remove_after.unlink(missing_ok=True)
            if kept:
                self.cache.release(digest)
                self._evict()
        return common_pb2.ArtifactRef(name=name, digest=digest, size=size, kind=kind)

    def _stash_output(self, path: Path) -> tuple[str, int, str, Path | None, Path]:
        """(digest, size, kind, temporary copy inside the cache or None, original) of an output.

        Runs in a worker thread. A file is hashed while it is copied into the cache's
        staging area (one read); a dir is packed straight into it. If the copy fails
        (disk full), the output is still hashed and uploaded, just not kept.
        """
        import tempfile

        from outrider.artifacts import hash_file, pack_dir
        from outrider.errors import InvalidArgument

        if path.is_file():
            try:
                digest, size, tmp = self.cache.ingest_file(path)
                return digest, size, "file", tmp, path
            except OSError as exc:
                log.warning("cannot keep output %s in the artifact cache: %s", path, exc)
                digest, size = hash_file(path)
                return digest, size, "file", None, path
        if not path.is_dir():
            raise InvalidArgument(f"{path} is neither a file nor a directory")
        try:
            staging = self.cache.staging()
        except OSError:
            staging = self.scratch
        fd, name = tempfile.mkstemp(dir=staging, prefix=".part-", suffix=".tar")
        os.close(fd)
        tar = Path(name)
        try:
            digest, size = pack_dir(path, tar)
        except BaseException:
            tar.unlink(missing_ok=True)
            raise
        return digest, size, "dir", tar, tar


class BlobCache:
    """The agent's artifact cache: ``ROOT/sha256/ab/<digest>`` files, and an index of them.

    The index maps digest → (size, kind), ordered from least to most recently used;
    it is built by :meth:`scan` at start (order: file mtime, which :meth:`touch`
    refreshes, so recency survives a restart) and kept up to date as downloads land
    (:meth:`add`) and outputs are published (:meth:`adopt`). :meth:`refs` is what the
    agent reports as ``Capabilities.cached``; :attr:`version` changes whenever the
    inventory does.

    Bounded by ``max_bytes`` (0: no bound): :meth:`evict` removes least recently used
    blobs until the total fits, skipping those in use (:meth:`acquire` /
    :meth:`release`: a stage is placing it, or it is being uploaded).

    Temporaries live beside the blobs (same filesystem, so publishing one is an
    atomic ``os.replace``): ``ROOT/sha256/<tmp>`` and ``ROOT/sha256/ab/.part-*``;
    :meth:`scan` removes those a previous process left behind.

    Not thread-safe: the index is touched only on the event loop; worker threads
    only write temporaries (:meth:`ingest_file`).
    """

    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        self.root = Path(root) / "sha256"
        self.max_bytes = max(0, int(max_bytes))
        self._index: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self.total = 0
        self.version = 0
        self._refs: tuple[int, list[common_pb2.ArtifactRef]] = (-1, [])

    # -- the index

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def __contains__(self, digest: object) -> bool:
        return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def size(self, digest: str) -> int | None:
        entry = self._index.get(digest)
        return None if entry is None else entry[0]

    def digests(self) -> list[str]:
        """Indexed digests, least recently used first."""
        return list(self._index)

    def scan(self) -> int:
        """(Re)build the index from the files on disk; returns how many blobs there are."""
        found: list[tuple[float, str, int]] = []
        self.root.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.root) as top:
            entries = list(top)
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                _unlink(entry.path)  # a staging temporary of a previous process
            elif entry.is_dir(follow_symlinks=False) and len(entry.name) == 2:
                with os.scandir(entry.path) as sub:
                    for blob in sub:
                        name = blob.name
                        if name.startswith(".part-"):
                            _unlink(blob.path)  # an interrupted download
                        elif _is_digest(name) and name[:2] == entry.name and blob.is_file(follow_symlinks=False):
                            st = blob.stat(follow_symlinks=False)
                            found.append((st.st_mtime, name, st.st_size))
        found.sort()
        self._index = OrderedDict((digest, (size, "")) for _, digest, size in found)
        self.total = sum(size for _, _, size in found)
        self.version += 1
        return len(self._index)

    def add(self, digest: str, size: int, kind: str = "") -> None:
        """Index a blob that is now at :meth:`path` (most recently used)."""
        old = self._index.get(digest)
        if old is not None:
            self.total -= old[0]
            kind = kind or old[1]
        self._index[digest] = (size, kind)
        self._index.move_to_end(digest)
        self.total += size
        if old is None or old[0] != size or old[1] != kind:
            self.version += 1

    def touch(self, digest: str, kind: str = "") -> None:
        """Mark a blob used now (in the index, and its mtime for the next start)."""
        entry = self._index.get(digest)
        if entry is None:
            return
        self._index.move_to_end(digest)
        if kind and not entry[1]:
            self._index[digest] = (entry[0], kind)
            self.version += 1
        try:
            os.utime(self.path(digest))
        except OSError:
            pass

    def discard(self, digest: str) -> None:
        """Forget a blob (its file is gone)."""
        entry = self._index.pop(digest, None)
        if entry is not None:
            self.total -= entry[0]
            self.version += 1

    # -- use and eviction

    def acquire(self, digest: str) -> None:
        self._in_use[digest] = self._in_use.get(digest, 0) + 1

    def release(self, digest: str) -> None:
        n = self._in_use.get(digest, 0) - 1
        if n > 0:
            self._in_use[digest] = n
        else:
            self._in_use.pop(digest, None)

    def in_use(self, digest: str) -> bool:
        return digest in self._in_use

    def evict(self) -> list[str]:
        """Remove least recently used blobs not in use until the total fits; returns their digests."""
        if not self.max_bytes or self.total <= self.max_bytes:
            return []
        evicted: list[str] = []
        for digest in list(self._index):
            if self.total <= self.max_bytes:
                break
            if digest in self._in_use:
                continue
            size, _ = self._index.pop(digest)
            self.total -= size
            _unlink(self.path(digest))
            evicted.append(digest)
        if evicted:
            self.version += 1
        return evicted

    def refs(self) -> list[common_pb2.ArtifactRef]:
        """The inventory as ArtifactRefs (digest, size, kind where known)."""
        version, refs = self._refs
        if version != self.version:
            refs = [common_pb2.ArtifactRef(digest=d, size=size, kind=kind) for d, (size, kind) in self._index.items()]
            self._refs = (self.version, refs)
        return refs

    # -- bringing bytes in

    def staging(self) -> Path:
        """Where temporaries that become blobs are written (same filesystem as the blobs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def ingest_file(self, src: Path) -> tuple[str, int, Path]:
        """Copy a file into a staging temporary while hashing it: (digest, size, temporary).

        Blocking; for a worker thread. Hashing the copy (not the original a second
        time) guarantees the cached bytes are those the digest names (invariant 6).
        """
        import hashlib
        import tempfile

        from outrider.artifacts import CHUNK

        fd, tmp = tempfile.mkstemp(dir=self.staging(), prefix=".part-")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            _unlink(tmp)
            raise
        return h.hexdigest(), size, Path(tmp)

    def adopt(self, digest: str, size: int, kind: str, tmp: Path) -> Path:
        """Make a staged temporary the blob for ``digest`` (atomically); returns the blob.

        If the blob is already there, the temporary is dropped and the blob marked used.
        """
        blob = self.path(digest)
        if digest in self._index and blob.exists():
            _unlink(tmp)
            self.touch(digest, kind)
            return blob
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, blob)
        self.add(digest, size, kind)
        return blob


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


def _libc() -> Any:
    """glibc through ctypes, only when ctypes is already loaded (the GPU probe loads
    it): importing it just for the tuning below would cost more than it saves."""
    import sys

    ctypes = sys.modules.get("ctypes")
    if ctypes is None or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _tune_malloc() -> None:
    """Keep bulk transfer buffers out of the heap, so an idle agent stays small.

    glibc serves allocations above its mmap threshold (128 KiB) with mmap and
    returns them on free, but it raises the threshold to the size of any such
    block that is freed: after the first 1 MiB chunk of a transfer, every later
    one comes from the heap, which keeps megabytes after the transfer ended.
    Setting the threshold explicitly turns that adjustment off.
    """
    libc = _libc()
    if libc is not None:
        try:
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        except AttributeError:  # not glibc (musl has no mallopt)
            pass


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), where that is cheap."""
    libc = _libc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass


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
