#!/usr/bin/env python3
"""Core benchmark: throughput, latency and agent memory, through the public SDK.

One scheduler and two agents with two slots each on this machine, mTLS and
durable SQLite (WAL, synchronous=FULL) on, exactly as deployed.

    python bench/core.py            # figures beside their targets
    python bench/core.py --json     # one JSON object

Figures:
  throughput_tasks_per_s  a pipeline of N independent `true` tasks, submit -> run finished
  latency_p50_ms/p99_ms   a one-task pipeline (`true`), submit -> success seen by the client
  agent_idle_rss_mb       one agent's RSS after registering, idle
  scheduler_cpu_ms_per_task, agent_cpu_ms_per_task, keeper_cpu_ms_per_task
                          CPU time (user + system) the scheduler process, the agent
                          processes and their stage keepers spent per task over the
                          throughput runs (stages not counted): what each side costs,
                          steadier than wall-clock figures on a shared machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outrider.localcluster import LocalCluster  # noqa: E402
from outrider.pipeline import Pipeline  # noqa: E402

TARGETS = {
    "throughput_tasks_per_s": (">=", 1200.0),
    "latency_p50_ms": ("<=", 3.0),
    "latency_p99_ms": (None, None),
    "agent_idle_rss_mb": ("<=", 40.0),
}


def wide_pipeline(n: int) -> Pipeline:
    p = Pipeline(f"wide-{n}")
    for i in range(n):
        p.task(f"t{i}", run=["true"])
    return p


def one_task() -> Pipeline:
    p = Pipeline("one")
    p.task("t", run=["true"])
    return p


def cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process itself (its children, the stages, not counted)."""
    t = proc.cpu_times()
    return t.user + t.system


def keepers(root: Path) -> list[psutil.Process]:
    """The agents' stage keepers (detached processes: not the agents' children) under ``root``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if any(a.endswith("keeper.py") for a in argv) and any(a.startswith(str(root)) for a in argv):
            found.append(proc)
    return found


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Outrider core benchmark")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks in the throughput pipeline")
    ap.add_argument("--repeat", type=int, default=3, help="throughput repetitions (the median is reported)")
    ap.add_argument("--latency-runs", type=int, default=200)
    args = ap.parse_args(argv)

    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="outrider-bench-") as tmp:
        with LocalCluster(Path(tmp), log_level="warning") as cluster:
            cluster.start_scheduler()
            for name in ("bench-a", "bench-b"):
                cluster.add_agent(name, slots=2)
            cluster.wait_agents(["bench-a", "bench-b"])
            # Idle memory: let start-up garbage settle, then read both agents.
            time.sleep(1.0)
            idle = [rss_mb(d.pid) for d in cluster.agents.values()]
            out["agent_idle_rss_mb"] = round(max(idle), 1)

            with cluster.client("bench") as client:
                # Latency: sequential one-task runs.
                lat = []
                for i in range(args.latency_runs + 10):
                    t0 = time.perf_counter()
                    st = client.run(one_task())  # submit and wait, one call
                    dt = (time.perf_counter() - t0) * 1000
                    assert st.state == "succeeded", st
                    if i >= 10:  # warm-up: connections, code paths
                        lat.append(dt)
                lat.sort()
                out["latency_p50_ms"] = round(statistics.median(lat), 2)
                out["latency_p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)

                # Throughput: N independent tasks, submit -> run finished.
                spec = wide_pipeline(args.tasks).to_proto()
                rates = []
                assert cluster.scheduler is not None
                sched = psutil.Process(cluster.scheduler.pid)
                agents = [psutil.Process(d.pid) for d in cluster.agents.values()]
                keeps = keepers(Path(tmp))  # (started by the latency runs' first stages)
                sched_cpu0, agents_cpu0 = cpu_s(sched), sum(cpu_s(a) for a in agents)
                keepers_cpu0 = sum(cpu_s(k) for k in keeps)
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    run_id = client.submit(spec).run_id
                    st = client.wait(run_id)
                    dt = time.perf_counter() - t0
                    assert st.state == "succeeded", st.state
                    rates.append(args.tasks / dt)
                out["throughput_tasks_per_s"] = round(statistics.median(rates), 1)
                tasks_run = args.tasks * args.repeat
                out["scheduler_cpu_ms_per_task"] = round((cpu_s(sched) - sched_cpu0) * 1000 / tasks_run, 3)
                out["agent_cpu_ms_per_task"] = round(
                    (sum(cpu_s(a) for a in agents) - agents_cpu0) * 1000 / tasks_run, 3)
                out["keeper_cpu_ms_per_task"] = round(
                    (sum(cpu_s(k) for k in keeps) - keepers_cpu0) * 1000 / tasks_run, 3)
                out["throughput_runs"] = [round(r, 1) for r in rates]
            out["agent_rss_after_mb"] = round(max(rss_mb(d.pid) for d in cluster.agents.values()), 1)
            assert cluster.scheduler is not None
            out["scheduler_rss_mb"] = round(rss_mb(cluster.scheduler.pid), 1)
    out["tasks"] = args.tasks
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    for key, (op, target) in TARGETS.items():
        value = out[key]
        if op is None:
            print(f"{key:<26} {value:>10}")
            continue
        ok = value >= target if op == ">=" else value <= target  # type: ignore[operator]
        print(f"{key:<26} {value:>10}   target {op} {target:g}   {'met' if ok else 'NOT met'}")
    print(f"{'throughput_runs':<26} {out['throughput_runs']}")
    print(f"{'agent_rss_after_mb':<26} {out['agent_rss_after_mb']:>10}")
    print(f"{'scheduler_rss_mb':<26} {out['scheduler_rss_mb']:>10}")
    print(f"{'scheduler_cpu_ms_per_task':<26} {out['scheduler_cpu_ms_per_task']:>10}")
    print(f"{'agent_cpu_ms_per_task':<26} {out['agent_cpu_ms_per_task']:>10}")
    print(f"{'keeper_cpu_ms_per_task':<26} {out['keeper_cpu_ms_per_task']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
