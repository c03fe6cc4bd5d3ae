#!/usr/bin/env python3
"""Placement benchmark: the matcher's cost at scale, inside one scheduler process.

Drives the real :class:`scheduler.core.engine.Engine` over a real SQLite store
(SQLite in a temp dir, WAL, ``synchronous=FULL``, the writer thread and group commit exactly
as deployed). There is no gRPC and there are no agent processes: agents are simulated by
calling the engine the way the servicers do (``register``, ``attach``, ``add_credits``,
``complete``), so what is measured is the engine, not the wire.

    python bench/placement.py            # figures beside their targets (about 2 minutes)
    python bench/placement.py --quick    # a smaller run, to check the benchmark itself
    python bench/placement.py --json     # one JSON object
    python bench/placement.py --profile  # also cProfile the poll and print the top entries

The simulated cluster (seeded, reproducible):

* agents (10,000) of three kinds: ``gpu`` (16-64 cores, 1-8 GPUs of model A100/H100/L4 with
  some memory in use), ``hpc`` (32-64 cores, lots of memory), ``edge`` (2-8 cores, little memory);
  labels ``tier``, ``site`` (40 sites), ``region``, ``cuda`` ("11.8"/"12.1"/"12.4" on GPU nodes);
  zones from their region (eu, eu-west, us, us-east, asia); 0-16 cached artifacts each, drawn
  from a pool of 2,000 made-up sha256 digests with a skew towards popular ones; 2-8 slots.
* queued tasks (100,000) in 50 pipelines of independent tasks, spread over 5 tenants, with
  priorities 0/5/10 and a concurrency limit on some pipelines. Each task's requirements come
  from a pool of distinct requirement shapes (cpus, memory, disk, GPUs with model and memory,
  label selectors, label expressions such as ``cuda >= 12.1`` or ``region in (...)``,
  residency zones); every shape fits at least one agent of the smallest population used. Some
  tasks carry affinities (prefer a site, avoid edge boxes).

What is timed:

* **a poll** (``poll_p50_ms``, ``poll_p99_ms``): one simulated agent with free slots asks for
  work. The benchmark gives that agent's channel 1-4 credits with ``engine.add_credits`` (no
  more than its free slots) and then times one direct, synchronous call of
  ``engine.dispatcher.dispatch()``, the pass that the credit's kick would run: it collects the channels
  with credit, orders the ready runs by fairness, runs the feasibility checks, picks and grants
  tasks, builds the Assignment messages and hands the batch to the store (the commit itself
  happens on the writer thread and is not inside the timed call; its fsync is in the sustained
  figure). Only the polled channel holds credit during the pass: credit the agent could not
  use is taken back afterwards, as when a unary poll returns empty, so every timed pass answers
  exactly one poll, and the timed call replaces the pass the credit's kick would have scheduled
  (the benchmark marks that kick as taken, so no second pass runs for the same poll). Empty
  answers (nothing fits the agent now) are polls too and are included.
* **sustained placements/s**: polls back to back for a fixed time, with everything a scheduler
  does meanwhile on the same thread: the kicked dispatch passes, completions (``engine.complete``
  of the oldest leases, so that capacity frees and running tasks stay about constant), the
  engine's ``tick`` every 50 ms, event-loop turns that hand commits to the writer and deliver
  assignments, and top-up submissions that keep the queue near its target depth (a queue held
  at 100,000 must take in as many tasks as it places). Placements divided by wall time; where
  that time went is printed beside it. By default the whole process (engine and writer thread)
  is pinned to one CPU (``--cores``). Simulated agents send no heartbeats, so leases get an
  hour's TTL instead of being renewed: heartbeat handling is not in the figures.
* ``scheduler_rss_mb``: the process's RSS after setup (agents registered and connected,
  tasks queued), after a garbage collection.
* scaling: poll p50/p99 with 1,000 and 10,000 agents and 10,000 and 100,000 queued tasks,
  each population built fresh (same generator, so the smaller is a prefix of the larger).
  Every measurement starts once the queued tasks are older than the placement wait (a 100,000
  task setup takes longer than that anyway; a 10,000 task one is waited for), so the rows
  compare like with like; tasks submitted to top the queue up during a measurement are young.
* data locality, separately and smaller: pipelines of producer → consumer pairs. Producers are
  placed and completed with outputs whose digests some agents already cache, so consumers queue
  with inputs and delay scheduling (``DelayScheduler.should_wait`` / ``best_quality``) is live; a quarter of
  the consumers also prefer a site. Measured within the placement wait: poll p50/p99 and the
  share of consumers that ran where their input was cached.
* **replay** (``replay_cpu_us_per_placement``): the sustained workload again, on fake clocks
  that advance a fixed step per poll, so every run (and every version of the code with the same
  policy) makes the same decisions; CPU time per placement, which compares versions where the
  wall-clock figures swing with timing. ``--replay-polls 0`` skips it.

Delay scheduling only holds a task back for ``placement_wait`` (5 s) after it was queued. In the
big queue the tasks at the head of each queue are older than that (by Little's law a 100,000-deep
queue drained at 2,000/s waits 50 s), so the main figures mostly exercise the feasibility path;
the locality scenario is the one that exercises scoring.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import hashlib
import io
import json
import logging
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outrider.v1 import agent_pb2, common_pb2  # noqa: E402
from scheduler import matcher  # noqa: E402
from scheduler.api import wire  # noqa: E402
from scheduler.core.channel import Channel  # noqa: E402
from scheduler.core.engine import Engine  # noqa: E402
from scheduler.core.model import Needs  # noqa: E402
from scheduler.core.registry import view_from_caps  # noqa: E402
from scheduler.store.sqlite import SqliteStore as Store  # noqa: E402

TARGETS = {
    "poll_p50_ms": (None, None),
    "poll_p99_ms": ("<=", 10.0),
    "placements_per_s": (">=", 2000.0),
    "scheduler_rss_mb": (None, None),
}

GiB = 2**30
MiB = 2**20
#: (label value, zones the agent may process data in)
REGIONS = (
    ("eu-west-1", ("eu", "eu-west")),
    ("eu-central-1", ("eu",)),
    ("us-east-1", ("us", "us-east")),
    ("us-west-2", ("us",)),
    ("ap-southeast-1", ("asia",)),
)
#: short name (what tasks ask for) -> (model string agents report, memory per GPU)
GPU_MODELS = {
    "A100": ("NVIDIA A100-SXM4-80GB", 80 * GiB),
    "H100": ("NVIDIA H100 80GB HBM3", 80 * GiB),
    "L4": ("NVIDIA L4", 24 * GiB),
}
CUDA = ("11.8", "12.1", "12.4")
SITES = tuple(f"site-{i:02d}" for i in range(40))
TENANTS = tuple(f"tenant-{i}" for i in range(5))
RESIDENCIES = (("eu",), ("us",), ("eu", "us"), ("asia",), ("eu-west",), ("us-east", "eu-west"))
DIGEST_POOL = 2000


def digest(i: int) -> str:
    return hashlib.sha256(f"artifact-{i}".encode()).hexdigest()


# --------------------------------------------------------------------------- the simulated cluster

def make_agent(rng: random.Random, i: int) -> tuple[str, common_pb2.Capabilities]:
    """One agent's capabilities, as its Register would carry them."""
    kind = rng.choices(("gpu", "hpc", "edge"), weights=(25, 35, 40))[0]
    region, zones = rng.choice(REGIONS)
    caps = common_pb2.Capabilities(
        arch="x86_64", os="linux", hostname=f"host-{i}", agent_version="bench",
        zones=list(zones), bandwidth_bps=rng.choice((12.5e6, 125e6, 1.25e9)),
    )
    labels = {"tier": kind, "site": rng.choice(SITES), "region": region}
    if kind == "gpu":
        caps.cpu_cores = rng.choice((16, 32, 64))
        caps.memory_bytes = rng.choice((64, 128, 256, 512)) * GiB
        short = rng.choice(tuple(GPU_MODELS))
        model, mem = GPU_MODELS[short]
        for g in range(rng.choice((1, 2, 4, 8))):
            caps.gpus.add(index=g, model=model, memory_bytes=mem,
                          memory_free_bytes=int(mem * rng.uniform(0.3, 1.0)), driver="550.54")
        labels["cuda"] = rng.choice(CUDA)
        caps.slots = 4
    elif kind == "hpc":
        caps.cpu_cores = rng.choice((32, 64))
        caps.memory_bytes = rng.choice((128, 256, 512)) * GiB
        caps.slots = 8
    else:
        caps.cpu_cores = rng.choice((2, 4, 8))
        caps.memory_bytes = rng.choice((4, 8, 16, 32)) * GiB
        caps.slots = 2
    caps.disk_bytes = rng.choice((256, 1024, 4096)) * GiB
    caps.disk_free_bytes = int(caps.disk_bytes * rng.uniform(0.2, 0.9))
    caps.labels.update(labels)
    for d in {int(rng.paretovariate(1.0) * 10) % DIGEST_POOL for _ in range(rng.randint(0, 16))}:
        caps.cached.add(name="", digest=digest(d), size=(d % 97 + 1) * 40 * MiB, kind="file")
    return f"agent-{i:05d}", caps


