#!/usr/bin/env python3
"""Failover benchmark (docs/ha.md): how long a takeover takes, measured end to end.

Two scheduler replicas on a throwaway local PostgreSQL (tests/helpers/pgserver.py), one
shared artifact dir, one agent given both addresses (lease TTL 4 s, heartbeats every 0.5 s).
Each round submits a chain of short tasks, waits until one runs, then takes the leader out,
SIGKILL (a crash) or SIGSTOP (a paused process: its lock session goes silent and the server
ends it after 5 s), and measures from that moment:

* serving: until the other replica's health says the control service is SERVING;
* placed: until the new leader places a task (the first ``running`` event it records).

The replica taken out is then continued (it exits 75, fenced) and started again as a standby.

    python bench/failover.py                 # 5 rounds of each kind; median [min-max]
    python bench/failover.py --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline
from tests.helpers.ha import Replicas
from tests.helpers.pgserver import PgServer


def chain(name: str, n: int = 200) -> Pipeline:
    p = Pipeline(name)
    for i in range(n):
        p.task(f"s{i}", run="sleep 0.2", **({"after": [f"s{i - 1}"]} if i else {}))
    return p


def first_running_after(conn: psycopg.Connection, wall: float, deadline: float) -> float:
    while time.monotonic() < deadline:
        row = conn.execute("SELECT min(ts) FROM events WHERE state='running' AND ts > %s", (wall,)).fetchone()
        if row and row[0] is not None:
            return float(row[0])
        time.sleep(0.02)
    raise TimeoutError("no task placed after the failover")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pg = PgServer().start()
    root = Path(tempfile.mkdtemp(prefix="outrider-failover-"))
    cluster = LocalCluster(root / "cluster", lease_ttl="4s", heartbeat_interval="0.5s", log_level="warning")
    reps = Replicas(cluster, pg, pg.database(), root / "shared", count=2)
    figures: dict[str, dict[str, list[float]]] = {k: {"serving": [], "placed": []} for k in ("SIGKILL", "SIGSTOP")}
    try:
        for i in range(2):
            reps.start(i)
        leader = reps.leader()
        cluster.address = reps.addresses
        cluster.add_agent("a", slots=2)
        cluster.wait_agents(["a"])
        conn = psycopg.connect(reps.uri, password=pg.password, autocommit=True)
        with cluster.client() as client:
            for r in range(args.rounds):
                for how in ("SIGKILL", "SIGSTOP"):
                    run_id = client.submit(chain(f"c{r}{how[3:].lower()}")).run_id
                    while not conn.execute(
                        "SELECT 1 FROM events WHERE run_id=%s AND state='running'", (run_id,)
                    ).fetchone():
                        time.sleep(0.02)
                    old = reps.daemons[leader]
                    wall, t0 = time.time(), time.monotonic()
                    os.kill(old.pid, signal.SIGKILL if how == "SIGKILL" else signal.SIGSTOP)
                    leader = reps.leader(timeout=60, exclude=(leader,))
                    figures[how]["serving"].append(time.monotonic() - t0)
                    placed = first_running_after(conn, wall, time.monotonic() + 60)
                    figures[how]["placed"].append(placed - wall)
                    if how == "SIGSTOP":
                        os.kill(old.pid, signal.SIGCONT)
                    old.wait(30)
                    reps.start(next(i for i, d in reps.daemons.items() if d is old))
                    client.cancel(run_id)
        conn.close()
    finally:
        for d in cluster.agents.values():
            d.stop()
        reps.stop()
        pg.stop()
    out = {
        how: {
            k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
            for k, v in kinds.items()
        }
        for how, kinds in figures.items()
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for how, kinds in out.items():
            for k, f in kinds.items():
                print(f"{how:8} {k:8} {f['median_s']:.2f}s [{f['min_s']:.2f}-{f['max_s']:.2f}] over {f['n']} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
