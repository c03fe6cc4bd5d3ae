"""An agent that crashes and comes back (issue 7): its running stages are taken over, a stage
whose process is gone resumes from its checkpoint, a stage whose agent never comes back stops
by itself within one lease lifetime, and results not yet acknowledged are delivered.

The stage works in steps and keeps its own record of them (tests/helpers/step_stage.py): the
record shows what ran, and what was done twice.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster, wait_for
from tests.helpers.step_stage import alive, pids, recorded, redone, steps_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

TTL = 6.0
LEASE_TTL = f"{TTL:g}s"  # (the cluster fixture, tests/integration/conftest.py)


def keeper_pid(cluster: LocalCluster, agent: str) -> int:
    return int((cluster.state_dir(agent) / "keeper.lock").read_text())


def task_of(client: object, run_id: str) -> object:
    return {t.name: t for t in client.get_run(run_id).tasks}["work"]  # type: ignore[attr-defined]


def test_a_restarted_agent_takes_its_running_stage_over(cluster: LocalCluster, tmp_path: Path) -> None:
    """The agent is SIGKILLed mid-stage and restarted: the same process runs on to its end,
    its output and result are reported, and nothing ran twice."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("one", slots=1)
    cluster.wait_agents(["one"])
    with cluster.client() as client:
        run_id = client.submit(steps_pipeline(marks, steps=8, step_s=0.5)).run_id
        wait_for(lambda: len(recorded(marks)) >= 2, 30, "two steps")
        (stage,) = pids(marks)
        cluster.restart_agent("one")  # SIGKILL, then start again on the same state dir
        assert alive(stage)
        status = client.wait(run_id, timeout=60)
        work = task_of(client, run_id)
        assert status.state == "succeeded", status
        assert work.attempts == 1  # type: ignore[attr-defined]
        assert pids(marks) == [stage]  # the same process, taken over: it never started again
        assert [s for _, s in recorded(marks)] == list(range(1, 9))
        out = b"".join(line.data for line in client.logs(run_id, "work") if line.stream == "stdout")
        assert b"step 8 done" in out  # written after the restart, forwarded by the new agent process
    assert "re-attaching" in cluster.agents["one"].log_path.read_text()


def test_a_stage_whose_process_is_gone_resumes_from_its_checkpoint(cluster: LocalCluster, tmp_path: Path) -> None:
    """Every process of the agent dies (as in a reboot); the agent is back within the lease:
    the same attempt starts again from its last checkpoint, losing at most one step."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("one", slots=1)
    cluster.wait_agents(["one"])
    with cluster.client() as client:
        run_id = client.submit(steps_pipeline(marks, steps=10, step_s=0.4)).run_id
        wait_for(lambda: len(recorded(marks)) >= 4, 30, "four steps")
        agent = cluster.agents["one"]
        keeper = keeper_pid(cluster, "one")
        (stage,) = pids(marks)
        for pid in (agent.pid, keeper, stage):  # the whole machine goes down at once
            os.kill(pid, signal.SIGKILL)
        agent.proc.wait()  # type: ignore[union-attr]
        done_before = max(s for _, s in recorded(marks))
        cluster.restart_agent("one", kill=False)
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        assert task_of(client, run_id).attempts == 1  # type: ignore[attr-defined]  # same lease, resumed
        steps = [s for _, s in recorded(marks)]
        assert sorted(set(steps)) == list(range(1, 11))
        assert redone(marks) <= 1, steps  # at most one checkpoint interval of work was lost
        assert len(pids(marks)) == 2  # started again once, by the restarted agent
        resumed_at = steps[done_before]  # the first step of the second process
        assert resumed_at >= done_before, (steps, done_before)  # it did not start over from step 1
    assert "resuming" in cluster.agents["one"].log_path.read_text()


def test_a_stage_whose_agent_never_returns_stops_within_one_lease(cluster: LocalCluster, tmp_path: Path) -> None:
    """Before: it ran on, unsupervised, until it happened to write to the dead agent's pipe."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("gone", labels={"pool": "x"}, slots=1)
    cluster.wait_agents(["gone"])
    with cluster.client() as client:
        client.submit(steps_pipeline(marks, steps=200, step_s=0.2, quiet=True))
        wait_for(lambda: len(recorded(marks)) >= 2, 30, "two steps")
        (stage,) = pids(marks)
        killed_at = time.monotonic()
        cluster.agents["gone"].kill()
        wait_for(lambda: not alive(stage), TTL + 5, "the orphaned stage to stop by itself")
        assert time.monotonic() - killed_at <= TTL + 1.5  # one lease lifetime (and a little)
    assert "lapsed" in (cluster.state_dir("gone") / "keeper.log").read_text()


def test_results_not_acknowledged_are_delivered_after_a_crash(cluster: LocalCluster, tmp_path: Path) -> None:
    """The stage ends while the scheduler is down; the agent crashes before it could report.
    The restarted agent delivers the result from its durable outbox: the task succeeds once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("one", slots=1)
    cluster.wait_agents(["one"])
    with cluster.client() as client:
        # No declared output: publishing one would wait for the scheduler; the result is ready at once.
        run_id = client.submit(steps_pipeline(marks, steps=4, step_s=0.3, outputs=())).run_id
        wait_for(lambda: len(recorded(marks)) >= 1, 30, "the first step")
    assert cluster.scheduler is not None
    cluster.scheduler.kill()
    journal = cluster.state_dir("one") / "journal"
    wait_for(lambda: len(recorded(marks)) >= 4 and not any(alive(p) for p in pids(marks)), 30, "the stage to end")
    wait_for(lambda: b"outbox\t" in (journal / "cache.db").read_bytes() + _wal(journal), 10, "the result on disk")
    cluster.agents["one"].kill()  # the result is only on disk now
    cluster.start_scheduler()
    cluster.restart_agent("one", kill=False)
    with cluster.client() as client:
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        assert task_of(client, run_id).attempts == 1  # type: ignore[attr-defined]
    assert [s for _, s in recorded(marks)] == [1, 2, 3, 4]  # it never ran again


def _wal(journal: Path) -> bytes:
    try:
        return (journal / "cache.db-wal").read_bytes()
    except FileNotFoundError:
        return b""
