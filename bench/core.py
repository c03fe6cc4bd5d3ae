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
  throughput_off_tasks_per_s, observability_cost_pct
                          the same throughput on a second cluster with metrics and
                          tracing off (--metrics off --tracing off), its runs alternating
                          with the first's (which has both on, the default), and how much
                          slower "on" is (target: within 5 %); --compare metrics or
                          tracing turns off only that one, --compare none skips it
  scheduler_off_cpu_ms_per_task
                          the second scheduler's CPU per task: the steadier measure of
                          what metrics and tracing cost the scheduler on a busy machine
  metrics_scrape_ms       one GET /metrics of the first scheduler after the runs (every
                          task still in memory): what a Prometheus scrape costs the loop
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
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
    "observability_cost_pct": ("<=", 5.0),
}
#: The second cluster's scheduler, per --compare: what is measured is what it turns off.
OFF = {
    "both": ["--metrics", "off", "--tracing", "off"],
    "metrics": ["--metrics", "off"],
    "tracing": ["--tracing", "off"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cluster: LocalCluster, prefix: str, extra: list[str]) -> None:
    cluster.start_scheduler(extra)
    names = [f"{prefix}-a", f"{prefix}-b"]
    for name in names:
        cluster.add_agent(name, slots=2)
    cluster.wait_agents(names)


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
    ap.add_argument(
        "--compare",
        choices=("both", "metrics", "tracing", "none"),
        default="both",
        help="what the second cluster turns off (default both: metrics and tracing); none: no second cluster",
    )
    args = ap.parse_args(argv)

    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="outrider-bench-") as tmp:
        with (
            LocalCluster(Path(tmp), log_level="warning") as cluster,
            LocalCluster(Path(tmp) / "off", log_level="warning") as off,
        ):
            http = f"127.0.0.1:{free_port()}"
            start(cluster, "bench", ["--http-listen", http])  # metrics and tracing on: the defaults
            if args.compare != "none":
                start(off, "off", OFF[args.compare])
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
                rates: list[float] = []
                rates_off: list[float] = []
                off_client = off.client("bench") if args.compare != "none" else None
                assert cluster.scheduler is not None
                sched = psutil.Process(cluster.scheduler.pid)
                agents = [psutil.Process(d.pid) for d in cluster.agents.values()]
                keeps = keepers(Path(tmp))  # (started by the latency runs' first stages)
                sched_cpu0, agents_cpu0 = cpu_s(sched), sum(cpu_s(a) for a in agents)
                sched_off = psutil.Process(off.scheduler.pid) if off.scheduler is not None else None
                sched_off_cpu0 = cpu_s(sched_off) if sched_off is not None else 0.0
                keepers_cpu0 = sum(cpu_s(k) for k in keeps)
                if off_client is not None:
                    # As many one-task runs as the first cluster's latency runs: both start the
                    # throughput runs warm and holding the same history (runs in memory, rows).
                    for _ in range(args.latency_runs + 10):
                        assert off_client.run(one_task()).state == "succeeded"
                for i in range(args.repeat):
                    # "on" and "off" alternate (and take turns going first), so that a busier
                    # moment of a shared machine does not fall on one side only; the CPU
                    # figures below are the first cluster's.
                    pair = [(client, rates), (off_client, rates_off)]
                    for c, out_rates in pair if i % 2 == 0 else pair[::-1]:
                        if c is None:
                            continue
                        t0 = time.perf_counter()
                        run_id = c.submit(spec).run_id
                        st = c.wait(run_id)
                        dt = time.perf_counter() - t0
                        assert st.state == "succeeded", st.state
                        out_rates.append(args.tasks / dt)
                out["throughput_tasks_per_s"] = round(statistics.median(rates), 1)
                tasks_run = args.tasks * args.repeat
                out["scheduler_cpu_ms_per_task"] = round((cpu_s(sched) - sched_cpu0) * 1000 / tasks_run, 3)
                out["agent_cpu_ms_per_task"] = round(
                    (sum(cpu_s(a) for a in agents) - agents_cpu0) * 1000 / tasks_run, 3)
                out["keeper_cpu_ms_per_task"] = round(
                    (sum(cpu_s(k) for k in keeps) - keepers_cpu0) * 1000 / tasks_run, 3)
                out["throughput_runs"] = [round(r, 1) for r in rates]
                if off_client is not None:
                    off_client.close()
                    on, off_rate = statistics.median(rates), statistics.median(rates_off)
                    out["throughput_off_tasks_per_s"] = round(off_rate, 1)
                    out["throughput_off_runs"] = [round(r, 1) for r in rates_off]
                    out["observability_cost_pct"] = round(100.0 * (off_rate - on) / off_rate, 1)
                    assert sched_off is not None
                    off_cpu = cpu_s(sched_off) - sched_off_cpu0
                    out["scheduler_off_cpu_ms_per_task"] = round(off_cpu * 1000 / tasks_run, 3)
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://{http}/metrics", timeout=30) as r:
                    assert r.status == 200 and b"outrider_tasks" in r.read()
                out["metrics_scrape_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            out["agent_rss_after_mb"] = round(max(rss_mb(d.pid) for d in cluster.agents.values()), 1)
            assert cluster.scheduler is not None
            out["scheduler_rss_mb"] = round(rss_mb(cluster.scheduler.pid), 1)
    out["tasks"] = args.tasks
    out["compare"] = args.compare
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    for key, (op, target) in TARGETS.items():
        if key not in out:
            continue
        value = out[key]
        if op is None:
            print(f"{key:<26} {value:>10}")
            continue
        ok = value >= target if op == ">=" else value <= target  # type: ignore[operator]
        print(f"{key:<26} {value:>10}   target {op} {target:g}   {'met' if ok else 'NOT met'}")
    print(f"{'throughput_runs':<26} {out['throughput_runs']}   (metrics and tracing on)")
    if "throughput_off_tasks_per_s" in out:
        off_what = {"both": "metrics and tracing", "metrics": "metrics", "tracing": "tracing"}[args.compare]
        print(f"{'throughput_off_tasks_per_s':<26} {out['throughput_off_tasks_per_s']:>10}   ({off_what} off)")
        print(f"{'throughput_off_runs':<26} {out['throughput_off_runs']}")
    print(f"{'metrics_scrape_ms':<26} {out['metrics_scrape_ms']:>10}")
    print(f"{'agent_rss_after_mb':<26} {out['agent_rss_after_mb']:>10}")
    print(f"{'scheduler_rss_mb':<26} {out['scheduler_rss_mb']:>10}")
    print(f"{'scheduler_cpu_ms_per_task':<26} {out['scheduler_cpu_ms_per_task']:>10}")
    if "scheduler_off_cpu_ms_per_task" in out:
        print(f"{'scheduler_off_cpu_ms_per_task':<26} {out['scheduler_off_cpu_ms_per_task']:>10}   (off)")
    print(f"{'agent_cpu_ms_per_task':<26} {out['agent_cpu_ms_per_task']:>10}")
    print(f"{'keeper_cpu_ms_per_task':<26} {out['keeper_cpu_ms_per_task']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
