"""The agent daemon: wires its components together and owns signals and lifecycle.

Where things are decided::

    agent.session     dial, Register, the Connect work stream, heartbeats, reconnect with backoff
    agent.uplink      what goes up the stream next (credits, completions, logs, a heartbeat)
    agent.supervisor  the running stages, the outbox of results, the lease watchdog tick(now)
    agent.runner      one stage: work dir, inputs, process group, outputs
    agent.transfers   artifacts in and out through the cache; the link's measurements
    agent.cache       the content-addressed blob cache and its index
    agent.probe       what this machine offers (agent.gpu, agent.clock)
    agent.memory      keeping an idle agent small

Signals::

    SIGTERM: stop asking for work, let running stages finish (drain); a second SIGTERM kills them.
    SIGINT: stop now, killing running stages (their leases expire and they run elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from agent.cache import BlobCache
from agent.config import AgentConfig
from agent.instance import load_or_create
from agent.link import LinkMeter
from agent.memory import shed, tune_malloc
from agent.runner import Runner, reap_orphans
from agent.session import Session
from agent.stage import StopReason
from agent.supervisor import Supervisor
from agent.transfers import Transfers
from agent.uplink import Uplink
from outrider.statedir import StateDirLock

__all__ = ["NTP_INTERVAL_S", "Agent"]

log = logging.getLogger(__name__)

#: How often the configured NTP servers are queried.
NTP_INTERVAL_S = 300.0


class Agent:
    """One agent process: probes the machine, then runs the session until stopped."""

    def __init__(self, cfg: AgentConfig) -> None:
        from agent.clock import ClockTracker
        from agent.probe import probe_capabilities

        self.cfg = cfg
        # The loader made it absolute; an AgentConfig built in code may not be (fault 6).
        self.state_dir = Path(cfg.state_dir).absolute()
        # One live agent per state dir (fault 4): taken before anything in it is touched,
        # held for the life of the process (the kernel drops it however the process ends).
        self.lock = StateDirLock(self.state_dir).acquire("agent")
        slots = cfg.slots or (os.cpu_count() or 1)
        caps = probe_capabilities(cfg.labels, slots, str(self.state_dir), cfg.zones)
        shed("pynvml")  # only the start-up probe needs NVML's bindings; an idle agent stays small
        tune_malloc()
        self.clock = ClockTracker(cfg.ntp_servers)
        self.link = LinkMeter()
        self.cache_dir = self.state_dir / "cache"
        self.work_root = self.state_dir / "work"
        self.scratch = self.state_dir / "scratch"
        for d in (self.cache_dir, self.work_root, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self.cache = BlobCache(self.cache_dir, cfg.cache_max_bytes)
        self.cache.scan()
        self.cache.evict()
        log.info("artifact cache: %d blobs, %d bytes", len(self.cache), self.cache.total)
        reap_orphans(self.work_root)
        self.uplink = Uplink()
        self.transfers = Transfers(
            self.cache,
            self.link,
            self.scratch,
            ride_out=lambda: self.supervisor.lease_ttl,
            probe_bytes=cfg.bandwidth_probe_bytes,
        )
        self.runner = Runner(
            self.work_root, self.transfers.fetch, self.transfers.publish, self.uplink.log, kill_grace=cfg.kill_grace
        )
        self.supervisor = Supervisor(self.runner, self.uplink, slots, on_drained=self.stop_now)
        self.session = Session(
            cfg,
            supervisor=self.supervisor,
            transfers=self.transfers,
            uplink=self.uplink,
            clock=self.clock,
            link=self.link,
            cache=self.cache,
            caps=caps,
            instance_id=load_or_create(self.state_dir),
        )

    async def run(self) -> None:
        """Run until stopped: signals, the lease watchdog, NTP, and the session."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.stop_now)
        watchdog = asyncio.ensure_future(self.supervisor.watch(lambda: min(1.0, self.session.heartbeat_interval / 2)))
        ntp = asyncio.ensure_future(self._ntp_loop()) if self.cfg.ntp_servers else None
        try:
            await self.session.run()
        finally:
            watchdog.cancel()
            if ntp is not None:
                ntp.cancel()
            await self.supervisor.kill_all(StopReason.AGENT_STOPPED)
            await self.session.close()

    def stop_now(self) -> None:
        """Stop: the session ends, and running stages are killed without reporting."""
        log.info("stopping now")
        self.supervisor.mark_all(StopReason.AGENT_STOPPED)
        self.session.stop()

    def on_sigterm(self) -> None:
        """SIGTERM: drain (no new work; running stages finish), or stop now when already
        draining or nothing runs."""
        if not self.supervisor.drain():  # already draining, or nothing to drain
            self.stop_now()
            return
        log.info(
            "draining: no new work; %d running stages finish first (SIGTERM again to kill them)",
            len(self.supervisor.stages),
        )

    async def _ntp_loop(self) -> None:
        while True:
            await asyncio.to_thread(self.clock.update_ntp)
            await asyncio.sleep(NTP_INTERVAL_S)
