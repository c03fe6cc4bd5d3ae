"""Scheduler-side durability (issue 7): every acknowledged call is durable, the database
survives any crash, and leases get a fresh grace period on restart.

A busy workload (submissions in a loop, agents completing tasks) runs while the real
scheduler process is SIGKILLed again and again at random points. After every kill the
database passes ``PRAGMA integrity_check``; at the end every submission that was
acknowledged exists, every task once seen succeeded is still succeeded with the same
outputs, and every run finishes.
"""
from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest

from outrider.errors import OutriderError
from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline

pytestmark = pytest.mark.timeout(300)

KILLS = 6


def _pipeline(i: int) -> Pipeline:
    p = Pipeline(f"busy-{i}")
    p.task("a", run='echo "$OUTRIDER_RUN_ID" > "$OUTRIDER_OUTPUTS/out"', outputs=["out"])
    p.task("b", run='cat "$OUTRIDER_INPUTS/x" > "$OUTRIDER_OUTPUTS/out"', inputs={"x": "a.out"}, outputs=["out"])
    p.task("c", run="true")
    return p


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


class Workload:
    """Submits pipelines in a loop; keeps what was acknowledged and what was seen succeeded."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.acked: list[str] = []
        self.seen_done: dict[tuple[str, str], dict[str, str]] = {}  # (run, task) -> outputs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                with self.cluster.client("workload") as client:
                    while not self.stop.is_set():
                        self.acked.append(client.submit(_pipeline(i)).run_id)  # acknowledged: durable
                        i += 1
                        unfinished = [r for r in self.acked if (r, "b") not in self.seen_done][:10]
                        for run_id in unfinished:
                            for t in client.get_run(run_id).tasks:  # reads wait for durability
                                if t.state == "succeeded":
                                    self.seen_done[(run_id, t.name)] = {o.name: o.digest for o in t.outputs}
            except OutriderError:
                self.stop.wait(0.05)  # the scheduler is down: what was not acknowledged does not count


@pytest.mark.slow
def test_sigkill_during_a_busy_workload_loses_nothing_acknowledged(two_agents: LocalCluster) -> None:
    cluster = two_agents
    db = cluster.root / "scheduler" / "outrider.db"
    rng = random.Random()
    work = Workload(cluster)
    work.thread.start()
    try:
        for kill in range(KILLS):
            # A random point of the workload, once it made progress: more submissions and results.
            target, results = len(work.acked) + rng.randint(1, 4), len(work.seen_done) + rng.randint(1, 3)
            wait_for(lambda: len(work.acked) >= target and len(work.seen_done) >= results, 60,
                     f"the workload to go on (kill {kill + 1})")
            assert cluster.scheduler is not None
            cluster.scheduler.kill()
            assert _integrity(db) == "ok"
            cluster.start_scheduler()
    finally:
        work.stop.set()
        work.thread.join(timeout=30)
    acked = list(work.acked)
    assert len(acked) >= KILLS
    cluster.wait_agents(["a", "b"], timeout=45)
    with cluster.client("workload") as client:  # the runs' owner
        known = {r.run_id for r in client.list_runs(limit=100_000)}
        assert set(acked) <= known, f"acknowledged runs lost: {set(acked) - known}"
        for run_id in acked:
            status = client.wait(run_id, timeout=60)
            assert status.state == "succeeded", status
            for t in status.tasks:
                before = work.seen_done.get((run_id, t.name))
                if before is not None:
                    assert {o.name: o.digest for o in t.outputs} == before, (run_id, t.name)
    assert cluster.scheduler is not None
    cluster.scheduler.stop()
    assert _integrity(db) == "ok"
    print(f"\n{KILLS} SIGKILLs: {len(acked)} acknowledged runs, all present and succeeded; "
          f"{len(work.seen_done)} task results seen before a kill, all kept; integrity_check ok")
