"""Issue 7's agent faults against real processes: one process per state dir (fault 4), one
instance per agent name (fault 5), relative paths in the config (fault 6), and failures of
the agent itself that must not be charged to the task (fault 7).

Stages record their PIDs in a directory outside the cluster (passed in an environment
variable), so a test can see that a stage survived, or died.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tasks(status: object) -> dict[str, object]:
    return {t.name: t for t in status.tasks}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- fault 4


def test_a_second_agent_on_the_same_state_dir_fails_naming_the_holder(cluster: LocalCluster, tmp_path: Path) -> None:
    """Before: the second agent deleted the first one's work dirs and killed its stage."""
    cluster.start_scheduler()
    first = cluster.add_agent("one", slots=1)
    cluster.wait_agents(["one"])
    marks = tmp_path / "marks"
    marks.mkdir()
    p = Pipeline("held")
    p.task(
        "work",
        run='echo $$ > "$MARKS/pid"; sleep 3; echo done > "$OUTRIDER_OUTPUTS/out"',
        outputs=["out"],
        env={"MARKS": str(marks)},
    )
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        stage = wait_for(lambda: _pid(marks / "pid"), 30, "the stage to start")

        second = cluster.add_agent("one", handle="one-again", slots=1, state_dir=cluster.state_dir("one"))
        assert second.wait(30) == 2
        log = second.log_path.read_text()
        assert f"in use by another process (pid {first.pid}" in log, log
        assert _alive(stage) and first.alive()  # nothing of the first agent was touched

        status = client.wait(run_id, timeout=60)
        work = _tasks(status)["work"]
        assert status.state == "succeeded" and work.attempts == 1, status  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- fault 6


def test_a_relative_state_dir_is_resolved_at_start(cluster: LocalCluster, tmp_path: Path) -> None:
    """Before: the relative path was handed to stages whose cwd is their work dir, so every
    task failed ("declared output(s) missing", or the shell's "Directory nonexistent")."""
    box = tmp_path / "box"
    box.mkdir()
    cluster.start_scheduler()
    cluster.add_agent("rel", slots=2, state_dir="rel-state", cwd=box)
    cluster.wait_agents(["rel"])
    p = Pipeline("relative")
    p.task("make", run='echo hello > "$OUTRIDER_OUTPUTS/out"', outputs=["out"])
    p.task("use", run='cat "$OUTRIDER_INPUTS/x" > "$OUTRIDER_OUTPUTS/copy"', inputs={"x": "make.out"}, outputs=["copy"])
    p.task("exec", run=["sh", "-c", 'test -d "$OUTRIDER_OUTPUTS" && touch "$OUTRIDER_OUTPUTS/flag"'], outputs=["flag"])
    with cluster.client() as client:
        status = client.wait(client.submit(p).run_id, timeout=60)
        summary = {n: (t.state, t.error) for n, t in _tasks(status).items()}  # type: ignore[attr-defined]
        assert status.state == "succeeded", summary
    assert (box / "rel-state" / "work").is_dir()


# --------------------------------------------------------------------------- fault 5


def test_a_second_instance_under_a_live_name_is_refused(cluster: LocalCluster) -> None:
    """Before: the second agent silently replaced the first one's labels, and neither was told.
    Needs the scheduler's side of fault 5 (FAILED_PRECONDITION for another instance)."""
    cluster.start_scheduler()
    cluster.add_agent("dup", labels={"where": "first"}, slots=1)
    cluster.wait_agents(["dup"])
    first_id = (cluster.state_dir("dup") / "instance_id").read_text().strip()
    clone = cluster.add_agent("dup", handle="dup-clone", labels={"where": "clone"}, slots=1)
    wait_for(
        lambda: "another instance is connected under the name" in clone.log_path.read_text(),
        30,
        "the clone to be told it was refused",
    )
    assert clone.alive()  # it keeps trying, with backoff, and takes no work
    with cluster.client() as client:
        (dup,) = [a for a in client.list_agents() if a.name == "dup"]
        assert dup.capabilities.labels["where"] == "first" and dup.instance_id == first_id
    clone.kill()
    # A restart of the same instance (same state dir, same id) takes its name back at once.
    cluster.restart_agent("dup")
    cluster.wait_agents(["dup"])
    with cluster.client() as client:
        (dup,) = [a for a in client.list_agents() if a.name == "dup"]
        assert dup.instance_id == first_id and dup.capabilities.labels["where"] == "first"


# --------------------------------------------------------------------------- fault 7


def test_the_agents_own_failure_releases_the_attempt_and_it_recovers(cluster: LocalCluster) -> None:
    """Before: "agent could not run the stage" failed the task and spent its retries, and the
    broken agent kept taking work. Now the attempt is released (no retry spent), the agent
    reports itself unhealthy and takes no work until its self-check passes."""
    cluster.start_scheduler()
    sick = cluster.add_agent("sick", labels={"pool": "x", "who": "sick"}, slots=1)
    cluster.wait_agents(["sick"])
    work = cluster.state_dir("sick") / "work"
    work.rename(work.with_name("work.broken"))
    work.write_text("not a directory: no work dir can be made here\n")  # as a broken disk would
    p = Pipeline("unlucky")
    p.task("job", run='echo ok > "$OUTRIDER_OUTPUTS/out"', outputs=["out"], requires={"labels": {"pool": "x"}})
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        wait_for(lambda: "agent unhealthy: cannot make a work dir" in sick.log_path.read_text(), 30,
                 "the agent to say it is unhealthy")
        cluster.add_agent("well", labels={"pool": "x", "who": "well"}, slots=1)
        status = client.wait(run_id, timeout=60)
        job = _tasks(status)["job"]
        # No retries were allowed, yet the task succeeded elsewhere: the release was not charged.
        assert status.state == "succeeded", status
        assert job.agent == "well" and job.attempts == 2, job  # type: ignore[attr-defined]
        unhealthy = {a.name: a.unhealthy for a in client.list_agents()}
        assert "cannot make a work dir" in unhealthy.get("sick", "cannot make a work dir")  # where the scheduler shows it

        # Repaired: the self-check passes and the agent takes work again.
        work.unlink()
        work.with_name("work.broken").rename(work)
        wait_for(lambda: "agent healthy again" in sick.log_path.read_text(), 30, "the self-check to pass")
        q = Pipeline("after")
        q.task("there", run="true", requires={"labels": {"who": "sick"}})
        after = client.wait(client.submit(q).run_id, timeout=30)
        assert after.state == "succeeded", after
