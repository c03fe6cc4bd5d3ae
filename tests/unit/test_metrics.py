"""Metrics, agent figures and alerts without processes: the hooks, the scrape-time collector,
the checks on an agent's figures, the alerts' events, the agent's sampler, the settings.

The engine runs on SQLite with fake clocks (the harness of tests/unit/test_engine.py).
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.figures import FigureSampler
from outrider.errors import ConfigError, InvalidArgument, StaleEpoch
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2, common_pb2
from scheduler.api.figures import figures_from_proto
from scheduler.core import alerts as A
from scheduler.core.alerts import AlertRules, Alerts
from scheduler.core.figures import AgentFigures, GpuFigures
from scheduler.core.instruments import I, Noop
from scheduler.metrics import Metrics
from scheduler.metrics_collect import HaStatus, StateCollector
from tests.helpers.backends import SqliteBackend
from tests.unit.test_engine import TTL, Harness, assigned, done

GiB = 2**30
A_GPU = GpuFigures(0, 0.75, 1 << 30, 80 << 30)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    harness = Harness(SqliteBackend(tmp_path / "s.db"), loop)
    harness.start()
    try:
        yield harness
    finally:
        harness.store.close()
        loop.close()


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    m.install()
    try:
        yield m
    finally:
        Metrics.uninstall()


def scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by (name, sorted labels)."""
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wide(n: int) -> Pipeline:
    p = Pipeline("wide")
    for i in range(n):
        p.task(f"t{i}", run="true")
    return p


def test_hooks_are_noops_until_installed_and_after() -> None:
    Metrics.uninstall()
    assert isinstance(I.lease_grants, Noop)
    I.lease_grants.inc()
    I.queue_wait.observe(1.0)
    I.artifact_bytes.labels("in").inc(5)
    m = Metrics()
    m.install()
    try:
        assert I.lease_grants is m.lease_grants
    finally:
        Metrics.uninstall()
    assert isinstance(I.lease_grants, Noop)


def test_collector_reads_tasks_agents_and_figures_and_hooks_count(h: Harness, metrics: Metrics) -> None:
    alerts = Alerts(h.engine.core)
    metrics.add_state(StateCollector(h.engine.core, alerts))
    metrics.watch_store(h.store)
    ch = h.connect("a1", credits=2)
    h.register("idle", slots=1)  # registered, no stream: connected 0, no figures

    async def go() -> str:
        run_id = await h.submit(wide(3))
        await h.settle()
        return run_id

    h.run(go())
    run_id = next(iter(h.engine.runs))
    got = assigned(ch)
    assert len(got) == 2
    h.engine.agents["a1"].figures = AgentFigures(
        stage_cpu_seconds=12.5,
        stage_cpu_cores=1.5,
        stage_rss_bytes=300 << 20,
        gpus=(A_GPU,),
        disk_free_bytes=50 * GiB,
        disk_total_bytes=100 * GiB,
        cache_bytes=1234,
        outbox_depth=2,
    )
    s = scrape(metrics)
    assert s[("outrider_tasks", (("state", "running"),))] == 2
    assert s[("outrider_tasks", (("state", "ready"),))] == 1
    assert s[("outrider_tasks", (("state", "succeeded"),))] == 0
    assert s[("outrider_runs", (("state", "running"),))] == 1
    assert s[("outrider_ready_tasks", ())] == 1
    assert s[("outrider_lease_grants_total", ())] == 2
    assert s[("outrider_queue_wait_seconds_count", ())] == 2
    assert s[("outrider_dispatch_latency_seconds_count", ())] >= 1
    assert s[("outrider_store_commit_seconds_count", ())] >= 1
    assert s[("outrider_store_commit_batch_size_count", ())] >= 1
    a1 = (("agent", "a1"),)
    assert s[("outrider_agent_connected", a1)] == 1
    assert s[("outrider_agent_connected", (("agent", "idle"),))] == 0
    assert s[("outrider_agent_slots_used", a1)] == 2
    assert s[("outrider_agent_slots_free", a1)] == 0
    assert s[("outrider_agent_stage_cpu_cores", a1)] == 1.5
    assert s[("outrider_agent_stage_resident_memory_bytes", a1)] == 300 << 20
    assert s[("outrider_agent_disk_free_bytes", a1)] == 50 * GiB
    assert s[("outrider_agent_cache_bytes", a1)] == 1234
    assert s[("outrider_agent_outbox_depth", a1)] == 2
    assert s[("outrider_agent_gpu_utilization_ratio", (("agent", "a1"), ("gpu", "0")))] == 0.75
    assert ("outrider_agent_outbox_depth", (("agent", "idle"),)) not in s  # it sent no figures
    assert 0 <= s[("outrider_agent_last_heartbeat_age_seconds", a1)] < 5

    # A stale report is counted; then an expiry.
    t0 = got["t0"].lease
    h.run(_complete(h, "a1", done(run_id, "t0", t0.epoch)))
    with pytest.raises(StaleEpoch):
        h.engine.complete("a1", done(run_id, "t0", t0.epoch + 5))
    h.mono.t += 3 * TTL
    h.engine.tick()
    h.run(h.settle())
    s = scrape(metrics)
    assert s[("outrider_stale_rejections_total", ())] == 1
    assert s[("outrider_lease_expiries_total", ())] == 1  # t1: never renewed
    assert s[("outrider_tasks", (("state", "succeeded"),))] == 1


