"""What the agent measures of itself for the scheduler's ``/metrics``, sent with each heartbeat.

An edge box opens no inbound port, so nothing scrapes the agent: its figures ride up
in ``HeartbeatRequest.figures`` (``AgentFigures``), and the scheduler exposes the latest
with an ``agent`` label. Sampled at most once per heartbeat interval (a heartbeat sent
sooner, on a change of health or drain, carries the last sample again):

* the running stages' process trees (psutil): CPU seconds so far, CPU use since the last
  sample (percent of one core), resident memory (summed per process: shared pages count
  once per process that maps them). One pass over ``/proc`` per sample, and none at all
  while no stage runs;
* each GPU's utilisation and memory (NVML), only on a machine whose start-up probe found
  GPUs; never raises (a driver that stops answering leaves the list empty, and is asked
  again at most once a minute);
* the free and total bytes of the state dir's file system, the cache's bytes and the
  outbox's depth (from memory);
* the artifact transfers in flight, bytes done of bytes in all (``Transfers.progress``; the
  progress line of ``outrider watch``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from outrider.v1 import agent_pb2, common_pb2

__all__ = ["FigureSampler"]

log = logging.getLogger(__name__)

#: After NVML fails, it is not asked again for this long (seconds).
NVML_RETRY_S = 60.0


class FigureSampler:
    def __init__(
        self,
        state_dir: Path,
        *,
        stage_pids: Callable[[], Iterable[int]],
        cache_bytes: Callable[[], int],
        outbox_depth: Callable[[], int],
        transfers: Callable[[], Iterable[common_pb2.TransferProgress]] = tuple,
        gpus: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state_dir = state_dir
        self._stage_pids = stage_pids
        self._cache_bytes = cache_bytes
        self._outbox_depth = outbox_depth
        self._transfers = transfers
        self._gpus = gpus  # how many the start-up probe found; 0: NVML is never loaded
        self._clock = clock
        self._last: agent_pb2.AgentFigures | None = None
        self._last_at = float("-inf")
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds at the last sample
        self._procs: dict[int, psutil.Process] = {}
        self._nvml: Any = None  # the pynvml module once initialised
        self._nvml_failed_at = float("-inf")

    def sample(self, interval: float) -> agent_pb2.AgentFigures:
        """The figures now, or the last ones if sampled less than 0.8 ``interval`` ago."""
        now = self._clock()
        if self._last is not None and now - self._last_at < 0.8 * interval:
            return self._last
        f = agent_pb2.AgentFigures(cache_bytes=max(0, int(self._cache_bytes())), outbox_depth=self._outbox_depth())
        try:
            du = shutil.disk_usage(self.state_dir)
            f.disk_free_bytes, f.disk_total_bytes = du.free, du.total
        except OSError as exc:
            log.debug("disk usage of %s unreadable: %s", self.state_dir, exc)
        elapsed = now - self._last_at if self._last is not None else 0.0
        self._stages(f, elapsed)
        f.transfers.extend(self._transfers())
        if self._gpus:
            f.gpus.extend(self._gpu_figures(now))
        self._last, self._last_at = f, now
        return f

    # ------------------------------------------------------------------ the stages

    def _stages(self, f: agent_pb2.AgentFigures, elapsed: float) -> None:
        roots = {pid for pid in self._stage_pids() if pid > 0}
        if not roots:
            self._cpu.clear()
            self._procs.clear()
            return
        cpu_now: dict[tuple[int, float], float] = {}
        rss = 0
        delta = 0.0
        for p in self._trees(roots):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    rss += p.memory_info().rss
            except (psutil.Error, OSError):
                continue  # it ended meanwhile
            used = t.user + t.system
            cpu_now[key] = used
            delta += max(0.0, used - self._cpu.get(key, 0.0))
        self._cpu = cpu_now
        f.stage_cpu_seconds = sum(cpu_now.values())
        f.stage_rss_bytes = rss
        if elapsed > 0:
            f.stage_cpu_percent = 100.0 * delta / elapsed

    def _trees(self, roots: set[int]) -> list[psutil.Process]:
        """The stage processes and all their descendants (one pass over the process table)."""
        children: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):
            ppid = p.info.get("ppid")
            if ppid:
                children.setdefault(ppid, []).append(p.pid)
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            stack.extend(children.get(pid, ()))
        procs: dict[int, psutil.Process] = {}
        for pid in seen:
            known = self._procs.get(pid)
            if known is None:
                try:
                    known = psutil.Process(pid)
                except (psutil.Error, OSError):
                    continue
            procs[pid] = known
        self._procs = procs
        return list(procs.values())

    # ------------------------------------------------------------------ the GPUs

    def _gpu_figures(self, now: float) -> list[agent_pb2.GpuFigures]:
        if self._nvml is None:
            if now - self._nvml_failed_at < NVML_RETRY_S:
                return []
            try:
                import pynvml

                pynvml.nvmlInit()  # kept initialised: one sample per heartbeat
                self._nvml = pynvml
            except Exception as exc:
                self._nvml_failed_at = now
                log.debug("NVML unavailable for GPU figures: %s", exc)
                return []
        nv = self._nvml
        out = []
        try:
            for i in range(min(nv.nvmlDeviceGetCount(), self._gpus)):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                util = nv.nvmlDeviceGetUtilizationRates(h)
                out.append(
                    agent_pb2.GpuFigures(
                        index=i,
                        utilization_percent=float(min(100, max(0, util.gpu))),
                        memory_used_bytes=int(mem.used),
                        memory_total_bytes=int(mem.total),
                    )
                )
        except Exception as exc:  # a driver gone away: no GPU figures until it answers again
            log.debug("NVML sample failed: %s", exc)
            self._nvml_failed_at = now
            self._close_nvml()
            return []
        return out

    def _close_nvml(self) -> None:
        nv, self._nvml = self._nvml, None
        if nv is not None:
            try:
                nv.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
