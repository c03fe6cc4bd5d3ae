"""Issue 9: an agent with ``executor = "slurm"`` runs its stages as jobs of a real Slurm
(Debian's slurm-wlm and munge on loopback, :mod:`tests.helpers.slurmcluster`), with a real
scheduler: the output comes back, the logs stream while the job runs, a timeout, a cancel and
a failing job each end as they should, and the agent advertises the partition's capacity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outrider.localcluster import LocalCluster, wait_for
from tests.helpers.cli import run_cli
from tests.helpers.slurmcluster import NODE, NODE_MEMORY_MB, PARTITION, SlurmCluster, slurm_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEASE_TTL = "10s"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    why = slurm_available()
    if why:
        pytest.skip(why)
    s = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def hpc(cluster: LocalCluster, slurm: SlurmCluster, tmp_path: Path) -> LocalCluster:
    """The scheduler and one agent, ``login``, on the Slurm executor."""
    shared = tmp_path / "shared"
    shared.mkdir()
    cluster.start_scheduler()
    cluster.add_agent(
        "login",
        slots=2,
        extra_args=["--executor", "slurm", "--slurm-partition", PARTITION, "--slurm-work-dir", str(shared)],
        env={"SLURM_CONF": str(slurm.conf)},
    )
    cluster.wait_agents(["login"])
    return cluster


def _cli(cluster: LocalCluster, *args: str, role: str = "submitter") -> str:
    res = run_cli(cluster.client_env("submitter" if role == "submitter" else "root", role), *args)
    assert res.returncode == 0, f"outrider {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _submit(cluster: LocalCluster, tmp_path: Path, name: str, body: str) -> str:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\ntasks:\n{body}")
    run_id = _cli(cluster, "submit", str(spec)).split()[0]
    assert run_id.startswith("run-"), run_id
    return run_id


def _status(cluster: LocalCluster, run_id: str) -> dict[str, Any]:
    return dict(json.loads(_cli(cluster, "status", run_id, "--json")))


def _ended(cluster: LocalCluster, run_id: str, timeout: float = 120) -> dict[str, Any]:
    done = ("succeeded", "failed", "cancelled")
    return dict(wait_for(lambda: (s := _status(cluster, run_id))["state"] in done and s, timeout, f"{run_id} to end"))


def _recorded_job(state_dir: Path) -> int:
    """The Slurm job id in the agent's lease record (0 while none is written down)."""
    from agent.journal import Journal

    journal = Journal(state_dir / "journal")
    try:
        records = journal.load()[0] if journal.exists() else {}
    finally:
        journal.close()
    return max((r.pid for r in records.values()), default=0)


def _job_state(slurm: SlurmCluster, run_id: str, task: str) -> str:
    return slurm.jobs().get(f"outrider:{run_id}:{task}:1", "")


def test_a_stage_runs_as_a_slurm_job(hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path) -> None:
    go = tmp_path / "go"
    run_id = _submit(
        hpc,
        tmp_path,
        "hpc",
        "  make:\n"
        "    run: |\n"
        '      echo "on $SLURM_JOB_PARTITION as job $SLURM_JOB_ID with $SLURM_CPUS_PER_TASK cpu(s)"\n'
        f"      while [ ! -e {go} ]; do sleep 0.1; done\n"
        '      echo "$GREETING from slurm" > "$OUTRIDER_OUTPUTS/out"\n'
        # A stage's own figures, written on the compute node into the shared work dir (outrider.metrics).
        "      echo '{\"name\": \"nodes\", \"value\": 1, \"step\": 7}' >> \"$OUTRIDER_METRICS_FILE\"\n"
        "    outputs: [out]\n"
        "    env: {GREETING: hello}\n"
        "    requires: {cpus: 1, memory: 64MiB}\n",
    )
    # The job is in Slurm while it runs, and its output reaches `outrider logs` before it ends.
    wait_for(lambda: _job_state(slurm, run_id, "make") == "RUNNING", 60, "the job to run in Slurm", interval=0.2)
    logs = wait_for(
        lambda: "as job" in (t := _cli(hpc, "logs", run_id, "make")) and t, 30, "the job's output", interval=0.2
    )
    assert f"on {PARTITION} as job" in logs and "with 1 cpu(s)" in logs, logs
    go.touch()
    status = _ended(hpc, run_id)
    assert status["state"] == "succeeded", status
    out = tmp_path / "out"
    _cli(hpc, "artifact", "get", status["tasks"]["make"]["outputs"]["out"], "-o", str(out))
    assert out.read_text() == "hello from slurm\n"
    assert _job_state(slurm, run_id, "make") == "COMPLETED"
    recorded = status["tasks"]["make"]["metrics"]["nodes"]
    assert (recorded["value"], recorded["step"], recorded["attempt"]) == (1, 7, 1), status["tasks"]["make"]