async def _complete(h: Harness, agent: str, c: agent_pb2.Completion) -> None:
    await h.engine.complete(agent, c)
    await h.settle()


def test_ended_runs_are_counted_from_a_cache(h: Harness, metrics: Metrics) -> None:
    collector = StateCollector(h.engine.core, None)
    metrics.add_state(collector)
    ch = h.connect("a1", credits=4)
    h.run(_submit_settle(h, wide(2)))
    run_id = next(iter(h.engine.runs))
    for a in assigned(ch).values():
        h.run(_complete(h, "a1", done(run_id, a.lease.task, a.lease.epoch)))
    assert scrape(metrics)[("outrider_tasks", (("state", "succeeded"),))] == 2
    assert run_id in collector._ended
    assert scrape(metrics)[("outrider_runs", (("state", "succeeded"),))] == 1


async def _submit_settle(h: Harness, p: Pipeline) -> None:
    await h.submit(p)
    await h.settle()


def test_leadership_gauges() -> None:
    m = Metrics()
    ha = HaStatus()
    m.add_state(StateCollector(None, None, ha))
    assert scrape(m)[("outrider_leader", ())] == 0
    assert scrape(m)[("outrider_standby_without_leader", ())] == 0
    ha.leader_known = False
    assert scrape(m)[("outrider_standby_without_leader", ())] == 1
    ha.leader = True
    assert scrape(m)[("outrider_leader", ())] == 1
    assert scrape(m)[("outrider_standby_without_leader", ())] == 0


# --------------------------------------------------------------------------- figures on the wire


def good_figures() -> agent_pb2.AgentFigures:
    return agent_pb2.AgentFigures(
        stage_cpu_seconds=3.0,
        stage_cpu_percent=250.0,
        stage_rss_bytes=1 << 20,
        gpus=[
            agent_pb2.GpuFigures(index=i, utilization_percent=50, memory_used_bytes=1, memory_total_bytes=2)
            for i in range(2)
        ],
        disk_free_bytes=10,
        disk_total_bytes=100,
        cache_bytes=7,
        outbox_depth=1,
    )


def test_figures_from_proto_converts() -> None:
    f = figures_from_proto(good_figures())
    assert f.stage_cpu_cores == 2.5
    assert [g.index for g in f.gpus] == [0, 1]
    assert f.gpus[0].utilization == 0.5
    assert (f.disk_free_bytes, f.disk_total_bytes, f.cache_bytes, f.outbox_depth) == (10, 100, 7, 1)
    g = good_figures()
    g.transfers.add(digest="d" * 64, direction="out", done_bytes=5, total_bytes=9)
    g.transfers.add(digest="e" * 64, direction="in", done_bytes=5)  # its size not known yet
    assert [(t.direction, t.done_bytes, t.total_bytes) for t in figures_from_proto(g).transfers] == [
        ("out", 5, 9), ("in", 5, 0)]


