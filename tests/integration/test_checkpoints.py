"""Checkpoints end to end (issue 7): a stage's checkpoints are kept, uploaded and reported by
its agent, and the next attempt of the task, here or on another agent, starts from the latest
one the scheduler accepted, so at most one checkpoint interval of work is lost.

The stage works in steps and keeps its own record of them (tests/helpers/step_stage.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster, wait_for
from tests.helpers.step_stage import pids, recorded, redone, steps_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

TTL = 4.0
LEASE_TTL = f"{TTL:g}s"  # (the cluster fixture, tests/integration/conftest.py)



def _task(client: object, run_id: str) -> object:
    return {t.name: t for t in client.get_run(run_id).tasks}["work"]  # type: ignore[attr-defined]


def test_a_retry_resumes_from_the_failed_attempts_checkpoint(cluster: LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("one", slots=1)
    cluster.wait_agents(["one"])
    with cluster.client() as client:
        # Attempt 1 fails right after checkpointing step 4: its result waits for that checkpoint.
        run_id = client.submit(steps_pipeline(marks, steps=6, step_s=0.3, fail_at=4, retries=1)).run_id
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        work = _task(client, run_id)
        assert work.attempts == 2  # type: ignore[attr-defined]
        assert recorded(marks) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)]  # nothing redone
        assert work.resumed_from.lease.epoch == 1 and work.resumed_from.seq >= 1  # type: ignore[attr-defined]
        assert len(work.resumed_from.digest) == 64  # type: ignore[attr-defined]


def test_a_lost_agents_task_resumes_elsewhere_from_its_uploaded_checkpoint(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The whole machine goes away for good (agent, keeper and stage killed): the lease
    expires and another agent resumes from the last checkpoint the scheduler accepted."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("a", labels={"pool": "x"}, slots=1)
    cluster.wait_agents(["a"])
    with cluster.client() as client:
        run_id = client.submit(steps_pipeline(marks, steps=12, step_s=0.5, labels={"pool": "x"})).run_id
        wait_for(lambda: len(recorded(marks)) >= 5, 30, "five steps")
        # A checkpoint has reached the scheduler.
        wait_for(lambda: _task(client, run_id).checkpoint.seq >= 3, 15, "an accepted checkpoint")  # type: ignore[attr-defined]
        keeper = int((cluster.state_dir("a") / "keeper.lock").read_text())
        (stage,) = pids(marks)
        for pid in (cluster.agents["a"].pid, keeper, stage):
            os.kill(pid, signal.SIGKILL)
        lost_at = max(s for _, s in recorded(marks))
        cluster.add_agent("b", labels={"pool": "x"}, slots=1)
        status = client.wait(run_id, timeout=90)
        assert status.state == "succeeded", status
        work = _task(client, run_id)
        assert work.agent == "b" and work.attempts == 2  # type: ignore[attr-defined]
        steps = recorded(marks)
        first_resumed = next(s for a, s in steps if a == 2)
        assert first_resumed > 1  # not from scratch
        # Lost: what was done after the accepted checkpoint (one interval, plus the time it
        # takes a checkpoint to reach the scheduler).
        assert lost_at - first_resumed + 1 <= 3, steps
        assert redone(marks) <= 3
        assert work.resumed_from.lease.epoch == 1  # type: ignore[attr-defined]
