"""The agent's connection to the scheduler: dial, register, the work stream, heartbeats.

Connection lifecycle::

    ┌──────────┐ register ok  ┌───────────┐ stream breaks / scheduler gone ┌──────────┐
    │ starting │─────────────▶│ connected │───────────────────────────────▶│ backoff  │
    └──────────┘              └───────────┘                                └──────────┘
          ▲                         ▲        running stages keep running;        │
          │                         └──── re-register, re-send undelivered ◀─────┘
          │                               completions, claim held leases

The agent only dials out (edge boxes sit behind NAT): one ``Connect`` stream
carries credits (free slots), completions, logs and heartbeats up (the
:class:`~agent.uplink.Uplink`), and assignments, acks and cancellations down
(:meth:`Session.on_message`, which hands them to the
:class:`~agent.supervisor.Supervisor`). While the agent is connected, artifact
calls go through the same channel (:class:`~agent.transfers.Transfers`).

What the scheduler places work by is kept current: the capabilities probed at
start, with the link measurements, power and the cache inventory brought up to
date (:meth:`Session.capabilities`), sent again in a heartbeat whenever they
changed enough to matter (:func:`agent.probe.capabilities_changed`).

A session ending (the stream broke, the scheduler is gone) is not an error: the
agent backs off with jitter (Nomad's rule: never faster than once a second, plus
a random stagger, doubling up to a cap) and registers again. One refusal is final:
an admin revoked this agent (``UNAUTHENTICATED`` carrying the metadata key
``outrider-revoked``, :func:`is_revocation`, on any call or as the work stream ends);
the session stops and tells the daemon (``on_revoked``), which stops the stages and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import grpc

from agent import certcheck
from agent.cache import BlobCache
from agent.checkpoints import Checkpoints
from agent.clock import ClockTracker
from agent.config import AgentConfig
from agent.figures import FigureSampler
from agent.link import LinkMeter
from agent.supervisor import Supervisor
from agent.transfers import Transfers
from agent.uplink import Uplink
from outrider.errors import OutriderError
from outrider.protocol import REVOKED_METADATA_KEY
from outrider.targets import Targets, leader_hint
from outrider.tls import DEFAULT_CHANNEL_OPTIONS, channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2_grpc, common_pb2

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "REGISTER_TIMEOUT_S", "Session", "is_revocation"]

log = logging.getLogger(__name__)

#: Nomad's rule: reconnect no faster than once a second, plus random stagger.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
#: How long a Register may take before the attempt counts as failed.
REGISTER_TIMEOUT_S = 30
#: After this many heartbeat intervals without any message from the scheduler (each heartbeat
#: is answered), the session is taken for dead and dialled again.
SILENT_BEATS = 4


def is_revocation(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the scheduler refused this agent because an admin revoked it: ``UNAUTHENTICATED``
    carrying the metadata key :data:`~outrider.protocol.REVOKED_METADATA_KEY` (not the wording)."""
    if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
        return False
    return any(key == REVOKED_METADATA_KEY for key, _ in (exc.trailing_metadata() or ()))