@pytest.mark.parametrize(
    ("spoil", "names"),
    [
        (lambda f: f.gpus.extend(agent_pb2.GpuFigures(index=i) for i in range(2, 5000)), "figures.gpus has 5000"),
        (lambda f: f.gpus.add(index=1), "figures.gpus[2].index 1 is listed twice"),
        (lambda f: f.gpus.add(index=1 << 20), "figures.gpus[2].index"),
        (lambda f: setattr(f, "stage_cpu_seconds", math.nan), "figures.stage_cpu_seconds"),
        (lambda f: setattr(f, "stage_cpu_percent", -1.0), "figures.stage_cpu_percent"),
        (lambda f: setattr(f.gpus[0], "utilization_percent", 101.0), "figures.gpus[0].utilization_percent"),
        (lambda f: setattr(f, "disk_free_bytes", 101), "figures.disk_free_bytes (101) exceeds"),
        (lambda f: setattr(f, "cache_bytes", 2**60), "figures.cache_bytes"),
        (lambda f: f.transfers.add(digest="nope", direction="in"), "figures.transfers[0].digest"),
        (lambda f: f.transfers.add(digest="d" * 64, direction="sideways"), "figures.transfers[0].direction"),
        (lambda f: f.transfers.add(digest="d" * 64, direction="in", done_bytes=9, total_bytes=8),
         "figures.transfers[0].done_bytes"),
        (lambda f: f.transfers.extend(common_pb2.TransferProgress(digest="d" * 64, direction="in") for _ in range(65)),
         "figures.transfers has 65"),
    ],
)
def test_figures_from_proto_refuses_what_no_real_agent_sends(spoil, names) -> None:  # type: ignore[no-untyped-def]
    f = good_figures()
    spoil(f)
    with pytest.raises(InvalidArgument, match=re.escape(names)):
        figures_from_proto(f)


def test_heartbeat_figures_reach_the_agent_state(h: Harness) -> None:
    from scheduler.api.agent import AgentServicer
    from scheduler.api.wire import heartbeat_from_proto

    h.connect("a1")
    hb = agent_pb2.HeartbeatRequest(figures=good_figures())
    AgentServicer(h.engine.core)._heartbeat("a1", heartbeat_from_proto(hb), None)
    f = h.engine.agents["a1"].figures
    assert f is not None and f.cache_bytes == 7
    AgentServicer(h.engine.core)._heartbeat("a1", heartbeat_from_proto(agent_pb2.HeartbeatRequest()), None)
    assert h.engine.agents["a1"].figures is f  # a heartbeat without figures keeps the last ones


# --------------------------------------------------------------------------- alerts


def alert_events(h: Harness) -> list[tuple[str, str, str]]:
    return [
        (r[0], r[1], r[2]) for r in h.db_one("SELECT state, agent, detail FROM events WHERE run_id='' ORDER BY seq")
    ]


def has(ev: list[tuple[str, str, str]], state: str, agent: str, start: str) -> bool:
    return any(st == state and ag == agent and d.startswith(start) for st, ag, d in ev)