def test_a_failing_job_reports_its_exit_code(hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path) -> None:
    run_id = _submit(hpc, tmp_path, "failing", "  bad:\n    run: 'echo failing >&2; exit 3'\n")
    status = _ended(hpc, run_id)
    task = status["tasks"]["bad"]
    assert status["state"] == "failed" and task["state"] == "failed", status
    assert "exit code 3" in task["error"] and "FAILED" in task["error"], task
    assert _job_state(slurm, run_id, "bad") == "FAILED"


def test_a_job_past_its_timeout_is_cancelled_and_times_out(
    hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path
) -> None:
    run_id = _submit(hpc, tmp_path, "slow", "  slow:\n    run: 'sleep 120'\n    timeout: 3s\n")
    status = _ended(hpc, run_id)
    task = status["tasks"]["slow"]
    assert status["state"] == "failed" and task["state"] == "failed", task  # (as any timed-out task's)
    assert "timed out after 3s" in task["error"] and "Slurm job" in task["error"], task
    state = _job_state(slurm, run_id, "slow")
    assert state in ("CANCELLED", "TIMEOUT"), state  # not running any more


def test_cancel_scancels_the_job(hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path) -> None:
    # It ignores the SIGTERM the agent sends first (scancel --signal=TERM): after the kill
    # grace, a plain scancel ends it, and Slurm says CANCELLED.
    run_id = _submit(hpc, tmp_path, "long", "  long:\n    run: 'trap \"\" TERM; while true; do sleep 0.2; done'\n")
    wait_for(lambda: _job_state(slurm, run_id, "long") == "RUNNING", 60, "the job to run in Slurm", interval=0.2)
    _cli(hpc, "cancel", run_id)
    wait_for(
        lambda: _job_state(slurm, run_id, "long") not in ("RUNNING", "PENDING", "COMPLETING"),
        60,
        "the job to leave Slurm's queue",
        interval=0.2,
    )
    assert _job_state(slurm, run_id, "long") == "CANCELLED"
    assert _ended(hpc, run_id)["state"] == "cancelled"


def test_the_agent_advertises_the_partition(hpc: LocalCluster, slurm: SlurmCluster) -> None:
    agents = json.loads(_cli(hpc, "agents", "--json"))
    (login,) = [a for a in agents if a["name"] == "login"]
    caps = login["capabilities"]
    assert caps["memory_bytes"] == NODE_MEMORY_MB << 20, caps  # the node's RealMemory, not this machine's
    assert caps["cpu_cores"] == slurm.cpus, caps
    assert caps["slots"] == 2, caps  # --slots caps what the partition could run


