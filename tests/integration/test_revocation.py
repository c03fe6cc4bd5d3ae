"""Revoking an agent (issue 8): ``outrider revoke agent NAME`` against a real scheduler and agents.

Agent ``a`` runs a stage that writes its pid and blocks; ``b`` stands by. An admin revokes ``a``
with the CLI: its stage process is gone, the task runs again on ``b`` (attempt 2) and the run
succeeds with no retry spent (attempt 1 is ``lost``, not ``failed``), ``a`` exits with
``EXIT_REVOKED`` saying why and what to do, and ``outrider agents`` shows it revoked. A
submitter's revoke is PERMISSION_DENIED and changes nothing. After a scheduler restart on the
same state dir, ``a``'s certificate is still refused (and ``a`` started again exits at once);
the audit log has the ``revoke`` records and ``outrider audit verify`` passes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.daemon import EXIT_REVOKED
from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.protocol import REVOKED_METADATA_KEY
from outrider.tls import channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc
from tests.helpers.cli import run_cli
from tests.helpers.step_stage import alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LEASE_TTL = "4s"  # (the cluster fixture, tests/integration/conftest.py)


def _cli(cluster: LocalCluster, name: str, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.client_env(name, role), *args)


def _json(res: subprocess.CompletedProcess[str]) -> Any:
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


def _agents(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in _json(_cli(cluster, "root", "admin", "agents", "--json"))}


def _blocking_stage(marks: Path) -> Pipeline:
    """The first attempt writes its pid and blocks (until killed); a later one succeeds at once."""
    p = Pipeline("revocation")
    p.task("work", run=f'if [ -e "{marks}/pid" ]; then echo again; exit 0; fi; echo $$ > "{marks}/pid"; '
                       "while :; do sleep 0.1; done")
    return p


def _agent_call_refused(cluster: LocalCluster, name: str) -> grpc.RpcError:
    """What a call with agent ``name``'s own certificate gets now."""
    ca, cert, key = cluster.issue("agent", name)
    creds = channel_credentials(ca, cert, key)
    with grpc.secure_channel(cluster.address, creds) as ch, pytest.raises(grpc.RpcError) as info:
        agent_pb2_grpc.AgentServiceStub(ch).Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
    return info.value