def make_agents(n: int, seed: int) -> list[tuple[str, common_pb2.Capabilities]]:
    rng = random.Random(seed)  # one stream: a smaller population is a prefix of a larger one
    return [make_agent(rng, i) for i in range(n)]


def random_requirements(rng: random.Random) -> common_pb2.Requirements:
    r = common_pb2.Requirements()
    kind = rng.choices(("small", "hpc", "gpu", "edge"), weights=(45, 20, 25, 10))[0]
    if kind == "small":
        r.cpus = rng.choice((0.5, 1, 2, 4))
        r.memory_bytes = rng.choice((256 * MiB, 512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB))
    elif kind == "hpc":
        r.cpus = rng.choice((8, 16, 32))
        r.memory_bytes = rng.choice((16, 32, 64, 128)) * GiB
        if rng.random() < 0.5:
            r.labels["tier"] = "hpc"
        else:
            r.expressions.add(key="tier", op="!=", values=["edge"])
    elif kind == "gpu":
        r.cpus = rng.choice((2, 4, 8))
        r.memory_bytes = rng.choice((8, 16, 32)) * GiB
        r.gpus = rng.choice((1, 1, 2, 4))
        if rng.random() < 0.6:
            r.gpu_model = rng.choice(tuple(GPU_MODELS))
        if rng.random() < 0.4:
            r.gpu_memory_bytes = rng.choice((16, 20)) * GiB
        if rng.random() < 0.4:
            r.expressions.add(key="cuda", op=">=", values=[rng.choice(CUDA[1:])])
    else:
        r.cpus = rng.choice((1, 2))
        r.memory_bytes = rng.choice((512 * MiB, 1 * GiB, 2 * GiB))
        r.labels["tier"] = "edge"
        if rng.random() < 0.4:
            r.labels["site"] = rng.choice(SITES)
    if rng.random() < 0.3:
        r.residency.extend(rng.choice(RESIDENCIES))
    if rng.random() < 0.15:
        r.expressions.add(key="region", op="in", values=rng.sample([x for x, _ in REGIONS], 2))
    if rng.random() < 0.1:
        r.disk_bytes = rng.choice((50, 200)) * GiB
    return r


