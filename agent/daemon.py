"""The agent daemon: wires its components together and owns signals and lifecycle.

Where things are decided::

    agent.session      dial, Register, the Connect work stream, heartbeats, reconnect with backoff
    agent.uplink       what goes up the stream next (credits, completions, logs, checkpoints, a heartbeat)
    agent.supervisor   the running stages, their leases, the lease watchdog tick(now), drain
    agent.outbox       results on disk until acknowledged (agent.journal: leases and outbox in diskcache)
    agent.runner       one stage: work dir, inputs, process group, outputs (agent.workdirs, agent.logtail)
    agent.keeper       the process that starts stages and outlives the agent (agent.keeper_client)
    agent.checkpoints  stage checkpoints: snapshot, keep, upload, report, restore
    agent.recovery     taking over from a previous agent process
    agent.health       the self-check of an unhealthy agent
    agent.transfers    artifacts in and out through the cache; the link's measurements
    agent.cache        the content-addressed blob cache and its index
    agent.probe        what this machine offers (agent.gpu, agent.clock)
    agent.memory       keeping an idle agent small

The agent's own lifecycle::

    ┌──────────┐ Register ok ┌─────────┐ 1st SIGTERM, drain message,  ┌──────────┐ stages released,
    │ starting │────────────▶│ serving │─────────────────────────────▶│ draining │ results acknowledged
    └──────────┘ (takes over └─────────┘ preemption notice file        └──────────┘──┐ (SIGTERM only)
      state dir lock;          │     ▲   (no work; stages checkpoint       │          ▼
      leases, outbox, stages)  │     │    and are released)               │     ┌─────────┐
                               ▼     │ self-check passes        2nd SIGTERM│────▶│ stopped │
                          ┌───────────┐                          or SIGINT      └─────────┘
                          │ unhealthy │ (its own failure: no work)   (stages killed, not reported:
                          └───────────┘                               their leases are kept on disk)

Signals::

    SIGTERM: drain (no new work; running stages checkpoint and are released), then exit;
             a second SIGTERM kills them.
    SIGINT: stop now, killing running stages (their leases stay on disk: a restart within
            their TTL resumes them from their checkpoints; else they run elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from agent import slurm, stageuser
from agent.cache import BlobCache
from agent.checkpoints import Checkpoints, CheckpointStore
from agent.config import AgentConfig
from agent.figures import FigureSampler
from agent.health import CHECK_INTERVAL_S, SelfCheck
from agent.instance import load_or_create
from agent.journal import Journal
from agent.keeper_client import KeeperClient
from agent.link import LinkMeter
from agent.memory import shed, tune_malloc
from agent.recovery import plan, probe_keeper
from agent.renewal import Renewer
from agent.runner import Runner, reap_orphans
from agent.session import Session
from agent.slurm import SlurmExecutor
from agent.stage import Stage, StopReason
from agent.supervisor import Supervisor
from agent.transfers import Transfers
from agent.uplink import Uplink
from outrider.errors import ConfigError
from outrider.statedir import StateDirLock

__all__ = ["EXIT_REVOKED", "NTP_INTERVAL_S", "PREEMPTION_POLL_S", "Agent"]

log = logging.getLogger(__name__)

#: How often the configured NTP servers are queried.
NTP_INTERVAL_S = 300.0
#: How often the preemption notice file is looked for.
PREEMPTION_POLL_S = 1.0
#: ``outrider-agent`` exits with this once an admin revoked it (sysexits' EX_NOPERM): the systemd
#: unit lists it in ``RestartPreventExitStatus=``, as restarting cannot help (its name is refused).
EXIT_REVOKED = 77


class Agent:
    """One agent process: probes the machine, takes over from its predecessor, then runs
    the session until stopped."""

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
        self.slurm: SlurmExecutor | None = None
        if cfg.executor == "slurm":  # the partition's capacity, not the login node's (agent.slurm)
            try:
                cap = slurm.probe_partition(cfg.slurm_partition)
            except OSError as exc:
                raise ConfigError(f"executor = slurm: {exc}") from None
            slurm.advertise(caps, cap, cfg.slots)
            slots = caps.slots
            settings = slurm.SlurmSettings(
                cfg.slurm_partition, cfg.slurm_account, cfg.slurm_work_dir, tuple(cfg.slurm_extra_args)
            )
            self.slurm = SlurmExecutor(settings)
            log.info("stages run as Slurm jobs in partition %s: %s", cfg.slurm_partition, cap)
        shed("pynvml")  # only the start-up probe needs NVML's bindings; an idle agent stays small
        tune_malloc()
        self.clock = ClockTracker(cfg.ntp_servers)
        self.link = LinkMeter()
        self.cache_dir = self.state_dir / "cache"
        self.work_root = Path(cfg.slurm_work_dir) if self.slurm is not None else self.state_dir / "work"
        self.scratch = self.state_dir / "scratch"
        for d in (self.cache_dir, self.work_root, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self.stage_user = stageuser.resolve(cfg.stage_user, cfg.stage_group)
        if self.stage_user is not None:  # stages must not read what the agent keeps here
            stageuser.lock_down(self.state_dir)
            su = self.stage_user
            log.info("stages run as %s (uid %d, gid %d)", su.name, su.uid, su.gid)
        self.cache = BlobCache(self.cache_dir, cfg.cache_max_bytes)
        self.cache.scan()
        self.cache.evict()
        log.info("artifact cache: %d blobs, %d bytes", len(self.cache), self.cache.total)

        # What the previous process left: leases, results, and the stages its keeper still holds.
        self.journal = Journal(self.state_dir / "journal")
        records, outbox, renewed = self.journal.load()
        env = dict(os.environ)
        held = probe_keeper(self.state_dir, env, cfg.kill_grace) if records or self._keeper_exists() else []
        if self.slurm is not None:  # its jobs, by the ids in the lease records
            held = slurm.held_stages(records, renewed, time.time(), time.monotonic())
        self._records = records
        self.recovered = plan(records, renewed, held, time.time(), time.monotonic())
        if self.slurm is None:  # (a Slurm job's processes are Slurm's: on a compute node, or scancel'd)
            reap_orphans(self.work_root, keep=self.recovered.keep)

        self.uplink = Uplink()
        self.transfers = Transfers(
            self.cache,
            self.link,
            self.scratch,
            ride_out=lambda: self.supervisor.lease_ttl,
            probe_bytes=cfg.bandwidth_probe_bytes,
            max_extract_bytes=cfg.max_extract_bytes,
        )
        ids = (self.stage_user.uid, self.stage_user.gid) if self.stage_user is not None else None
        self.keeper = KeeperClient(self.state_dir, env, grace=cfg.kill_grace, user=ids)
        self.checkpoints = Checkpoints(
            CheckpointStore(self.state_dir / "checkpoints"),
            self.transfers,
            self.uplink,
            max_extract_bytes=cfg.max_extract_bytes or None,
        )
        self.runner = Runner(
            self.work_root,
            self.slurm or self.keeper,
            self.transfers.fetch,
            self.transfers.publish,
            self.uplink.log,
            kill_grace=cfg.kill_grace,
            lease_ttl=lambda: self.supervisor.lease_ttl,
            hooks=self.checkpoints,
            on_fault=lambda reason: self.supervisor.set_unhealthy(reason),
            keep=self.recovered.keep,
            stage_user=self.stage_user,
        )
        self.supervisor = Supervisor(self.runner, self.uplink, slots, journal=self.journal, drain_grace=cfg.drain_grace)
        self.supervisor.outbox.restore(outbox)
        self.supervisor.before_report = self.checkpoints.flush
        self.supervisor.on_done = self._stage_done
        self.supervisor.on_renew = lambda stages, at, ttl: self.keeper.renew([s.key_text for s in stages], at, ttl)
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
            checkpoints=self.checkpoints,
            on_drain=lambda: self.drain("the scheduler asked this agent to drain"),
            on_revoked=self._revoked,
        )
        self.supervisor.on_change = self.session.beat_now
        self.session.figures = FigureSampler(
            self.state_dir,
            stage_pids=lambda: [s.pid for s in self.supervisor.stages.values()],
            cache_bytes=lambda: self.cache.total,
            outbox_depth=lambda: len(self.supervisor.outbox),
            transfers=self.transfers.progress,
            gpus=len(caps.gpus),
        )
        if self.slurm is not None:
            slurm_executor = self.slurm
            self.session.queued_jobs = lambda: slurm_executor.queued
        self.renewer = Renewer(cfg, self.session)  # the certificate, renewed at 2/3 of its lifetime
        self.self_check = SelfCheck(self.work_root, self.keeper)
        self._terminating = False
        #: What ``outrider-agent`` exits with: 0, or :data:`EXIT_REVOKED`.
        self.exit_code = 0

    def _keeper_exists(self) -> bool:
        from agent.keeper import SOCKET_NAME

        return (self.state_dir / SOCKET_NAME).exists()

    def _stage_done(self, stage: Stage, outcome: str) -> None:
        self.runner.done(stage)
        self.checkpoints.done(stage, outcome)

    async def _take_over(self) -> None:
        """Act on what the previous process left (agent.recovery)."""
        rec = self.recovered
        if rec.dropped:
            self.journal.write_later(deletes=[Journal.lease_key(k) for k in rec.dropped])
        if self.slurm is not None:
            self.slurm.take_over(rec, self._records)
        elif rec.kill or rec.reattach:
            await self.keeper.connect(start=False)
            for key in rec.kill:
                self.keeper.kill(key, signal.SIGKILL)
                self.keeper.forget(key)
        for stage in rec.reattach:
            self.supervisor.adopt(stage, self.runner.reattach)
        for stage in rec.resume:
            self.supervisor.adopt(stage, self.runner.run)

    async def run(self) -> None:
        """Run until stopped: signals, the lease watchdog, NTP, the self-check, the session."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.stop_now)
        await self._take_over()
        tasks = [
            asyncio.ensure_future(self.supervisor.watch(lambda: min(1.0, self.session.heartbeat_interval / 2))),
            asyncio.ensure_future(self._health_loop()),
            asyncio.ensure_future(self.renewer.run()),
        ]
        if self.cfg.ntp_servers:
            tasks.append(asyncio.ensure_future(self._ntp_loop()))
        if self.cfg.preemption_file:
            tasks.append(asyncio.ensure_future(self._preemption_loop(Path(self.cfg.preemption_file))))
        if self.slurm is not None:
            tasks.append(asyncio.ensure_future(self._partition_loop()))
        try:
            await self.session.run()
        finally:
            for t in tasks:
                t.cancel()
            await self.supervisor.kill_all(StopReason.AGENT_STOPPED)
            await self.session.close()
            await self.keeper.close()
            if self.slurm is not None:
                await self.slurm.close()
            self.journal.flush_later()
            await asyncio.to_thread(self.journal.flush)

    def stop_now(self) -> None:
        """Stop: the session ends, and running stages are killed without reporting."""
        log.info("stopping now")
        self.supervisor.mark_all(StopReason.AGENT_STOPPED)
        self.session.stop()

    def drain(self, reason: str) -> None:
        """Take no more work; running stages checkpoint and are released (the agent stays)."""
        self.supervisor.drain(reason)

    def _revoked(self, refusal: str) -> None:
        """An admin revoked this agent: no more work, every stage stopped (SIGTERM, then SIGKILL
        after the kill grace; the scheduler requeued their tasks), and the agent exits for good."""
        log.error(
            "THIS AGENT WAS REVOKED by the scheduler: %s. Stopping its %d stage(s) and exiting with code %d "
            "(not restarted by systemd). To serve again, enrol this machine under a new name with a join "
            "token (outrider-agent join), or ask an admin why it was revoked.",
            refusal,
            len(self.supervisor.stages),
            EXIT_REVOKED,
        )
        self.exit_code = EXIT_REVOKED
        self.supervisor.revoked()

    def on_sigterm(self) -> None:
        """SIGTERM: drain, then stop; the second one (or nothing to drain) stops now."""
        sup = self.supervisor
        if self._terminating or (not sup.stages and not len(sup.outbox)):
            self.stop_now()
            return
        self._terminating = True
        sup.on_drained = self.stop_now
        if not sup.drain("SIGTERM; SIGTERM again to kill the stages") and not sup.stages:
            self.stop_now()  # an earlier drain had finished already

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            if not self.supervisor.unhealthy:
                continue
            problem = await self.self_check.run()
            if problem is None:
                self.supervisor.set_healthy()
            else:
                self.supervisor.set_unhealthy(problem)

    async def _partition_loop(self) -> None:
        """The Slurm partition's capacity, read again every :data:`agent.slurm.CAPACITY_REFRESH_S`:
        nodes drained, down or added change what this agent advertises (sent as a capability change)."""
        while True:
            await asyncio.sleep(slurm.CAPACITY_REFRESH_S)
            try:
                cap = await slurm.partition_capacity(self.cfg.slurm_partition)
            except OSError as exc:  # slurmctld away, or every node down: keep the last figures
                log.warning("cannot read partition %s: %s", self.cfg.slurm_partition, exc)
                continue
            if slurm.refresh_capacity(self.session.base_caps, cap, self.cfg.slots):
                log.info("partition %s now: %s", self.cfg.slurm_partition, cap)
                self.session.beat_now()

    async def _preemption_loop(self, notice: Path) -> None:
        while not notice.exists():
            await asyncio.sleep(PREEMPTION_POLL_S)
        self.drain(f"preemption notice {notice}")

    async def _ntp_loop(self) -> None:
        while True:
            await asyncio.to_thread(self.clock.update_ntp)
            await asyncio.sleep(NTP_INTERVAL_S)
