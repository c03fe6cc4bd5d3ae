"""Draining an agent (issue 7): the first SIGTERM, a preemption notice file, or ``outrider
drain``: running stages are asked to checkpoint (SIGTERM, with the drain grace), their
checkpoints reported, their leases released, so the tasks resume elsewhere; the agent takes
no work. A second SIGTERM kills.

The stage works in steps and keeps its own record of them (tests/helpers/step_stage.py); on
SIGTERM it finishes its step, checkpoints, and exits.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster, wait_for
from tests.helpers.step_stage import alive, pids, recorded, redone, steps_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

LEASE_TTL = "4s"  # (the cluster fixture, tests/integration/conftest.py)


def _task(client: object, run_id: str) -> object:
    return {t.name: t for t in client.get_run(run_id).tasks}["work"]  # type: ignore[attr-defined]


def _draining(client: object, name: str) -> bool:
    return any(a.name == name and a.draining for a in client.list_agents())  # type: ignore[attr-defined]


def _drained_and_resumed(cluster: LocalCluster, client: object, run_id: str, marks: Path) -> None:
    """The task was released by the drained agent and finished on ``b`` from its checkpoint."""
    cluster.add_agent("b", labels={"pool": "x"}, slots=1)
    status = client.wait(run_id, timeout=60)  # type: ignore[attr-defined]
    assert status.state == "succeeded", status
    work = _task(client, run_id)
    assert work.agent == "b" and work.attempts == 2  # type: ignore[attr-defined]
    steps = recorded(marks)
    last_first = max(s for a, s in steps if a == 1)
    assert next(s for a, s in steps if a == 2) == last_first + 1, steps  # nothing redone, nothing skipped
    assert redone(marks) == 0


def test_sigterm_checkpoints_releases_and_exits(cluster: LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    agent = cluster.add_agent("a", labels={"pool": "x"}, slots=1)
    cluster.wait_agents(["a"])
    with cluster.client() as client:
        run_id = client.submit(steps_pipeline(marks, steps=30, step_s=0.3, labels={"pool": "x"})).run_id
        wait_for(lambda: len(recorded(marks)) >= 3, 30, "three steps")
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0  # it drained and exited by itself
        log = agent.log_path.read_text()
        assert "draining (SIGTERM" in log and "drained" in log
        _drained_and_resumed(cluster, client, run_id, marks)


def test_a_preemption_notice_drains_and_the_agent_stays(cluster: LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    notice = tmp_path / "spot" / "termination-notice"
    cluster.start_scheduler()
    agent = cluster.add_agent("a", labels={"pool": "x"}, slots=1, extra_args=["--preemption-file", str(notice)])
    cluster.wait_agents(["a"])
    with cluster.client() as client:
        run_id = client.submit(steps_pipeline(marks, steps=30, step_s=0.3, labels={"pool": "x"})).run_id
        wait_for(lambda: len(recorded(marks)) >= 3, 30, "three steps")
        notice.parent.mkdir()
        notice.touch()  # as the cloud's metadata service would tell a spot instance
        wait_for(lambda: _draining(client, "a"), 15, "the agent to show as draining")
        wait_for(lambda: not any(alive(p) for p in pids(marks)), 15, "the stage to checkpoint and stop")
        _drained_and_resumed(cluster, client, run_id, marks)
        assert agent.alive() and _draining(client, "a")  # it stays, taking no work


def test_outrider_drain_drains_the_agent(cluster: LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    agent = cluster.add_agent("a", labels={"pool": "x"}, slots=1)
    cluster.wait_agents(["a"])
    with cluster.client() as client, cluster.client("ops", role="admin") as admin:
        run_id = client.submit(steps_pipeline(marks, steps=30, step_s=0.3, labels={"pool": "x"})).run_id
        wait_for(lambda: len(recorded(marks)) >= 3, 30, "three steps")
        admin.drain("a")
        wait_for(lambda: "draining (the scheduler asked" in agent.log_path.read_text(), 15, "the agent to drain")
        _drained_and_resumed(cluster, client, run_id, marks)
        assert agent.alive() and _draining(client, "a")


def test_a_second_sigterm_kills(cluster: LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    agent = cluster.add_agent("a", slots=1, extra_args=["--drain-grace", "60s"])
    cluster.wait_agents(["a"])
    with cluster.client() as client:
        # A stage that ignores SIGTERM: the drain would wait its whole grace.
        from outrider.pipeline import Pipeline

        p = Pipeline("stubborn")
        p.task("work", run=f'trap "" TERM; echo $$ > "{marks}/pids"; while :; do sleep 0.1; done')
        client.submit(p)
        stage = wait_for(lambda: pids(marks), 30, "the stage to start")[0]
        agent.signal(signal.SIGTERM)
        wait_for(lambda: "draining (SIGTERM" in agent.log_path.read_text(), 15, "the drain")
        t0 = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        assert time.monotonic() - t0 < 15  # the kill grace (5 s), not the drain grace (60 s)
        wait_for(lambda: not alive(stage), 10, "the stage to be killed")
