"""High availability end to end (docs/ha.md): three scheduler replicas on one real PostgreSQL,
one shared artifact and log directory, two agents and a client given the list of addresses.

The leader is SIGKILLed mid-run, the next one SIGSTOPped (a paused leader: once another took
over it is continued, and its first write fails the fencing check or its lock session is
found gone: it exits 75 having committed nothing), then the third SIGKILLed; each time the
replica is started again, as systemd would, and comes back as a standby. Then: every run
completes, every submitted run is there with all its tasks and their outputs (in the database
and in the shared artifact store), no task ran twice at once (each stage records its start
and end, with its pid, in a shared file), and the epoch grew by one per leader.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from outrider.client import Client
from outrider.errors import OutriderError
from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline
from outrider.protocol import LEADER_METADATA_KEY
from outrider.v1 import control_pb2
from scheduler.store.base import EXIT_DEPOSED
from tests.helpers.backends import PostgresBackend
from tests.helpers.ha import Replicas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LEASE_TTL = "4s"
WIDTH = 4  # parallel tasks per run, then a join over their outputs


def pipeline(name: str, journal: Path) -> Pipeline:
    stamp = f'echo "%s $OUTRIDER_RUN_ID $OUTRIDER_TASK $OUTRIDER_ATTEMPT $$ $(date +%%s.%%N)" >> {journal}'
    p = Pipeline(name)
    for i in range(WIDTH):
        p.task(
            f"t{i}",
            run=f"{stamp % 'start'}; sleep 1.5; echo {name}-{i} > $OUTRIDER_OUTPUTS/out; {stamp % 'end'}",
            outputs=["out"],
        )
    p.task(
        "join",
        run=f"{stamp % 'start'}; cat $OUTRIDER_INPUTS/* > $OUTRIDER_OUTPUTS/out; {stamp % 'end'}",
        inputs={f"i{i}": f"t{i}.out" for i in range(WIDTH)},
        outputs=["out"],
    )
    return p


def intervals(journal: Path) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    """(run, task) -> [(start, end, pid)] from the stages' shared journal."""
    starts: dict[tuple[str, str, str, str], float] = {}
    out: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for line in journal.read_text().splitlines():
        what, run, task, attempt, pid, ts = line.split()
        key = (run, task, attempt, pid)
        if what == "start":
            starts[key] = float(ts)
        else:
            out.setdefault((run, task), []).append((starts.pop(key), float(ts), pid))
    for (run, task, _, pid), t0 in starts.items():  # started, never ended (killed): open-ended
        out.setdefault((run, task), []).append((t0, float("inf"), pid))
    return out