def make_shapes(count: int, views: list[matcher.AgentView], seed: int) -> list[common_pb2.Requirements]:
    """``count`` requirement shapes with distinct Needs, each feasible on some agent in ``views``."""
    rng = random.Random(seed + 1)
    shapes: dict[Needs, common_pb2.Requirements] = {}
    probe = common_pb2.TaskSpec()
    for _ in range(count * 50):
        if len(shapes) >= count:
            break
        r = random_requirements(rng)
        probe.requires.CopyFrom(r)
        needs = wire.task_from_proto(probe).requires
        if needs in shapes or not any(matcher.feasible(needs, v) for v in views):
            continue
        shapes[needs] = r
    return list(shapes.values())


@dataclass
class Template:
    """How one pipeline draws its tasks: tenant, priority, limit, and a weighted set of shapes."""

    name: str
    tenant: str
    priority: int
    concurrency: int
    shapes: list[int]
    weights: list[float]
    affinity_share: float


def make_templates(n: int, n_shapes: int, seed: int) -> list[Template]:
    rng = random.Random(seed + 2)
    out = []
    for i in range(n):
        k = min(n_shapes, rng.randint(20, 60))
        out.append(Template(
            name=f"pipe-{i:02d}",
            tenant=TENANTS[i % len(TENANTS)],
            priority=rng.choices((0, 5, 10), weights=(70, 20, 10))[0],
            concurrency=rng.choice((100, 500, 2000)) if rng.random() < 0.2 else 0,
            shapes=rng.sample(range(n_shapes), k),
            weights=[1.0 / (j + 1) for j in range(k)],  # a few common shapes, a long tail
            affinity_share=rng.choice((0.0, 0.0, 0.1, 0.3)),
        ))
    return out


def build_spec(t: Template, name: str, n_tasks: int, shapes: list[common_pb2.Requirements],
               rng: random.Random) -> common_pb2.PipelineSpec:
    spec = common_pb2.PipelineSpec(name=name, tenant=t.tenant, priority=t.priority, concurrency=t.concurrency)
    picks = rng.choices(t.shapes, weights=t.weights, k=n_tasks)
    for j, s in enumerate(picks):
        ts = spec.tasks.add(name=f"t{j}", argv=["python", "-m", "step", str(j)], max_attempts=3)
        ts.requires.CopyFrom(shapes[s])
        if t.affinity_share and rng.random() < t.affinity_share:
            a = ts.affinities.add(weight=1.0)
            a.expr.key, a.expr.op = "site", "="
            a.expr.values.append(rng.choice(SITES))
            b = ts.affinities.add(weight=-0.5)
            b.expr.key, b.expr.op = "tier", "="
            b.expr.values.append("edge")
    return spec


# --------------------------------------------------------------------------- garbage collector pauses

class GcWatch:
    """Counts the cyclic garbage collector's passes and how long each took, by generation.

    With 100,000 tasks in memory a full (generation 2) collection is a pause long enough to
    show in a poll's p99; this says how much of the tail it is.
    """

    def __init__(self) -> None:
        self.count = 0
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.pauses.append((info["generation"], (time.perf_counter() - self._start) * 1000))

    def summary(self, since: int = 0) -> dict[str, Any]:
        full = [ms for g, ms in self.pauses[since:] if g == 2]
        return {"gc_passes": len(self.pauses) - since, "gc_full_passes": len(full),
                "gc_full_max_ms": round(max(full), 1) if full else 0.0}