def test_alerts_raise_and_clear_as_events_and_metrics(h: Harness, metrics: Metrics) -> None:
    e = h.engine.core
    alerts = Alerts(e, AlertRules(disk_used_ratio=0.9, disk_min_free=GiB))
    metrics.add_state(StateCollector(e, alerts))
    h.connect("a1", credits=0)  # connected, no credit: a ready task waits
    h.connect("skewed", credits=0, uncertainty=5.0)  # past max_clock_offset (1s)
    h.run(_submit_settle(h, wide(1)))
    e.agents["a1"].figures = AgentFigures(disk_free_bytes=GiB // 2, disk_total_bytes=100 * GiB)
    live = e.watchers.feed.subscribe()  # an `outrider events --follow` reader
    alerts.check()
    h.run(h.settle())
    heard = [live.queue.get_nowait() for _ in range(live.queue.qsize())]
    assert sorted((ev.run_id, ev.state, ev.agent) for ev in heard) == [("", "alert", "a1"), ("", "alert", "skewed")]
    kinds = {(k, s) for k, s in alerts.active}
    assert kinds == {(A.CLOCK_SUSPECT, "skewed"), (A.DISK_NEARLY_FULL, "a1")}
    ev = alert_events(h)
    assert len(ev) == 2
    assert has(ev, "alert", "a1", "disk_nearly_full a1: state dir disk 100% used")
    assert has(ev, "alert", "skewed", "clock_suspect skewed: ")
    s = scrape(metrics)
    assert s[("outrider_agent_disk_nearly_full", (("agent", "a1"),))] == 1
    assert s[("outrider_agent_clock_suspect", (("agent", "skewed"),))] == 1
    assert s[("outrider_agent_clock_suspect", (("agent", "a1"),))] == 0
    assert s[("outrider_alerts_raised_total", (("alert", "clock_suspect"),))] == 1

    # Past the explanation's deadline (infeasible_timeout) and a lease's life without a word.
    h.mono.t += e.dispatcher.infeasible_timeout + 1
    e.agents["a1"].figures = AgentFigures(disk_free_bytes=50 * GiB, disk_total_bytes=100 * GiB)
    alerts.check()
    h.run(h.settle())
    kinds = {(k, s) for k, s in alerts.active}
    run_id = next(iter(e.runs))
    assert (A.TASK_OVERDUE, run_id) in kinds
    assert (A.AGENT_SILENT, "a1") in kinds and (A.AGENT_SILENT, "skewed") in kinds
    assert (A.DISK_NEARLY_FULL, "a1") not in kinds
    ev = alert_events(h)
    assert has(ev, "alert_cleared", "a1", "disk_nearly_full a1: cleared")
    overdue = f"task_overdue {run_id}: 1 task(s)"
    assert has(ev, "alert", "", overdue)
    s = scrape(metrics)
    assert s[("outrider_tasks_overdue", ())] == 1
    assert s[("outrider_alerts_active", (("alert", "agent_silent"),))] == 2

    # A word from the agent clears its silence; a check sooner than CHECK_S changes nothing.
    h.engine.heartbeat("a1", [], [])
    alerts.check()
    assert (A.AGENT_SILENT, "a1") in alerts.active
    h.mono.t += A.CHECK_S
    h.engine.heartbeat("a1", [], [])
    alerts.check()
    assert (A.AGENT_SILENT, "a1") not in alerts.active


def test_a_drained_agent_that_left_raises_no_silence(h: Harness) -> None:
    e = h.engine.core
    alerts = Alerts(e)
    h.connect("a1")
    h.engine.core.heartbeat("a1", [], [], draining=True)
    h.mono.t += 10 * TTL
    alerts.check()
    assert not alerts.active


# --------------------------------------------------------------------------- the agent's sampler


def test_sampler_measures_a_stage_tree_once_per_interval(tmp_path: Path) -> None:
    burn = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'x = bytearray(40 << 20)\\nimport time\\ntime.sleep(60)'])\n"
        "t = time.time()\n"
        "while time.time() - t < 60: pass\n"
    )
    stage = subprocess.Popen([sys.executable, "-c", burn])
    try:
        clock = [0.0]
        sampler = FigureSampler(
            tmp_path,
            stage_pids=lambda: [stage.pid, 0],
            cache_bytes=lambda: 99,
            outbox_depth=lambda: 3,
            clock=lambda: clock[0],
        )
        first = sampler.sample(3.0)
        assert first.cache_bytes == 99 and first.outbox_depth == 3
        assert 0 < first.disk_free_bytes <= first.disk_total_bytes
        assert not first.gpus  # no GPUs probed: NVML never loaded
        assert sampler.sample(3.0) is first  # within the interval: the same sample
        deadline = time.monotonic() + 30
        while True:
            clock[0] += 3.0
            f = sampler.sample(3.0)
            if f.stage_rss_bytes > 40 << 20 and f.stage_cpu_seconds > 0.2 and f.stage_cpu_percent > 0:
                break  # the child's 40 MiB and the parent's CPU, both counted
            assert time.monotonic() < deadline, f"stage figures never showed the tree: {f}"
            assert stage.poll() is None, "the stage ended early"
            _spin(0.2)
    finally:
        for p in psutil.Process(stage.pid).children(recursive=True):
            p.kill()
        stage.kill()
        stage.wait()
    assert (
        FigureSampler(tmp_path, stage_pids=list, cache_bytes=lambda: 0, outbox_depth=lambda: 0)
        .sample(3.0)
        .stage_rss_bytes
        == 0
    )