def test_a_job_runs_on_through_an_agent_crash_and_is_taken_over(
    hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    run_id = _submit(
        hpc,
        tmp_path,
        "survivor",
        f"  job:\n    run: 'while [ ! -e {go} ]; do sleep 0.1; done; echo done > $OUTRIDER_OUTPUTS/out'\n"
        "    outputs: [out]\n",
    )
    wait_for(lambda: _job_state(slurm, run_id, "job") == "RUNNING", 60, "the job to run in Slurm", interval=0.2)
    wait_for(lambda: _recorded_job(hpc.state_dir("login")), 30, "the lease record with the job id", interval=0.1)
    hpc.restart_agent("login")  # SIGKILL, as a crash: the job runs on in Slurm
    hpc.wait_agents(["login"])
    assert _job_state(slurm, run_id, "job") == "RUNNING"
    go.touch()
    status = _ended(hpc, run_id)
    assert status["state"] == "succeeded", status
    assert status["tasks"]["job"]["attempts"] == 1  # taken over, not run again
    assert "re-attached to Slurm job" in hpc.agents["login"].tail(200)


def test_jobs_pending_in_slurm_are_advertised(hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path) -> None:
    blocker = slurm.command(
        "sbatch",
        "--parsable",
        f"--cpus-per-task={slurm.cpus}",
        "--job-name=blocker",
        f"--chdir={tmp_path}",
        "--wrap",
        "sleep 300",
    ).strip()
    try:
        wait_for(lambda: slurm.jobs().get("blocker") == "RUNNING", 60, "the blocker to run", interval=0.2)
        run_id = _submit(hpc, tmp_path, "queued", "  wait:\n    run: 'true'\n")
        wait_for(lambda: _job_state(slurm, run_id, "wait") == "PENDING", 60, "the job to queue", interval=0.2)

        def queued() -> int:
            (login,) = [a for a in json.loads(_cli(hpc, "agents", "--json")) if a["name"] == "login"]
            return int(login["capabilities"]["queued_jobs"])

        wait_for(lambda: queued() == 1, 30, "the agent to advertise its queued job", interval=0.2)
        assert "+1 queued" in _cli(hpc, "agents")
    finally:
        slurm.command("scancel", blocker)
    assert _ended(hpc, run_id)["state"] == "succeeded"
    wait_for(lambda: queued() == 0, 30, "the queued count to drop", interval=0.2)


def test_a_node_failure_releases_the_attempt_and_it_resumes_from_its_checkpoint(
    hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path
) -> None:
    from tests.helpers.step_stage import recorded, steps_pipeline

    marks = tmp_path / "marks"
    marks.mkdir()
    with hpc.client() as client:
        run_id = client.submit(steps_pipeline(marks, steps=8, step_s=0.5)).run_id
    wait_for(lambda: len(recorded(marks)) >= 3, 60, "attempt 1 to do three steps", interval=0.1)
    wait_for(lambda: _status(hpc, run_id)["tasks"]["work"]["checkpoint"], 30, "a checkpoint", interval=0.2)
    try:
        slurm.command("scontrol", "update", f"nodename={NODE}", "state=down", "reason=outrider-test")
        wait_for(lambda: _job_state(slurm, run_id, "work") == "NODE_FAIL", 60, "the job to fail with its node")
        wait_for(lambda: slurm.jobs().get(f"outrider:{run_id}:work:2") == "PENDING", 60, "attempt 2 to wait for a node")
    finally:  # (ReturnToService=2 may have brought it back already: then there is nothing to resume)
        slurm.command("scontrol", "update", f"nodename={NODE}", "state=resume", check=False)
        slurm.wait_up()
    status = _ended(hpc, run_id)
    assert status["state"] == "succeeded", status
    steps = recorded(marks)
    first = [s for a, s in steps if a == 1]
    second = [s for a, s in steps if a == 2]
    assert second and second[0] > 1, steps  # resumed from a checkpoint, not from the start
    assert second[-1] == 8 and second[0] <= max(first) + 1, steps
    task = status["tasks"]["work"]
    assert task["attempts"] == 2 and task["resumed_from"], task
    (lost,) = [a for a in task["history"] if a["attempt"] == 1]
    assert "NODE_FAIL" in lost["error"] and "newest checkpoint" in lost["error"], lost


def test_a_drain_signals_the_job_which_checkpoints_and_resumes_on_another_agent(
    hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path
) -> None:
    """``outrider drain``: the job gets SIGTERM (scancel --signal=TERM --full), its stage
    finishes its step, checkpoints and exits; the attempt is released and resumes, from that
    checkpoint, as a job of another Slurm agent."""
    from tests.helpers.step_stage import recorded, redone, steps_pipeline

    marks = tmp_path / "marks"
    marks.mkdir()
    with hpc.client() as client, hpc.client("ops", role="admin") as admin:
        run_id = client.submit(steps_pipeline(marks, steps=30, step_s=0.3)).run_id
        wait_for(lambda: len(recorded(marks)) >= 3, 60, "three steps", interval=0.1)
        admin.drain("login")
        shared2 = tmp_path / "shared2"
        shared2.mkdir()
        hpc.add_agent(
            "login2",
            slots=1,
            extra_args=["--executor", "slurm", "--slurm-partition", PARTITION, "--slurm-work-dir", str(shared2)],
            env={"SLURM_CONF": str(slurm.conf)},
        )
        status = client.wait(run_id, timeout=120)
    assert status.state == "succeeded", status
    task = _status(hpc, run_id)["tasks"]["work"]
    assert task["agent"] == "login2" and task["attempts"] == 2, task
    steps = recorded(marks)
    last_first = max(s for a, s in steps if a == 1)
    assert next(s for a, s in steps if a == 2) == last_first + 1, steps  # nothing redone, nothing skipped
    assert redone(marks) == 0


def test_a_lapsed_lease_scancels_the_job(hpc: LocalCluster, slurm: SlurmCluster, tmp_path: Path) -> None:
    """The scheduler goes away: past the lease TTL the agent's watchdog stops the stage,
    which for a Slurm job is scancel (another attempt may run elsewhere by now)."""
    run_id = _submit(hpc, tmp_path, "orphan", "  held:\n    run: 'sleep 300'\n")
    wait_for(lambda: _job_state(slurm, run_id, "held") == "RUNNING", 60, "the job to run in Slurm", interval=0.2)
    assert hpc.scheduler is not None
    hpc.scheduler.kill()
    wait_for(lambda: _job_state(slurm, run_id, "held") == "CANCELLED", 60, "the job to be cancelled", interval=0.2)
    assert "not renewed for" in hpc.agents["login"].tail(200)  # (the watchdog, not the job, ended it)