def test_revoking_an_agent_stops_it_moves_its_work_and_survives_a_restart(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_scheduler()
    a = cluster.add_agent("a", slots=1)
    cluster.wait_agents(["a"])
    with cluster.client() as client:
        run_id = client.submit(_blocking_stage(marks)).run_id
        pid = int(wait_for(lambda: (marks / "pid").exists() and (marks / "pid").read_text().strip(), 30,
                           "the stage on a to start"))
        assert alive(pid)
        b = cluster.add_agent("b", slots=1)
        cluster.wait_agents(["b"])

        # A submitter may not revoke: refused, and nothing changes.
        res = _cli(cluster, "alice", "submitter", "revoke", "agent", "a", "--reason", "not mine to do")
        assert res.returncode != 0 and "may not call" in res.stderr and "RevokeAgent" in res.stderr, res
        assert alive(pid) and a.alive()
        assert not _agents(cluster)["a"]["revoked"]

        # The admin revokes a.
        out = _json(_cli(cluster, "root", "admin", "revoke", "agent", "a", "--reason", "laptop stolen", "--json"))
        assert out["agent"] == "a" and not out["already_revoked"] and out["known"], out
        assert out["leases_requeued"] == 1 and out["reason"] == "laptop stolen", out
        assert out["revoked_by"].endswith("/admin/root") and out["revoked_at_utc"].endswith("Z"), out

        # Its stage is stopped, it exits with the distinct code, saying so; the work moves to b.
        wait_for(lambda: not alive(pid), 30, "a's stage process to be gone")
        assert a.wait(30) == EXIT_REVOKED
        log = a.log_path.read_text()
        assert "THIS AGENT WAS REVOKED" in log and "laptop stolen" in log and "join token" in log, log[-2000:]
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        work = {t.name: t for t in status.tasks}["work"]
        assert work.agent == "b" and work.attempts == 2, work
        assert [(h.attempt, h.agent, h.state) for h in work.history] == [(1, "a", "lost"), (2, "b", "succeeded")]
        assert "revoked" in work.history[0].error, work.history[0]
        assert b.alive()

        # Twice: idempotent, and said so; a name never seen may be revoked too.
        again = _cli(cluster, "root", "admin", "revoke", "agent", "a")
        assert again.returncode == 0 and "already revoked" in again.stdout and "laptop stolen" in again.stdout, again
        unseen = _json(_cli(cluster, "root", "admin", "revoke", "agent", "never-seen", "--json"))
        assert not unseen["known"] and not unseen["already_revoked"] and unseen["leases_requeued"] == 0
        human = _cli(cluster, "root", "admin", "revoke", "agent", "spare")
        assert human.returncode == 0 and "no agent of this name has ever registered" in human.stdout, human

    agents = _agents(cluster)
    assert agents["a"]["revoked"] and agents["a"]["revoked_by"].endswith("/admin/root")
    assert not agents["b"]["revoked"]
    table = _cli(cluster, "root", "admin", "agents")
    assert any(line.split()[:2] == ["a", "revoked"] for line in table.stdout.splitlines()), table.stdout

    # The deny-list survives a restart of the scheduler on the same state dir.
    assert cluster.scheduler is not None
    cluster.scheduler.stop()
    cluster.start_scheduler()
    refused = _agent_call_refused(cluster, "a")
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.details().startswith("agent a was revoked at "), refused.details()
    assert (REVOKED_METADATA_KEY, "a") in tuple(refused.trailing_metadata() or ())
    a = cluster.restart_agent("a", kill=False)
    assert a.wait(60) == EXIT_REVOKED  # refused at Register: no reconnect loop
    cluster.wait_agents(["b"])

    records = _json(_cli(cluster, "root", "admin", "audit", "--json"))
    revokes = [r for r in records if r["action"] == "revoke"]
    assert [r["target"] for r in revokes] == ["a", "a", "never-seen", "spare"], revokes
    assert all(r["identity"].endswith("/admin/root") and r["outcome"] == "ok" for r in revokes), revokes
    assert "laptop stolen" in revokes[0]["detail"] and f"{run_id}/work#1" in revokes[0]["detail"], revokes[0]
    assert "already revoked" in revokes[1]["detail"], revokes[1]
    assert not any(r["identity"].endswith("/submitter/alice") for r in revokes)
    verify = _cli(cluster, "root", "admin", "audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify


def test_an_open_stream_and_a_long_poll_end_at_once_with_the_refusal(cluster: LocalCluster) -> None:
    """A quiet agent (it sends nothing more up its stream, its long-poll waits 30 s) learns of its
    revocation right away: both calls end UNAUTHENTICATED with the revocation's metadata key."""
    import threading
    import time

    from tests.helpers.raw_agent import RawAgent, Stream

    cluster.start_scheduler()
    with RawAgent(cluster, "quiet") as streaming, RawAgent(cluster, "poller") as polling:
        streaming.register()
        stream = Stream(streaming, credits=1)
        polling.register()
        polled: list[BaseException] = []

        def poll() -> None:
            try:
                polling.poll(wait_s=30.0)
            except grpc.RpcError as exc:
                polled.append(exc)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        wait_for(lambda: {"quiet", "poller"} <= {a for a, v in _agents(cluster).items() if v["state"] == "ready"},
                 30, "both to be connected")
        t0 = time.monotonic()
        for name in ("quiet", "poller"):
            assert _json(_cli(cluster, "root", "admin", "revoke", "agent", name, "--json"))["known"]
        assert stream.wait_for(lambda item: item == grpc.StatusCode.UNAUTHENTICATED, 10)
        poller.join(10)
        assert time.monotonic() - t0 < 15  # not the poll's 30 s
        [exc] = polled
        assert isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert (REVOKED_METADATA_KEY, "poller") in tuple(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert stream.call.details().startswith("agent quiet was revoked at ")
        assert (REVOKED_METADATA_KEY, "quiet") in tuple(stream.call.trailing_metadata() or ())
        stream.close()
