"""Fault injection against real processes: timeouts, cancel, scheduler and agent crashes, stale epochs.

Stages record their PIDs (and which attempts ran) in a directory outside the
cluster's work dirs, passed to them in an environment variable, so the tests
can check that killed stages, and every child they started, are really gone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import grpc
import psutil
import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.tls import channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, common_pb2

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------- helpers


def _read_pids(path: Path, count: int) -> list[int] | None:
    """The PIDs recorded in ``path`` once it holds ``count`` of them, else None."""
    try:
        pids = [int(x) for x in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None
    return pids if len(pids) >= count else None


def _procs(pids: Iterable[int]) -> list[psutil.Process]:
    """psutil handles for the PIDs that are still alive (a handle survives PID reuse checks)."""
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _gone(p: psutil.Process) -> bool:
    """Dead, or a zombie nobody reaped yet (PID 1 in a container may not reap orphans)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_all(procs: Iterable[psutil.Process]) -> None:
    for p in procs:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass


def _tasks(status: object) -> dict[str, object]:
    return {t.name: t for t in status.tasks}  # type: ignore[attr-defined]


def _task(client: object, run_id: str, name: str) -> object:
    return _tasks(client.get_run(run_id))[name]  # type: ignore[attr-defined]


def _wait_end(client: object, run_id: str, timeout: float) -> object:
    """The run's final status; fails showing where the run stands if it does not end in time."""
    last: list[object] = []

    def ended() -> bool:
        last[:] = [client.get_run(run_id)]  # type: ignore[attr-defined]
        return last[0].state in ("succeeded", "failed", "cancelled")  # type: ignore[attr-defined]

    try:
        wait_for(ended, timeout, f"run {run_id} to end", interval=0.2)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; it is now:\n{last[0] if last else '?'}") from None
    return last[0]


# --------------------------------------------------------------------------- 1. timeout