GC = GcWatch()  # installed by main()


# --------------------------------------------------------------------------- the harness

@dataclass
class Harness:
    """One engine, its store, and the simulated agents' channels."""

    agents: int
    tasks: int
    seed: int
    shapes: list[common_pb2.Requirements]
    pipelines: int = 50
    placement_wait: float = 5.0
    tmp: tempfile.TemporaryDirectory[str] = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)
    store: Store = field(init=False)
    engine: Engine = field(init=False)
    channels: list[Channel] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)
    running: collections.deque[tuple[str, str, str, int]] = field(default_factory=collections.deque)
    templates: list[Template] = field(default_factory=list)
    rng: random.Random = field(init=False)
    setup_s: float = 0.0
    agents_s: float = 0.0
    submit_s: float = 0.0
    topped_up: int = 0
    polls_with_gc: int = 0
    _pending: set[Channel] = field(default_factory=set)
    _last_tick: float = 0.0
    clock: Callable[[], float] = time.monotonic  # the engine's clocks (a replay drives fake ones)
    wall: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed + 3)
        self.tmp = tempfile.TemporaryDirectory(prefix="outrider-bench-placement-")
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.store = Store(Path(self.tmp.name) / "scheduler.db")
        self.store.start(self.loop)
        # Simulated agents do not heartbeat: leases must outlive the run instead of being renewed.
        self.engine = Engine(self.store, artifact_exists=lambda d: True, placement_wait=self.placement_wait,
                             lease_ttl=3600.0, rng=random.Random(self.seed + 4), clock=self.clock, wall=self.wall)
        self.engine.start(self.loop)

    # -- setup --

    def connect_agents(self, population: list[tuple[str, common_pb2.Capabilities]]) -> None:
        clock = [common_pb2.ClockSample(offset_s=0.0005, uncertainty_s=0.001, source="scheduler")]
        for name, caps in population:
            self.engine.register(name, f"spiffe://bench/agent/{name}", wire.capabilities_from_proto(caps),
                                 wire.clocks_from_proto(clock), ())
            self.channels.append(self.engine.attach(name))
            self.slots[name] = caps.slots
        self.settle()

    def submit_pipelines(self, n_tasks: int) -> None:
        self.templates = make_templates(self.pipelines, len(self.shapes), self.seed)
        per = n_tasks // self.pipelines
        for i, t in enumerate(self.templates):
            n = per + (1 if i < n_tasks % self.pipelines else 0)
            spec = build_spec(t, t.name, n, self.shapes, self.rng)
            self.loop.run_until_complete(self.engine.submit(wire.check_pipeline(spec), "bench"))
        self.settle()

    def settle(self) -> None:
        """Let every queued commit reach the disk and its callbacks run."""
        fut = self.store.barrier()
        self.loop.run_until_complete(fut)
        self.spin()

    def spin(self) -> None:
        """One turn of the event loop: kicked dispatch passes, commit hand-offs, deliveries."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()
        for ch in list(self._pending):
            if ch.has_assignments():
                wire.scheduler_message(ch.take())  # the servicer sends the assignments down the wire
            if not ch.inflight:
                self._pending.discard(ch)

    # -- one poll --

    def poll(self, ch: Channel, credits: int) -> tuple[float, int]:
        """Give ``ch`` credit and time one dispatch pass. Returns (ms, tasks placed)."""
        agent = self.engine.agents[ch.agent]
        before = set(agent.running)
        # The timed call below is the pass that add_credits' kick would schedule: mark the kick
        # as taken so the loop does not run a second, redundant pass for this poll.
        self.engine.dispatcher.scheduled = True
        self.engine.add_credits(ch, credits)
        given = ch.credits
        gcs = GC.count
        t0 = time.perf_counter()
        self.engine.dispatcher.dispatch()
        dt = (time.perf_counter() - t0) * 1000
        if GC.count != gcs:
            self.polls_with_gc += 1
        placed = given - ch.credits
        ch.credits = 0  # the poll is answered; unused credit goes back with it
        if placed:
            self._pending.add(ch)
            for key in sorted(agent.running - before):
                t = self.engine.runs[key[0]].tasks[key[1]]
                self.running.append((ch.agent, t.run_id, t.name, t.attempts))
        return dt, placed

    def random_poll(self) -> tuple[float, int]:
        """A random agent with free slots polls for 1-4 of them."""
        while True:
            ch = self.channels[self.rng.randrange(len(self.channels))]
            free = self.slots[ch.agent] - len(self.engine.agents[ch.agent].running)
            if free > 0:
                return self.poll(ch, min(free, self.rng.randint(1, 4)))

    # -- the rest of a scheduler's work --

    def complete_oldest(self, keep: int) -> int:
        """Finish the oldest leases until ``keep`` remain (successful, no outputs)."""
        n = 0
        while len(self.running) > keep:
            agent, run_id, task, epoch = self.running.popleft()
            c = agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id=run_id, task=task, epoch=epoch),
                                     outcome="succeeded")
            self.engine.complete(agent, wire.completion_from_proto(c))
            n += 1
        return n

    def maybe_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= 0.05:
            self._last_tick = now
            self.engine.tick()

    def top_up(self) -> None:
        """Keep the queue near its target depth with fresh pipelines like the first ones."""
        missing = self.tasks - self.engine.ready_count
        if missing < max(500, self.tasks // 20):
            return
        n = min(missing, 2000)
        t = self.rng.choice(self.templates)
        spec = build_spec(t, f"{t.name}-more{self.topped_up}", n, self.shapes, self.rng)
        self.loop.run_until_complete(self.engine.submit(wire.check_pipeline(spec), "bench"))
        self.topped_up += n

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self.store.close()
            self.loop.close()
            self.tmp.cleanup()


def build(n_agents: int, n_tasks: int, seed: int, shapes: list[common_pb2.Requirements],
          population: list[tuple[str, common_pb2.Capabilities]], placement_wait: float = 5.0,
          clocks: FakeClocks | None = None) -> Harness:
    t0 = time.perf_counter()
    h = Harness(agents=n_agents, tasks=n_tasks, seed=seed, shapes=shapes, placement_wait=placement_wait,
                **({"clock": clocks.mono, "wall": clocks.wall} if clocks else {}))
    h.connect_agents(population[:n_agents])
    t1 = time.perf_counter()
    h.submit_pipelines(n_tasks)
    h.setup_s = time.perf_counter() - t0
    h.agents_s = t1 - t0
    h.submit_s = h.setup_s - h.agents_s
    # Start every measurement with a queue older than the placement wait, as a deep queue is in
    # steady state (a small one built in 2 s would otherwise measure only young tasks).
    if clocks is not None:
        clocks.advance(placement_wait + 0.1)
        return h
    young = placement_wait - (time.perf_counter() - t1)
    if young > 0:
        time.sleep(young + 0.1)
    return h


# --------------------------------------------------------------------------- measurements

def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def measure_polls(h: Harness, n: int, max_s: float, keep_running: int) -> dict[str, Any]:
    """Poll latency: ``n`` random polls (or as many as fit in ``max_s``), the rest untimed."""
    lat: list[float] = []
    placed_lat: list[float] = []
    placed = 0
    gc0, gcp0 = len(GC.pauses), h.polls_with_gc
    deadline = time.perf_counter() + max_s
    while len(lat) < n and time.perf_counter() < deadline:
        dt, k = h.random_poll()
        lat.append(dt)
        if k:
            placed_lat.append(dt)
            placed += k
        h.complete_oldest(keep_running)
        h.spin()
        h.maybe_tick()
        h.top_up()
    return {
        "polls": len(lat),
        "poll_p50_ms": round(statistics.median(lat), 3),
        "poll_p99_ms": round(pct(lat, 0.99), 3),
        "poll_max_ms": round(max(lat), 3),
        "placing_poll_p99_ms": round(pct(placed_lat, 0.99), 3) if placed_lat else None,
        "empty_poll_share": round(1 - len(placed_lat) / len(lat), 3),
        "placed": placed,
        "polls_with_gc": h.polls_with_gc - gcp0,
        **GC.summary(gc0),
    }


def measure_sustained(h: Harness, seconds: float, keep_running: int) -> dict[str, Any]:
    """Placements per second of wall time, with completions, ticks and top-ups on the same thread."""
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    commits0 = h.store.commits
    placed = completed = polls = 0
    topped0 = h.topped_up
    t0 = time.perf_counter()
    end = t0 + seconds
    spent = dict.fromkeys(("polls", "completions", "loop", "tick", "submit"), 0.0)
    clock = time.perf_counter
    while clock() < end:
        a = clock()
        for _ in range(8):  # a burst of polls between loop turns, as arrive together on a busy server
            _, k = h.random_poll()
            placed += k
            polls += 1
            if clock() >= end:
                break
        b = clock()
        completed += h.complete_oldest(keep_running)
        c = clock()
        h.spin()
        d = clock()
        h.maybe_tick()
        e = clock()
        h.top_up()
        f = clock()
        for key, dt in zip(spent, (b - a, c - b, d - c, e - d, f - e)):
            spent[key] += dt
    a = clock()
    h.settle()  # everything placed is durable before the clock stops
    spent["loop"] += clock() - a
    wall = clock() - t0
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "placements_per_s": round(placed / wall, 1),
        "sustained_s": round(wall, 2),
        "sustained_placed": placed,
        "sustained_polls": polls,
        "sustained_completed": completed,
        "sustained_submitted": h.topped_up - topped0,
        "sustained_commits": h.store.commits - commits0,
        "sustained_cpu_per_wall": round(cpu / wall, 2),
        "queued_after": h.engine.ready_count,
        # Where the wall time went: polls (random agent choice + dispatch pass), completions,
        # event-loop turns (kicked dispatch passes, commit hand-off, waiting for the last commit),
        # engine ticks, top-up submissions.
        "sustained_breakdown_s": {k: round(v, 2) for k, v in spent.items()},
    }


class FakeClocks:
    """Monotonic and wall clocks that move only when told: a replay's decisions never depend on timing."""

    def __init__(self) -> None:
        self.t = 0.0

    def mono(self) -> float:
        return 1000.0 + self.t

    def wall(self) -> float:
        return 1.7e9 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def measure_replay(n_agents: int, n_tasks: int, seed: int, shapes: list[common_pb2.Requirements],
                   population: list[tuple[str, common_pb2.Capabilities]], polls: int) -> dict[str, Any]:
    """The sustained workload replayed on fake clocks: CPU time per placement.

    Wall-clock figures swing between runs because what the polls meet depends on timing (how
    young the topped-up tasks are, when ticks fall). Here the engine's clocks advance 0.5 ms per
    poll, with completions, a tick and a top-up every 8 polls, so the same seed makes the same
    decisions in every run and in every version of the code that keeps the same policy: the CPU
    time per placement (this process, writer thread included) compares versions like with like.
    """
    clocks = FakeClocks()
    h = build(n_agents, n_tasks, seed, shapes, population, clocks=clocks)
    try:
        keep = min(2000, sum(h.slots.values()) // 8)
        h.rng = random.Random(seed + 99)
        placed = 0
        poll_cpu = 0.0
        cpu0 = time.process_time()
        for i in range(polls):
            a = time.process_time()
            _, k = h.random_poll()
            poll_cpu += time.process_time() - a
            placed += k
            if i % 8 == 7:
                h.complete_oldest(keep)
                h.spin()
                h.engine.tick()
                h.top_up()
            clocks.advance(0.0005)
        h.settle()
        cpu = time.process_time() - cpu0
    finally:
        h.close()
    return {"replay_polls": polls, "replay_placed": placed,
            "replay_cpu_us_per_placement": round(cpu / max(1, placed) * 1e6, 1),
            "replay_poll_cpu_us_per_placement": round(poll_cpu / max(1, placed) * 1e6, 1)}


def profile_polls(h: Harness, n: int, keep_running: int, top: int = 25) -> str:
    """cProfile ``n`` polls (only the dispatch passes) and return the top entries by cumulative time."""
    prof = cProfile.Profile()
    for _ in range(n):
        while True:
            ch = h.channels[h.rng.randrange(len(h.channels))]
            free = h.slots[ch.agent] - len(h.engine.agents[ch.agent].running)
            if free > 0:
                break
        agent = h.engine.agents[ch.agent]
        before = set(agent.running)
        h.engine.dispatcher.scheduled = True  # as in Harness.poll
        h.engine.add_credits(ch, min(free, h.rng.randint(1, 4)))
        prof.enable()
        h.engine.dispatcher.dispatch()
        prof.disable()
        ch.credits = 0
        for key in agent.running - before:
            t = h.engine.runs[key[0]].tasks[key[1]]
            h.running.append((ch.agent, t.run_id, t.name, t.attempts))
        h._pending.add(ch)
        h.complete_oldest(keep_running)
        h.spin()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    out.write("\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def measure_locality(n_agents: int, pairs: int, seed: int,
                     population: list[tuple[str, common_pb2.Capabilities]]) -> dict[str, Any]:
    """Producer → consumer pairs: consumers queue with inputs that some agents cache.

    Producers (no requirements beyond one core) are placed anywhere and completed with an
    output whose digest is one of the pool's, so the consumer's input is held by the producer
    and by every agent that caches that digest. A quarter of the consumers also prefer a site.
    Then random agents poll while the consumers are younger than the placement wait.
    """
    h = Harness(agents=n_agents, tasks=pairs, seed=seed, shapes=[], pipelines=1, placement_wait=5.0)
    try:
        h.connect_agents(population[:n_agents])
        rng = random.Random(seed + 5)
        per_run = 500
        for r in range(max(1, pairs // per_run)):
            spec = common_pb2.PipelineSpec(name=f"loc-{r}", tenant=TENANTS[r % len(TENANTS)])
            for j in range(per_run):
                p = spec.tasks.add(name=f"p{j}", argv=["produce"], outputs=["out"])
                p.requires.cpus = 1
                c = spec.tasks.add(name=f"c{j}", argv=["consume"])
                c.inputs["x"] = f"p{j}.out"
                c.requires.cpus = 1
                if rng.random() < 0.25:
                    a = c.affinities.add(weight=1.0)
                    a.expr.key, a.expr.op = "site", "="
                    a.expr.values.append(rng.choice(SITES))
            h.loop.run_until_complete(h.engine.submit(wire.check_pipeline(spec), "bench"))
        h.settle()
        # Place every producer (only producers are ready), then complete them all with outputs.
        deadline = time.perf_counter() + 60
        while h.engine.ready_count and time.perf_counter() < deadline:
            h.random_poll()
            h.spin()
        h.settle()
        while h.running:
            agent, run_id, task, epoch = h.running.popleft()
            d = rng.randrange(DIGEST_POOL) if rng.random() < 0.7 else int(rng.paretovariate(1.0) * 10) % DIGEST_POOL
            c = agent_pb2.Completion(
                lease=common_pb2.LeaseRef(run_id=run_id, task=task, epoch=epoch), outcome="succeeded",
                outputs=[common_pb2.ArtifactRef(name="out", digest=digest(d), size=(d % 97 + 1) * 40 * MiB,
                                                kind="file")])
            h.engine.complete(agent, wire.completion_from_proto(c))
        h.settle()
        queued = h.engine.ready_count
        t_ready = time.perf_counter()
        lat: list[float] = []
        while h.engine.ready_count and time.perf_counter() - t_ready < 4.0:  # inside the 5 s wait
            dt, _ = h.random_poll()
            lat.append(dt)
            h.spin()
        placed = local = 0
        for run in h.engine.runs.values():
            for t in run.tasks.values():
                if t.name.startswith("c") and t.agent:
                    placed += 1
                    cached = h.engine.agents[t.agent].view.cached
                    local += all(d in cached for d, _ in t.placement.inputs)
        return {
            "agents": n_agents,
            "consumers_queued": queued,
            "polls": len(lat),
            "poll_p50_ms": round(statistics.median(lat), 3) if lat else None,
            "poll_p99_ms": round(pct(lat, 0.99), 3) if lat else None,
            "consumers_placed": placed,
            "placed_where_cached": round(local / placed, 3) if placed else None,
        }
    finally:
        h.close()


# --------------------------------------------------------------------------- main

def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Outrider placement benchmark (matcher cost at scale)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="a small, fast run (to check the benchmark)")
    ap.add_argument("--agents", type=int, help="agents in the main scenario (default 10000; quick 1000)")
    ap.add_argument("--tasks", type=int, help="queued tasks in the main scenario (default 100000; quick 10000)")
    ap.add_argument("--shapes", type=int, default=300, help="distinct requirement shapes")
    ap.add_argument("--polls", type=int, help="timed polls for the latency figures (default 2000)")
    ap.add_argument("--seconds", type=float, help="length of the sustained run (default 8)")
    ap.add_argument("--max-poll-s", type=float, help="stop timing polls after this long even if fewer were "
                    "timed (default 45; quick 15); each scaling row gets a third of it")
    ap.add_argument("--cores", type=int, default=1, help="CPUs to pin the process to (0: leave as is)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    ap.add_argument("--no-locality", action="store_true", help="skip the data-locality scenario")
    ap.add_argument("--replay-polls", type=int, help="polls in the fake-clock replay (default 8000; quick 1000; "
                    "0 skips it)")
    ap.add_argument("--profile", action="store_true", help="cProfile polls and print the top entries (stderr)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if GC not in gc.callbacks:
        gc.callbacks.append(GC)

    n_agents = args.agents or (1000 if args.quick else 10000)
    n_tasks = args.tasks or (10000 if args.quick else 100000)
    n_polls = args.polls or (300 if args.quick else 2000)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.max_poll_s = args.max_poll_s or (15.0 if args.quick else 45.0)
    small_agents, small_tasks = n_agents // 10, n_tasks // 10
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    t0 = time.perf_counter()
    population = make_agents(n_agents, args.seed)
    small_views = [view_from_caps(n, wire.capabilities_from_proto(c)) for n, c in population[:small_agents]]
    shapes = make_shapes(args.shapes, small_views, args.seed)
    del small_views
    log(f"generated {n_agents} agents and {len(shapes)} requirement shapes in {time.perf_counter() - t0:.1f}s")

    out: dict[str, Any] = {"agents": n_agents, "tasks": n_tasks, "pipelines": 50, "tenants": len(TENANTS),
                           "cores": args.cores or os.cpu_count()}
    h = build(n_agents, n_tasks, args.seed, shapes, population)
    gc.collect()
    out["scheduler_rss_mb"] = round(rss_mb(), 1)
    out["setup_s"] = round(h.setup_s, 2)
    out["setup_agents_s"] = round(h.agents_s, 2)
    out["setup_submit_s"] = round(h.submit_s, 2)
    out["distinct_needs"] = len({t.needs for r in h.engine.runs.values() for t in r.tasks.values() if t.queued})
    out["queue_entries"] = sum(len(r.queues) for r in h.engine.runs.values())
    log(f"setup {h.setup_s:.1f}s (agents {h.agents_s:.1f}s, submit {h.submit_s:.1f}s); "
        f"{h.engine.ready_count} queued, {out['distinct_needs']} distinct needs, "
        f"{out['queue_entries']} (run, needs) queues; rss {out['scheduler_rss_mb']} MiB")
    keep = min(2000, sum(h.slots.values()) // 8)  # leases held at once: each runs about keep/rate seconds
    polls = measure_polls(h, n_polls, max_s=args.max_poll_s, keep_running=keep)
    out.update(polls)
    log(f"polls: {polls}")
    sustained = measure_sustained(h, seconds, keep_running=keep)
    out.update(sustained)
    log(f"sustained: {sustained}")
    if args.profile:
        print(profile_polls(h, min(300, n_polls), keep), file=sys.stderr)
    h.close()
    del h
    gc.collect()

    scaling = [{"agents": n_agents, "tasks": n_tasks, "poll_p50_ms": out["poll_p50_ms"],
                "poll_p99_ms": out["poll_p99_ms"], "polls": out["polls"], "setup_s": out["setup_s"]}]
    if not args.no_scaling:
        for a, t in ((small_agents, small_tasks), (small_agents, n_tasks), (n_agents, small_tasks)):
            s = build(a, t, args.seed, shapes, population)
            k = min(2000, sum(s.slots.values()) // 8)
            r = measure_polls(s, max(200, n_polls // 2), max_s=args.max_poll_s / 3, keep_running=k)
            scaling.append({"agents": a, "tasks": t, "poll_p50_ms": r["poll_p50_ms"],
                            "poll_p99_ms": r["poll_p99_ms"], "polls": r["polls"], "setup_s": round(s.setup_s, 2)})
            log(f"scaling: {scaling[-1]}")
            s.close()
            del s
            gc.collect()
    scaling.sort(key=lambda r: (r["agents"], r["tasks"]))
    replay_polls = args.replay_polls if args.replay_polls is not None else (1000 if args.quick else 8000)
    if replay_polls:
        out.update(measure_replay(n_agents, n_tasks, args.seed, shapes, population, replay_polls))
        log(f"replay: {out['replay_cpu_us_per_placement']} us CPU per placement")
    out["scaling"] = scaling
    if not args.no_locality:
        out["locality"] = measure_locality(min(n_agents, 2000), 2000 if not args.quick else 500,
                                           args.seed, population)
        log(f"locality: {out['locality']}")
    out["total_s"] = round(time.perf_counter() - t0, 1)

    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    for key, (op, target) in TARGETS.items():
        value = out[key]
        if op is None:
            print(f"{key:<26} {value:>10}")
            continue
        ok = value >= target if op == ">=" else value <= target
        print(f"{key:<26} {value:>10}   target {op} {target:g}   {'met' if ok else 'NOT met'}")
    print(f"{'polls timed':<26} {out['polls']:>10}   ({out['empty_poll_share']:.0%} answered empty; "
          f"p99 of polls that placed {out['placing_poll_p99_ms']} ms)")
    print(f"{'sustained':<26} {out['sustained_placed']:>10} placed in {out['sustained_s']} s, "
          f"{out['sustained_completed']} completed, {out['sustained_submitted']} submitted, "
          f"{out['sustained_commits']} commits, {out['sustained_cpu_per_wall']} CPU-s per s")
    spent = ", ".join(f"{k} {v} s" for k, v in out["sustained_breakdown_s"].items())
    print(f"{'sustained wall time':<26} {spent}")
    if "replay_placed" in out:
        print(f"{'replay':<26} {out['replay_cpu_us_per_placement']:>10} us CPU per placement "
              f"({out['replay_poll_cpu_us_per_placement']} us in polls; {out['replay_placed']} placed in "
              f"{out['replay_polls']} polls on fake clocks: the same decisions every run)")
    print(f"{'setup_s':<26} {out['setup_s']:>10}   (agents {out['setup_agents_s']} s, "
          f"submit {out['setup_submit_s']} s; {out['distinct_needs']} distinct needs)")
    print()
    print(f"{'agents':>8} {'tasks':>8} {'poll p50 ms':>12} {'poll p99 ms':>12} {'polls':>6}")
    for r in scaling:
        print(f"{r['agents']:>8} {r['tasks']:>8} {r['poll_p50_ms']:>12} {r['poll_p99_ms']:>12} {r['polls']:>6}")
    if "locality" in out:
        loc = out["locality"]
        print()
        print(f"locality ({loc['agents']} agents, {loc['consumers_queued']} consumers with inputs): "
              f"poll p50 {loc['poll_p50_ms']} ms, p99 {loc['poll_p99_ms']} ms over {loc['polls']} polls; "
              f"{loc['consumers_placed']} placed, {loc['placed_where_cached']} of them where the input was cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