def wait_started(journal: Path, run_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (journal.exists() and f"start {run_id} " in journal.read_text()):
        assert time.monotonic() < deadline, f"no task of {run_id} started"
        time.sleep(0.05)


def test_failovers_lose_nothing_run_nothing_twice_and_fence_the_deposed(
    cluster: LocalCluster, pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # one directory for every replica (NFS in production)
    journal = tmp_path / "stages.log"
    reps = Replicas(cluster, pg_backend.server, pg_backend.dbname, shared, count=3)
    try:
        for i in range(3):
            reps.start(i)
        leader = reps.leader()
        standby = next(i for i in range(3) if i != leader)
        # A standby: health SERVING overall, the services NOT_SERVING, every call refused naming the leader.
        deadline = time.monotonic() + 30
        while reps.status(standby, "") is None:  # still starting
            assert time.monotonic() < deadline, reps.daemons[standby].tail()
            time.sleep(0.05)
        assert reps.status(standby, "") == health_pb2.HealthCheckResponse.SERVING
        assert reps.status(standby, "outrider.v1.AgentService") == health_pb2.HealthCheckResponse.NOT_SERVING
        where = f"127.0.0.1:{reps.ports[leader]}"
        deadline = time.monotonic() + 10  # the standby reads who leads every 0.5 s
        with Client(f"127.0.0.1:{reps.ports[standby]}", reps.ca, reps.cert, reps.key) as direct:
            while True:
                with pytest.raises(grpc.RpcError) as refused:
                    direct.control.ListAgents(control_pb2.ListAgentsRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                if where in (refused.value.details() or "") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert refused.value.details() == f"not the leader; the leader is {where}"
        assert (LEADER_METADATA_KEY, where) in tuple(refused.value.trailing_metadata())
        # Each replica's HTTP server: the leader's /metrics says it leads, a standby's that it does not
        # (and that it sees a leader); a standby's dashboard names the leader instead of a page.
        assert "outrider_leader 1.0" in reps.http(leader, "/metrics")[1]
        standby_metrics = reps.http(standby, "/metrics")[1]
        assert "outrider_leader 0.0" in standby_metrics and "outrider_standby_without_leader 0.0" in standby_metrics
        status, page = reps.http(standby, "/")
        assert status == 503 and where in page, (status, page)
        cluster.address = reps.addresses  # the agents and the client get the whole list
        cluster.add_agent("a", slots=2)
        cluster.add_agent("b", slots=2)
        cluster.wait_agents(["a", "b"])
        runs: list[str] = []
        timings: list[tuple[str, float]] = []
        watched: list[control_pb2.RunEvent] = []
        watcher: threading.Thread | None = None
        with cluster.client() as client, cluster.client() as watching:
            for round_, how in enumerate(("SIGKILL", "SIGSTOP", "SIGKILL")):
                runs.append(client.submit(pipeline(f"r{round_}", journal)).run_id)
                if round_ == 0:  # a submit whose answer the client "lost" just before the leader died
                    lost = control_pb2.SubmitRequest(
                        pipeline=client._spec(pipeline("lost-answer", journal)), request_id="lost-answer-1"
                    )
                    runs.append(client._call(client.control.Submit, lost).run_id)
                if watcher is None:  # a watch of the first run, across the failovers
                    watcher = threading.Thread(target=lambda r=runs[0]: watched.extend(watching.follow(r)))
                    watcher.start()
                wait_started(journal, runs[-1])
                old = reps.daemons[leader]
                t0 = time.monotonic()
                if how == "SIGKILL":
                    old.kill()
                    leader = reps.leader(exclude=(leader,))
                    timings.append((how, time.monotonic() - t0))
                else:
                    os.kill(old.pid, signal.SIGSTOP)
                    deposed = leader
                    leader = reps.leader(timeout=40, exclude=(deposed,))
                    timings.append((how, time.monotonic() - t0))
                    os.kill(old.pid, signal.SIGCONT)
                    assert old.wait(20) == EXIT_DEPOSED, old.tail()
                    runs.append(client.submit(pipeline(f"r{round_}b", journal)).run_id)  # on the new leader
                    assert "no longer the leader" in old.tail(), old.tail()
                    assert reps.leader() == leader  # the deposed one never served again
                if round_ == 0:  # its retry on the new leader answers with the run the first try made
                    assert client._call(client.control.Submit, lost).run_id == runs[1]
                reps.start(next(i for i, d in reps.daemons.items() if d is old))  # back, as a standby
            runs.append(client.submit(pipeline("last", journal)).run_id)
            deadline = time.monotonic() + 120
            for run_id in runs:
                while (status := client.get_run(run_id)).state not in ("succeeded", "failed", "cancelled"):
                    assert time.monotonic() < deadline, f"{run_id} did not end: {status}"
                    time.sleep(0.1)
                assert status.state == "succeeded", status
                assert {t.name: t.state for t in status.tasks} == {
                    **{f"t{i}": "succeeded" for i in range(WIDTH)},
                    "join": "succeeded",
                }
            print("failover (kill/stop -> a new leader serving):", [(h, round(s, 2)) for h, s in timings])
            assert watcher is not None
            watcher.join(60)
            assert not watcher.is_alive(), "the watch did not end with its run"
        # The watch resumed where it was each time: its events in seq order, none twice, ending
        # with the run's success.
        seqs = [ev.seq for ev in watched if ev.seq]
        assert seqs == sorted(set(seqs)) and seqs, seqs
        assert [ev.state for ev in watched if not ev.task][-1] == "succeeded"
        # Nothing acknowledged is lost: every run with all its tasks and their outputs, whose
        # bytes are in the shared artifact store.
        for run_id in runs:
            outs = pg_backend.read("SELECT task, digest FROM outputs WHERE run_id=?", (run_id,))
            assert {t for t, _ in outs} == {*(f"t{i}" for i in range(WIDTH)), "join"}, run_id
            for _, digest in outs:
                assert (shared / "artifacts" / "sha256" / digest[:2] / digest).is_file()
        # No task ran twice at once.
        for (run, task), spans in intervals(journal).items():
            spans.sort()
            for (_s0, e0, p0), (s1, _, p1) in itertools.pairwise(spans):
                assert s1 >= e0, f"{run}/{task} ran twice at once: pid {p0} until {e0}, pid {p1} from {s1}"
        # One epoch per leader: the first, and one for each takeover.
        assert pg_backend.read("SELECT epoch FROM leader") == [(4,)]
    finally:
        for d in cluster.agents.values():
            d.stop()
        reps.stop()


def test_a_leader_whose_epoch_moved_commits_nothing_and_exits_75(
    cluster: LocalCluster, pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    """The fencing check end to end: the leader row's epoch moves on (as when another replica
    took over while this one was cut off, its lock session still open); the leader's next write,
    a submission, is refused whole by its fencing check: the client gets no acknowledgement, the
    run is not in the database, and the process exits 75 saying why."""
    reps = Replicas(cluster, pg_backend.server, pg_backend.dbname, tmp_path / "shared", count=1)
    try:
        reps.start(0)
        assert reps.leader() == 0
        cluster.address = reps.addresses
        with cluster.client() as client:
            first = client.submit(pipeline("before", tmp_path / "j.log")).run_id
            pg_backend.execute("UPDATE leader SET epoch = epoch + 1")  # another leader's claim
            with pytest.raises(OutriderError):
                client.submit(pipeline("after", tmp_path / "j.log"))
        old = reps.daemons[0]
        assert old.wait(20) == EXIT_DEPOSED, old.tail()
        assert "fenced: the leader epoch is 2, this scheduler led at epoch 1" in old.tail(), old.tail()
        assert pg_backend.read("SELECT pipeline FROM runs") == [("before",)]
        assert pg_backend.read("SELECT count(*) FROM runs WHERE run_id=?", (first,)) == [(1,)]
    finally:
        reps.stop()


def test_sigterm_stops_a_standby_and_hands_the_lead_over(
    cluster: LocalCluster, pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    """A standby stops cleanly on SIGTERM; a leader stopped so (systemctl stop or restart)
    finishes its commits and releases the lock, and the other replica leads."""
    reps = Replicas(cluster, pg_backend.server, pg_backend.dbname, tmp_path / "shared", count=2)
    try:
        reps.start(0)
        reps.start(1)
        leader = reps.leader()
        standby = 1 - leader
        deadline = time.monotonic() + 30
        while reps.status(standby, "") is None:
            assert time.monotonic() < deadline, reps.daemons[standby].tail()
            time.sleep(0.05)
        assert reps.daemons[leader].stop() == 0
        assert reps.leader(exclude=(leader,)) == standby
        reps.start(leader)  # back, as a standby now
        while reps.status(leader, "") is None:
            assert time.monotonic() < deadline, reps.daemons[leader].tail()
            time.sleep(0.05)
        assert reps.daemons[leader].stop() == 0
        assert "stopping (a standby)" in reps.daemons[leader].tail()
        assert pg_backend.read("SELECT epoch FROM leader") == [(2,)]
    finally:
        reps.stop()