@pytest.mark.slow
def test_timeout_kills_stage_and_all_its_children(two_agents: LocalCluster, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    # Two background children, one of which ignores SIGTERM (so only the SIGKILL of the
    # whole process group after the shell exits can end it), plus the shell itself.
    p = Pipeline("timeouts")
    p.task(
        "hang",
        run='f="$PIDS/$OUTRIDER_ATTEMPT.pids"; '
            'sleep 60 & echo $! >> "$f"; '
            '(trap "" TERM; exec sleep 61) & echo $! >> "$f"; '
            'echo $$ >> "$f"; wait',
        timeout="1s", retries={"max": 1, "backoff": "100ms"}, env={"PIDS": str(pids)},
    )
    seen: list[psutil.Process] = []
    try:
        with two_agents.client() as client:
            run_id = client.submit(p).run_id
            first = wait_for(lambda: _read_pids(pids / "1.pids", 3), 30, "attempt 1 to record its PIDs")
            seen += _procs(first)
            second = wait_for(lambda: _read_pids(pids / "2.pids", 3), 30, "attempt 2 to record its PIDs")
            seen += _procs(second)
            status = client.wait(run_id, timeout=60)
            task = _tasks(status)["hang"]
            assert status.state == "failed", status
            assert task.state == "failed"
            assert task.attempts == 2  # retried once, then failed for good
            assert "timed out after 1s" in task.error, task.error
            # Every recorded process, children included, is gone soon after.
            assert len(seen) >= 3
            wait_for(lambda: all(_gone(x) for x in seen), 10, "the timed-out stages and their children to die")
            stderr = [(line.attempt, line.data) for line in client.logs(run_id, "hang") if line.stream == "stderr"]
            for attempt in (1, 2):
                assert any(a == attempt and b"timed out after 1s" in d for a, d in stderr), stderr
            assert not (pids / "3.pids").exists()  # the retry budget was respected
    finally:
        _kill_all(seen)


@pytest.mark.slow
def test_timeout_of_stage_that_ignores_sigterm_fails_the_task(two_agents: LocalCluster, tmp_path: Path) -> None:
    """The stage shrugs off SIGTERM, so the agent needs its kill grace (5 s) and then SIGKILL.

    Meanwhile the attempt is still the task's current one: the scheduler must neither start
    another attempt beside it (invariant 3) nor refuse its timeout report, and with no
    retries the task fails after exactly one attempt.
    """
    pids = tmp_path / "pids"
    pids.mkdir()
    p = Pipeline("stubborn")
    p.task("stubborn", run='trap "" TERM; echo $$ >> "$PIDS/$OUTRIDER_ATTEMPT.pids"; sleep 60',
           timeout="1s", env={"PIDS": str(pids)})
    seen: list[psutil.Process] = []
    try:
        with two_agents.client() as client:
            run_id = client.submit(p).run_id
            seen += _procs(wait_for(lambda: _read_pids(pids / "1.pids", 1), 30, "attempt 1 to start"))
            status = _wait_end(client, run_id, 20)
            task = _tasks(status)["stubborn"]
            assert status.state == "failed", status
            assert task.state == "failed" and task.attempts == 1, task
            assert "timed out after 1s" in task.error, task.error
            assert sorted(x.name for x in pids.iterdir()) == ["1.pids"]  # no second attempt ever started
            wait_for(lambda: all(_gone(x) for x in seen), 10, "the stubborn stage to die")
    finally:
        _kill_all(seen)


# --------------------------------------------------------------------------- 2. cancel


@pytest.mark.slow
def test_cancel_stops_running_stage_and_cancels_downstream(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.add_agent("solo", slots=1)  # one slot: a later run proves the slot was given back
    cluster.wait_agents(["solo"])
    pids = tmp_path / "pids"
    pids.mkdir()
    p = Pipeline("cancel-me")
    p.task("long", run='echo $$ > "$PIDS/long.pid"; exec sleep 60', env={"PIDS": str(pids)})
    p.task("later", run='echo ran > "$PIDS/later.ran"', after=["long"], env={"PIDS": str(pids)})
    seen: list[psutil.Process] = []
    try:
        with cluster.client() as client:
            run_id = client.submit(p).run_id
            (pid,) = wait_for(lambda: _read_pids(pids / "long.pid", 1), 30, "the long stage to start")
            seen += _procs([pid])
            assert seen, "the stage died before it could be cancelled"
            assert _task(client, run_id, "long").state == "running"

            status = client.cancel(run_id)
            assert status.state == "cancelled"
            assert {t.name: t.state for t in status.tasks} == {"long": "cancelled", "later": "cancelled"}
            wait_for(lambda: _gone(seen[0]), 10, "the cancelled stage's process to die")

            # Cancelling again is harmless; the run stays cancelled.
            assert client.cancel(run_id).state == "cancelled"
            # The agent's only slot is free again: another run gets it.
            q = Pipeline("after-cancel")
            q.task("quick", run="echo ok")
            other = client.wait(client.submit(q).run_id, timeout=30)
            assert other.state == "succeeded", other
            # Nothing the agent reported afterwards changed the cancelled run.
            final = client.get_run(run_id)
            assert final.state == "cancelled"
            assert {t.name: t.state for t in final.tasks} == {"long": "cancelled", "later": "cancelled"}
            assert not (pids / "later.ran").exists()
    finally:
        _kill_all(seen)


# --------------------------------------------------------------------------- 3. scheduler crash


def _marked_pipeline(name: str, marks: Path) -> Pipeline:
    """a -> (b, c) -> d, each stage ~1.5 s; each records its attempt number when it starts."""
    env = {"MARKS": str(marks)}
    mark = 'echo "$OUTRIDER_ATTEMPT" >> "$MARKS/$OUTRIDER_TASK"; '
    work = 'sleep 1.5; echo "$OUTRIDER_TASK" > "$OUTRIDER_OUTPUTS/out"; echo "$OUTRIDER_ATTEMPT" >> "$MARKS/$OUTRIDER_TASK.end"'
    p = Pipeline(name)
    p.task("a", run=mark + work, outputs=["out"], env=env)
    for n in ("b", "c"):
        p.task(n, run=mark + work, inputs={"up": "a.out"}, outputs=["out"], env=env)
    p.task("d", run=mark + 'cat "$OUTRIDER_INPUTS/b" "$OUTRIDER_INPUTS/c" > "$OUTRIDER_OUTPUTS/out"',
           inputs={"b": "b.out", "c": "c.out"}, outputs=["out"], env=env)
    return p


def _attempt_marks(marks: Path, task: str) -> list[int]:
    try:
        return [int(x) for x in (marks / task).read_text().split()]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_scheduler_sigkill_and_restart_mid_run(two_agents: LocalCluster, tmp_path: Path) -> None:
    cluster = two_agents
    marks, marks2 = tmp_path / "marks", tmp_path / "marks2"
    marks.mkdir()
    marks2.mkdir()
    with cluster.client() as client:
        run_id = client.submit(_marked_pipeline("crash", marks)).run_id
        # b and c started: a's success was committed before they were dispatched.
        wait_for(lambda: _attempt_marks(marks, "b") and _attempt_marks(marks, "c"), 30, "b and c to start")
        before = client.get_run(run_id)
        a_before = _tasks(before)["a"]
        assert a_before.state == "succeeded" and a_before.attempts == 1
        a_digest = {o.name: o.digest for o in a_before.outputs}["out"]
        # A submission acknowledged just before the crash (invariant 1).
        late = Pipeline("late")
        late.task("one", run='echo "$OUTRIDER_ATTEMPT" >> "$MARKS/$OUTRIDER_TASK"', env={"MARKS": str(marks2)})
        late_id = client.submit(late).run_id

    address = cluster.address
    assert cluster.scheduler is not None
    cluster.scheduler.kill()  # SIGKILL: no shutdown, no flush beyond what was committed
    assert not cluster.scheduler.alive()
    # b and c finish their work while the scheduler is down (well within the 3 s lease):
    # their results must wait in the agents' outboxes and be delivered after the restart.
    wait_for(lambda: (marks / "b.end").exists() and (marks / "c.end").exists(), 10,
             "b and c to finish while the scheduler is down")
    assert cluster.start_scheduler() == address  # same port: agents find it again by themselves
    cluster.wait_agents(["a", "b"], timeout=45)

    with cluster.client() as client:
        assert {r.run_id for r in client.list_runs()} >= {run_id, late_id}
        status = client.wait(run_id, timeout=60)
        tasks = _tasks(status)
        summary = {n: f"{t.state} after {t.attempts} attempt(s): {t.error}" for n, t in tasks.items()}
        assert status.state == "succeeded", summary
        assert {n: t.state for n, t in tasks.items()} == dict.fromkeys("abcd", "succeeded"), summary
        # a's completion was acknowledged before the crash: it never ran again.
        assert tasks["a"].attempts == 1
        assert _attempt_marks(marks, "a") == [1]
        assert {o.name: o.digest for o in tasks["a"].outputs}["out"] == a_digest
        for name, t in tasks.items():
            ran = _attempt_marks(marks, name)
            # Each attempt ran at most once, only granted attempts ran, and the last one ran.
            assert len(ran) == len(set(ran)), (name, ran)
            assert 1 <= t.attempts <= 3, (name, t.attempts)
            assert set(ran) <= set(range(1, t.attempts + 1)), (name, ran, t.attempts)
            assert t.attempts in ran, (name, ran, t.attempts)
        dest = client.download({o.name: o.digest for o in tasks["d"].outputs}["out"], tmp_path / "d.out")
        assert dest.read_text() == "b\nc\n"

        late_status = client.wait(late_id, timeout=30)
        assert late_status.state == "succeeded", late_status
        ran = _attempt_marks(marks2, "one")
        assert len(ran) == len(set(ran)) and _tasks(late_status)["one"].attempts in ran, ran


# --------------------------------------------------------------------------- 4. agent crash


@pytest.mark.slow
def test_agent_sigkill_mid_task_reruns_on_other_agent(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.add_agent("x1", labels={"pool": "x"}, slots=1)
    cluster.add_agent("x2", labels={"pool": "x"}, slots=1)
    cluster.wait_agents(["x1", "x2"])
    pids = tmp_path / "pids"
    pids.mkdir()
    p = Pipeline("agent-crash")
    p.task("work", run='echo $$ > "$PIDS/work.$OUTRIDER_ATTEMPT"; exec sleep 3',
           requires={"labels": {"pool": "x"}}, env={"PIDS": str(pids)})
    seen: list[psutil.Process] = []
    try:
        with cluster.client() as client:
            run_id = client.submit(p).run_id
            first = wait_for(lambda: _read_pids(pids / "work.1", 1), 30, "attempt 1 to start")
            seen += _procs(first)
            task = _task(client, run_id, "work")
            assert task.state == "running" and task.attempts == 1
            victim = task.agent
            survivor = ({"x1", "x2"} - {victim}).pop()

            cluster.agents[victim].kill()  # SIGKILL: the agent cannot stop its stage
            _kill_all(seen)  # ... so we end the orphaned stage, as a reboot would
            wait_for(lambda: all(_gone(x) for x in seen), 10, "the orphaned stage to die")

            status = client.wait(run_id, timeout=45)
            task = _tasks(status)["work"]
            assert status.state == "succeeded", status
            assert task.attempts == 2  # the lost lease expired; the rerun is a new epoch
            assert task.agent == survivor
            assert _read_pids(pids / "work.2", 1)
            agents = {a.name: a.state for a in client.list_agents()}
            assert agents[victim] == "disconnected" and agents[survivor] == "ready"
    finally:
        _kill_all(seen)


# --------------------------------------------------------------------------- 5. stale epochs


def _complete(stub: agent_pb2_grpc.AgentServiceStub, run_id: str, task: str, epoch: int,
              outcome: str = "succeeded") -> grpc.StatusCode:
    """Send a completion; return the status code it got (OK when accepted)."""
    req = agent_pb2.CompleteRequest(completion=agent_pb2.Completion(
        lease=common_pb2.LeaseRef(run_id=run_id, task=task, epoch=epoch), outcome=outcome,
        exit_code=0 if outcome == "succeeded" else 1, error="" if outcome == "succeeded" else "forged"))
    try:
        stub.Complete(req, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_stale_epoch_and_foreign_agent_completions_are_aborted(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.add_agent("solo", slots=2)
    cluster.wait_agents(["solo"])
    ca, cert, key = cluster.issue("agent", "solo")  # the lease holder's own identity
    ica, icert, ikey = cluster.issue("agent", "intruder")  # a valid agent that holds no lease
    holder_ch = grpc.secure_channel(cluster.address, channel_credentials(ca, cert, key))
    intruder_ch = grpc.secure_channel(cluster.address, channel_credentials(ica, icert, ikey))
    holder = agent_pb2_grpc.AgentServiceStub(holder_ch)
    intruder = agent_pb2_grpc.AgentServiceStub(intruder_ch)
    ABORTED = grpc.StatusCode.ABORTED
    try:
        with cluster.client() as client:
            # A finished task: no completion may change it.
            p = Pipeline("finished")
            p.task("done", run="echo hi")
            done_id = client.submit(p).run_id
            assert client.wait(done_id, timeout=30).state == "succeeded"
            before = client.get_run(done_id)
            assert _complete(holder, done_id, "done", 99) == ABORTED
            assert _complete(holder, done_id, "done", 0) == ABORTED
            assert _complete(holder, done_id, "done", 1, "failed") == ABORTED
            assert _complete(intruder, done_id, "done", 1) == ABORTED
            assert _complete(intruder, done_id, "done", 1, "failed") == ABORTED
            assert _complete(holder, done_id, "nope", 1) == grpc.StatusCode.NOT_FOUND
            assert client.get_run(done_id) == before

            # A task retried to attempt 2, which is running now.
            q = Pipeline("retried")
            q.task("flaky", run='test "$OUTRIDER_ATTEMPT" -ge 2 || exit 3; exec sleep 30',
                   retries={"max": 1, "backoff": "100ms"})
            run_id = client.submit(q).run_id
            wait_for(lambda: (lambda t: t.state == "running" and t.attempts == 2)(_task(client, run_id, "flaky")),
                     30, "attempt 2 to be running")
            before = client.get_run(run_id)
            assert _complete(holder, run_id, "flaky", 1) == ABORTED           # the old epoch
            assert _complete(holder, run_id, "flaky", 1, "failed") == ABORTED  # a late re-delivery of it
            assert _complete(holder, run_id, "flaky", 3) == ABORTED           # a future epoch
            assert _complete(intruder, run_id, "flaky", 2) == ABORTED         # right epoch, wrong agent
            assert _complete(intruder, run_id, "flaky", 2, "failed") == ABORTED
            assert _complete(intruder, run_id, "flaky", 2, "bogus") == grpc.StatusCode.INVALID_ARGUMENT
            after = client.get_run(run_id)
            assert after == before
            t = _tasks(after)["flaky"]
            assert t.state == "running" and t.attempts == 2 and t.agent == "solo"
            assert client.cancel(run_id).state == "cancelled"
    finally:
        holder_ch.close()
        intruder_ch.close()