def _spin(seconds: float) -> None:
    """Let the measured process run a little (this is the measurement interval, not a wait for a condition)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)


# --------------------------------------------------------------------------- settings


def test_settings_metrics_switch_and_disk_thresholds(tmp_path: Path) -> None:
    from scheduler.main import load_config

    cfg = load_config(["--state-dir", str(tmp_path)])
    assert (cfg.metrics, cfg.alert_disk_used, cfg.alert_disk_free) == (True, 0.9, GiB)
    cfg = load_config(["--metrics", "off", "--alert-disk-used", "0.8", "--alert-disk-free", "5GiB"])
    assert (cfg.metrics, cfg.alert_disk_used, cfg.alert_disk_free) == (False, 0.8, 5 * GiB)
    toml = tmp_path / "s.toml"
    toml.write_text('metrics = false\nalert_disk_used = 0.95\nalert_disk_free = "2GiB"\n')
    cfg = load_config(["--config", str(toml)])
    assert (cfg.metrics, cfg.alert_disk_used, cfg.alert_disk_free) == (False, 0.95, 2 * GiB)
    assert load_config(["--config", str(toml), "--metrics", "on"]).metrics is True
    for text, why in (
        ('metrics = "yes"\n', "metrics must be true or false"),
        ("alert_disk_used = 1.5\n", "alert_disk_used must be a fraction"),
        ("alert_disk_used = 0\n", "alert_disk_used must be a fraction"),
        ('alert_disk_free = "lots"\n', "alert_disk_free"),
    ):
        toml.write_text(text)
        with pytest.raises(ConfigError, match=why):
            load_config(["--config", str(toml)])


def test_the_metrics_route_serves_the_exposition_or_says_metrics_are_off(metrics: Metrics) -> None:
    from outrider.errors import NotFound
    from scheduler.metrics import metrics_off, serve_metrics

    async def go() -> None:
        resp = await serve_metrics(metrics, None)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"# TYPE outrider_lease_grants_total counter" in resp.body
        with pytest.raises(NotFound, match="metrics are off"):
            await metrics_off(None)

    asyncio.run(go())


class FakeNvml:
    """pynvml as the sampler uses it: two GPUs, or a driver that stops answering."""

    def __init__(self) -> None:
        self.broken = False
        self.inits = 0

    def nvmlInit(self) -> None:
        if self.broken:
            raise RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:
        return type("Mem", (), {"used": (h + 1) << 30, "total": 80 << 30})()

    def nvmlDeviceGetUtilizationRates(self, h: int) -> object:
        return type("Util", (), {"gpu": 40 + h})()


def test_sampler_reads_gpus_through_nvml_and_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nv = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    clock = [0.0]
    sampler = FigureSampler(
        tmp_path, stage_pids=list, cache_bytes=lambda: 0, outbox_depth=lambda: 0, gpus=2, clock=lambda: clock[0]
    )
    f = sampler.sample(1.0)
    got = [(g.index, g.utilization_percent, g.memory_used_bytes) for g in f.gpus]
    assert got == [(0, 40, 1 << 30), (1, 41, 2 << 30)]
    nv.broken = True  # the driver goes away: no GPU figures, and no exception
    clock[0] += 1.0
    assert not sampler.sample(1.0).gpus
    clock[0] += 1.0
    assert not sampler.sample(1.0).gpus  # not asked again within a minute
    nv.broken = False
    clock[0] += 60.0
    assert len(sampler.sample(1.0).gpus) == 2
    assert nv.inits == 2


def test_a_standby_that_sees_no_leader_raises_the_alert_once_and_clears_it() -> None:
    from types import SimpleNamespace

    from scheduler.api.standby import StandbyGate
    from scheduler.server import Scheduler

    m = Metrics()
    ha = HaStatus()
    m.add_state(StateCollector(None, None, ha))
    me = SimpleNamespace(ha=ha, metrics=m)
    gate = StandbyGate()
    raised = ("outrider_alerts_raised_total", (("alert", "standby_without_leader"),))
    Scheduler._leader_seen(me, gate, "sched-1:7443")  # type: ignore[arg-type]
    assert scrape(m)[("outrider_standby_without_leader", ())] == 0
    Scheduler._leader_seen(me, gate, "")  # type: ignore[arg-type]
    Scheduler._leader_seen(me, gate, "")  # type: ignore[arg-type]  # still none: raised once
    s = scrape(m)
    assert s[("outrider_standby_without_leader", ())] == 1 and s[raised] == 1
    Scheduler._leader_seen(me, gate, "sched-2:7443")  # type: ignore[arg-type]
    assert scrape(m)[("outrider_standby_without_leader", ())] == 0
    assert gate.leader == "sched-2:7443"
