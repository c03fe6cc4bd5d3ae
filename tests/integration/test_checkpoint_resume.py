"""Checkpoints, the scheduler's side, against a real scheduler process.

An attempt's checkpoints are accepted only from its current lease, only once their
bytes are in the artifact store, and only when newer; when its agent is lost, the
next attempt (on another agent) is told to resume from the latest accepted one, and
``status --json`` says which checkpoint it resumed from. A zombie's late checkpoint
is refused, and a checkpoint's bytes stay in its task's residency zones.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.v1 import agent_pb2, artifact_pb2, common_pb2
from tests.helpers.raw_agent import RawAgent, Stream, code_of

pytestmark = pytest.mark.timeout(90)


def _report(agent: RawAgent, lease: common_pb2.LeaseRef, digest: str, seq: int, size: int = 10) -> grpc.StatusCode:
    cp = common_pb2.Checkpoint(lease=lease, digest=digest, size=size, kind="file", seq=seq, created_at=time.time())
    return code_of(agent.stub.ReportCheckpoint, agent_pb2.ReportCheckpointRequest(checkpoint=cp))


def _download_code(agent: RawAgent, digest: str) -> grpc.StatusCode:
    try:
        b"".join(c.data for c in agent.artifacts.Download(artifact_pb2.DownloadRequest(digest=digest), timeout=10))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _status_json(cluster: LocalCluster, run_id: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, "-m", "outrider.cli", "status", run_id, "--json"], env=cluster.client_env(),
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_a_lost_agents_task_resumes_elsewhere_from_the_last_accepted_checkpoint(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    first = RawAgent(cluster, "first", labels={"pool": "ck"}, instance_id="f")
    second = RawAgent(cluster, "second", labels={"pool": "ck"}, instance_id="s")
    try:
        first.register()
        second.register()
        p = Pipeline("trains")
        p.task("train", run="true", requires={"labels": {"pool": "ck"}})
        with cluster.client() as client:
            run_id = client.submit(p).run_id
            a = first.take_one()
            assert a.lease.epoch == 1 and not a.HasField("resume_from")
            alive = first.keep_alive([a.lease])
            d1, d2 = first.upload(b"epoch 1 weights"), first.upload(b"epoch 2 weights")
            never = "0" * 64
            assert _report(first, a.lease, never, 1) == grpc.StatusCode.FAILED_PRECONDITION  # bytes not uploaded
            assert _report(first, a.lease, d1, 1) == grpc.StatusCode.OK
            future = common_pb2.LeaseRef(run_id=run_id, task="train", epoch=2)
            assert _report(first, future, d2, 2) == grpc.StatusCode.ABORTED
            assert _report(second, a.lease, d2, 2) == grpc.StatusCode.ABORTED  # not the holder
            # The second checkpoint goes up the work stream and is acked down it.
            stream = Stream(first)
            stream.send(agent_pb2.AgentMessage(checkpoints=[common_pb2.Checkpoint(
                lease=a.lease, digest=d2, size=15, kind="file", seq=2, created_at=time.time())]))
            ack = stream.wait_for(lambda m: isinstance(m, agent_pb2.SchedulerMessage) and m.checkpoint_acks)
            assert [(c.seq, c.code) for c in ack.checkpoint_acks] == [(2, 0)]
            assert _report(first, a.lease, d1, 1) == grpc.StatusCode.OK  # older: answered, changes nothing
            shown = _status_json(cluster, run_id)["tasks"]["train"]
            assert (shown["checkpoint"]["digest"], shown["checkpoint"]["seq"]) == (d2, 2)
            # The first agent is lost (no more heartbeats): its lease expires, the task resumes
            # on the second agent from the latest checkpoint.
            stream.close()
            alive.set()
            b = second.take_one(deadline_s=30)
            assert b.lease.epoch == 2
            assert (b.resume_from.digest, b.resume_from.lease.epoch, b.resume_from.seq) == (d2, 1, 2)
            assert _download_code(second, d2) == grpc.StatusCode.OK
            # The zombie's late checkpoint is refused: it can never overwrite the new attempt's progress.
            d3 = first.upload(b"epoch 3 weights, from a zombie")
            assert _report(first, a.lease, d3, 3) == grpc.StatusCode.ABORTED
            shown = _status_json(cluster, run_id)["tasks"]["train"]
            assert shown["resumed_from"] == {**shown["resumed_from"], "digest": d2, "epoch": 1, "seq": 2}
            assert [(h["attempt"], h["agent"], h["state"]) for h in shown["history"]] == [
                (1, "first", "lost"), (2, "second", "running")]
            assert "lease expired" in shown["history"][0]["error"]
            assert second.complete(b.lease) == grpc.StatusCode.OK
            assert client.wait(run_id, timeout=30).state == "succeeded"
            text = subprocess.run([sys.executable, "-m", "outrider.cli", "status", run_id], env=cluster.client_env(),
                                  capture_output=True, text=True, timeout=30, check=True).stdout
            assert "attempt 1 on first lost" in text and "resumed from checkpoint 2 of attempt 1" in text
    finally:
        first.close()
        second.close()


def test_checkpoint_bytes_stay_in_their_tasks_residency(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    eu = RawAgent(cluster, "eu-1", labels={"pool": "r"}, instance_id="eu")
    us = RawAgent(cluster, "us-1", labels={"pool": "r"}, instance_id="us")
    eu.caps.zones.append("eu")
    us.caps.zones.append("us")
    try:
        eu.register()
        us.register()
        p = Pipeline("resident")
        p.task("t", run="true", requires={"labels": {"pool": "r"}, "residency": ["eu"]})
        with cluster.client() as client:
            client.submit(p)
            a = eu.take_one()
            eu.keep_alive([a.lease])
            digest = eu.upload(b"personal data, partly processed")
            assert _report(eu, a.lease, digest, 1) == grpc.StatusCode.OK
            wait_for(lambda: _download_code(us, digest) == grpc.StatusCode.PERMISSION_DENIED, 10,
                     "the checkpoint to be fenced to its zones")
            assert _download_code(eu, digest) == grpc.StatusCode.OK
    finally:
        eu.close()
        us.close()