class Session:
    """Keeps the agent registered with the scheduler and its work stream flowing.

    Args:
        cfg: the scheduler's address and this agent's certificate.
        supervisor: takes assignments, acks, cancellations and lease renewals.
        transfers: lent the artifact stub while connected; probes the link.
        uplink: what goes up the work stream.
        clock: fed every round trip to the scheduler; its samples go up.
        link: fed heartbeat round trips; reported in the capabilities.
        cache: its inventory is reported in the capabilities.
        caps: the capabilities probed at start.
        instance_id: this agent's instance (:mod:`agent.instance`), sent in every Register.
        checkpoints: takes checkpoint acks; its unacknowledged reports go again on a fresh stream.
        on_drain: called when the scheduler asks this agent to drain.
        on_revoked: called with the scheduler's refusal when it revoked this agent; the
            session then stops for good (no reconnect: every call would be refused).
        wall: the wall clock (``time.time``), injectable for tests.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        supervisor: Supervisor,
        transfers: Transfers,
        uplink: Uplink,
        clock: ClockTracker,
        link: LinkMeter,
        cache: BlobCache,
        caps: common_pb2.Capabilities,
        instance_id: str = "",
        checkpoints: Checkpoints | None = None,
        on_drain: Callable[[], None] | None = None,
        on_revoked: Callable[[str], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        #: the scheduler addresses (several in high availability, docs/ha.md) and the one dialled
        self.targets = Targets(cfg.scheduler)
        self.supervisor = supervisor
        self.transfers = transfers
        self.uplink = uplink
        self.clock = clock
        self.link = link
        self.cache = cache
        self.base_caps = caps
        self.instance_id = instance_id
        self.checkpoints = checkpoints
        #: this agent's own figures for the scheduler's /metrics, sampled once per heartbeat (agent/figures.py)
        self.figures: FigureSampler | None = None
        self.on_drain = on_drain
        self.on_revoked = on_revoked
        #: The scheduler's refusal once it revoked this agent ("" until then).
        self.revoked = ""
        self._wall = wall
        #: Seconds between heartbeats; the scheduler's Register reply sets it.
        self.heartbeat_interval = 3.0
        #: The capabilities the scheduler last received (in Register or a heartbeat).
        self.caps_sent: common_pb2.Capabilities | None = None
        #: How many of its jobs a batch system holds queued (the Slurm executor's); None: no such system.
        self.queued_jobs: Callable[[], int] | None = None
        self._stop = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._current: asyncio.Future[None] | None = None
        #: Whether the current session proved healthy: its work stream delivered a message.
        self.healthy = False
        self._heard = time.monotonic()  # the last message down the work stream
        self._reconnect = False  # end this session and connect again at once (agent.renewal)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, and reconnect with backoff whenever the session ends, until :meth:`stop`.

        The delay doubles from :data:`BACKOFF_MIN_S` while the scheduler cannot be
        reached, and starts over after a healthy session (one whose work stream
        delivered a message): a blip after an hour of service costs a second, not the
        cap. While stages run, the delay never exceeds a quarter of the lease TTL, so
        a scheduler restart does not keep the agent away past its leases.
        """
        delay = BACKOFF_MIN_S
        while not self._stop.is_set():
            self.healthy = False
            self._check_certificate()  # expired (not renewed in time): stop here, no reconnect loop
            try:
                self._current = asyncio.ensure_future(self._connect())
                await self._current
            except asyncio.CancelledError:
                if not self._stop.is_set() and not self._reconnect:
                    raise
            except grpc.aio.AioRpcError as exc:
                self._refused(exc)
                if self._fail_over(exc):  # a standby named the leader: go there now
                    await self.close()
                    continue
            except ConnectionError as exc:
                log.warning("session with %s ended: %s", self.targets.current, exc)
                self.targets.fail()
            except Exception:
                log.exception("session failed")
            finally:
                await self.close()
            if self._stop.is_set():
                break
            if self._reconnect:  # new credentials: no backoff, the scheduler is there
                self._reconnect, delay = False, BACKOFF_MIN_S
                continue
            if self.healthy:
                delay = BACKOFF_MIN_S
            # Backoff with jitter: base + random stagger, doubling up to a cap.
            wait = delay + random.uniform(0, delay)
            log.info("reconnecting in %.1fs (%d stages still running)", wait, len(self.supervisor.stages))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
            delay = min(self._backoff_cap(), delay * 2)

    def _backoff_cap(self) -> float:
        """The longest base delay: :data:`BACKOFF_MAX_S`, or a quarter of the lease TTL while
        stages run (base + stagger is then at most half a TTL)."""
        if not self.supervisor.stages:
            return BACKOFF_MAX_S
        return max(BACKOFF_MIN_S, min(BACKOFF_MAX_S, self.supervisor.lease_ttl / 4))

    def _check_certificate(self) -> None:
        """Raise CertificateNotValid if this agent's certificate (read from its file, renewed or not)
        expired; the agent then exits (``agent.main``). Not valid yet: logged, and tried again."""
        try:
            certcheck.check(self.cfg.cert, self.cfg.scheduler)
        except certcheck.CertificateNotValid as exc:
            log.error("%s", exc)
            if exc.expired:
                raise
        except OutriderError as exc:  # unreadable now (being replaced?): the dial will say more
            log.warning("%s", exc)

    def _refused(self, exc: grpc.aio.AioRpcError) -> None:
        if is_revocation(exc):
            # Revoked by an admin: final. Reconnecting would be refused on every call.
            self.revoked = exc.details() or "this agent was revoked"
            self._stop.set()
            if self.on_revoked is not None:
                self.on_revoked(self.revoked)
            return
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            # Fault 5: another instance of this agent (another state dir) holds the name.
            log.error(
                "the scheduler refused this agent: another instance is connected under the name %r "
                "(this is instance %s, state dir %s); taking no work, retrying with backoff (%s)",
                self.cfg.name or "in this certificate",
                self.instance_id,
                self.cfg.state_dir,
                exc.details(),
            )
            return
        log.warning("scheduler %s unreachable: %s: %s", self.targets.current, exc.code().name, exc.details())

    def _fail_over(self, exc: grpc.aio.AioRpcError) -> bool:
        """After ``UNAVAILABLE``: the next scheduler address, or the leader a standby named.
        Whether to dial again at once (a leader named that is not the one just refused)."""
        if self._stop.is_set() or exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return False
        before = self.targets.current
        hint = leader_hint(exc.trailing_metadata())
        after = self.targets.fail(hint, silent=exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
        return bool(hint) and after != before

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """End the session now and do not reconnect."""
        self._stop.set()
        self.uplink.wake.set()
        if self._current is not None:
            self._current.cancel()

    @property
    def channel(self) -> grpc.aio.Channel | None:
        """The current session's channel (None between sessions): certificate renewal calls over it."""
        return self._channel

    def reconnect(self) -> None:
        """End the current session and connect again at once, reading the certificate files anew."""
        self._reconnect = True
        if self._current is not None:
            self._current.cancel()

    async def close(self) -> None:
        """Close the channel (artifact calls then wait for the next session)."""
        self.transfers.detach()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # ------------------------------------------------------------------ one session

    def _credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.cfg.ca, self.cfg.cert, self.cfg.key)

    async def _connect(self) -> None:
        self._channel = grpc.aio.secure_channel(
            self.targets.current, self._credentials(), options=DEFAULT_CHANNEL_OPTIONS
        )
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        sup = self.supervisor
        req = self.register_request()
        t0 = req.client_time
        # With several schedulers, one that does not answer soon (paused) is left for the next.
        wait = max(5.0, SILENT_BEATS * self.heartbeat_interval) if self.targets.several else REGISTER_TIMEOUT_S
        resp = await stub.Register(req, timeout=min(wait, REGISTER_TIMEOUT_S))
        self.caps_sent = req.capabilities
        self.targets.ok()
        self.clock.observe_scheduler(t0, resp.server_time, self._wall())
        self.heartbeat_interval = resp.heartbeat_interval_s or self.heartbeat_interval
        sup.lease_ttl = resp.lease_ttl_s or sup.lease_ttl
        sup.registered(resp.lost)
        log.info(
            "registered with %s as %s (%d slots, %d stages held, %d undelivered results)",
            self.targets.current,
            resp.agent_id,
            sup.slots,
            len(sup.stages),
            len(sup.outbox),
        )
        # A fresh stream: all free slots as credit, every undelivered result, every
        # unacknowledged checkpoint report.
        pending = self.checkpoints.pending() if self.checkpoints is not None else []
        self.uplink.restart(sup.credits(), sup.undelivered(), pending)
        call = stub.Connect()
        self.transfers.attach(artifacts)
        sender = asyncio.ensure_future(self.uplink.pump(call))
        beats = asyncio.ensure_future(self._heartbeats())
        probe = None if self.transfers.probed else asyncio.ensure_future(self.transfers.probe_link())
        try:
            async for msg in call:
                self.on_message(msg)
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

    def register_request(self) -> agent_pb2.RegisterRequest:
        """What Register says: capabilities, clock samples, the leases still held, the instance."""
        return agent_pb2.RegisterRequest(
            capabilities=self.capabilities(),
            clock=self.clock.samples(),
            client_time=self._wall(),
            leases=self.supervisor.leases(),
            instance_id=self.instance_id,
        )

    def on_message(self, msg: agent_pb2.SchedulerMessage) -> None:
        """Act on one message down the work stream."""
        self.healthy = True
        self._heard = time.monotonic()
        sup = self.supervisor
        for a in msg.assignments:
            sup.start(a)
        for ack in msg.acks:
            sup.ack(ack)
        if self.checkpoints is not None:
            for cack in msg.checkpoint_acks:
                self.checkpoints.acked(cack)
        if msg.cancel:
            sup.cancelled(msg.cancel)
        if msg.drain and self.on_drain is not None:
            self.on_drain()
        if msg.HasField("heartbeat"):
            hb = msg.heartbeat
            if hb.client_time:
                now_wall = self._wall()
                self.clock.observe_scheduler(hb.client_time, hb.server_time, now_wall)
                self.link.observe_rtt(now_wall - hb.client_time)
            sup.lease_ttl = hb.lease_ttl_s or sup.lease_ttl
            sup.renewed(hb.client_time, hb.lost)

    # ------------------------------------------------------------------ heartbeats

    async def _heartbeats(self) -> None:
        self._heard = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_interval * random.uniform(0.9, 1.0))
            silent = time.monotonic() - self._heard
            if silent > SILENT_BEATS * self.heartbeat_interval:
                # Every heartbeat is answered: a scheduler that stays silent is paused, hung or
                # cut off, while the connection looks alive (docs/ha.md). Dial again (the next
                # address, if there are several), before the leases lapse.
                log.warning("no word from scheduler %s for %.1fs; connecting again", self.targets.current, silent)
                self.targets.fail(silent=True)
                self.reconnect()
                return
            self.uplink.heartbeat(self.make_heartbeat(self.uplink.unsent_heartbeat))

    def beat_now(self) -> None:
        """Send a heartbeat now (draining or health changed: the scheduler must know at once)."""
        self.uplink.heartbeat(self.make_heartbeat(self.uplink.unsent_heartbeat))

    def make_heartbeat(self, unsent: agent_pb2.HeartbeatRequest | None = None) -> agent_pb2.HeartbeatRequest:
        """The next heartbeat; it carries the whole capabilities only when they changed
        since the last ones sent (or when ``unsent``, the one it replaces, carried them)."""
        from agent.probe import capabilities_changed

        hb = agent_pb2.HeartbeatRequest(
            # A stage stopping for its timeout still holds its lease: its result is coming.
            leases=self.supervisor.held_leases(),
            clock=self.clock.samples(),
            client_time=self._wall(),
            free_slots=self.supervisor.free_slots(),
            unhealthy=self.supervisor.unhealthy,
            draining=self.supervisor.draining,
        )
        caps = self.capabilities()
        if capabilities_changed(self.caps_sent, caps) or (unsent is not None and unsent.HasField("capabilities")):
            log.debug(
                "capabilities changed (%d cached, %.1f MB/s, rtt %.2f ms); sending them",
                len(caps.cached),
                caps.bandwidth_bps / 1e6,
                caps.rtt_s * 1e3,
            )
            hb.capabilities.CopyFrom(caps)
            self.caps_sent = caps
        if self.figures is not None:
            hb.figures.CopyFrom(self.figures.sample(self.heartbeat_interval))
        return hb

    def capabilities(self) -> common_pb2.Capabilities:
        """The capabilities probed at start, with what changes at run time brought up to date:
        link measurements, power, and the cache inventory."""
        from agent.probe import probe_power

        caps = common_pb2.Capabilities()
        caps.CopyFrom(self.base_caps)
        caps.bandwidth_bps = self.link.bandwidth_bps
        caps.rtt_s = self.link.rtt_s
        caps.power.CopyFrom(probe_power())
        caps.cached.extend(self.cache.refs())
        if self.queued_jobs is not None:
            caps.queued_jobs = self.queued_jobs()
        return caps
