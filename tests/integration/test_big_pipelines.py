"""Fault 2 of issue 7: one submitter cannot stall everyone.

A plan of 150,000 tasks once held the scheduler's event loop for about 20 s: health
checks timed out, and an unrelated task on another agent lost its lease and was
killed. Now a pipeline has a bounded size (max_pipeline_tasks, max_pipeline_bytes,
refused with INVALID_ARGUMENT naming the limit, on Plan, Submit and SubmitAndWatch),
and while the largest allowed pipeline is planned and submitted against a real
scheduler, its health service answers within a second and no other lease expires.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from outrider.errors import InvalidArgument, ResourceExhausted
from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline
from outrider.v1 import common_pb2, control_pb2
from scheduler.server import SchedulerConfig

pytestmark = pytest.mark.timeout(240)


def _spec(n: int, name: str = "big", argv: str = "true") -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name=name, tasks=[
        common_pb2.TaskSpec(name=f"t{i}", argv=[argv], shell=True, requires=common_pb2.Requirements(cpus=1))
        for i in range(n)])


def test_pipelines_over_the_limits_are_refused_on_every_road(cluster: LocalCluster) -> None:
    cluster.start_scheduler(["--max-pipeline-tasks", "50", "--max-pipeline-bytes", "8KiB"])
    with cluster.client() as client:
        too_many = _spec(51)
        assert too_many.ByteSize() < 8 * 1024
        too_big = _spec(3, argv="x" * 9000)
        for spec, limit in ((too_many, "max_pipeline_tasks"), (too_big, "max_pipeline_bytes")):
            for call in (client.plan, client.submit, lambda s: next(client.submit_and_watch(s))):
                with pytest.raises(InvalidArgument) as info:
                    call(spec)
                assert limit in str(info.value), str(info.value)
        # Far over the limit: refused by gRPC before the request is even parsed.
        with pytest.raises(ResourceExhausted):
            client.submit(_spec(1, argv="x" * (17 << 20)))
        assert client.list_runs() == []
        # At the limit: accepted.
        assert client.submit(_spec(50)).run_id


def _probe(cluster: LocalCluster, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    ca, cert, key = cluster.issue("submitter", "prober")
    stop, out = tmp_path / "probe.stop", tmp_path / "probe.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.health_probe", cluster.address, str(ca),
                             str(cert), str(key), str(stop), str(out)], env=cluster.env)
    return proc, stop, out


@pytest.mark.slow
def test_the_largest_allowed_pipeline_starves_no_one(cluster: LocalCluster, tmp_path: Path) -> None:
    n = SchedulerConfig.max_pipeline_tasks  # the default limit: the largest pipeline allowed
    cluster.start_scheduler()
    cluster.add_agent("busy", labels={"pool": "busy"}, slots=1)
    cluster.wait_agents(["busy"])
    other = Pipeline("unrelated")
    other.task("long", run="exec sleep 120", requires={"labels": {"pool": "busy"}})
    big = _spec(n)
    assert big.ByteSize() <= SchedulerConfig.max_pipeline_bytes
    with cluster.client() as client:
        other_id = client.submit(other).run_id
        wait_for(lambda: client.get_run(other_id).tasks[0].state == "running", 30, "the unrelated task to run")
        proc, stop, out = _probe(cluster, tmp_path)
        try:
            wait_for(lambda: client.list_runs(), 10, "the prober to start")  # a round trip for it to connect
            t0 = time.monotonic()
            plan = client._call(client.control.Plan, control_pb2.PlanRequest(pipeline=big), timeout=180)
            planned = time.monotonic() - t0
            assert len(plan.tasks) == n
            res = client._call(client.control.Submit, control_pb2.SubmitRequest(pipeline=big), timeout=180)
            submitted = time.monotonic() - t0 - planned
            assert res.run_id
        finally:
            stop.touch()
            proc.wait(timeout=30)
        figures = json.loads(out.read_text())
        print(f"\n{n} tasks: plan {planned:.1f}s, submit {submitted:.1f}s; health: {figures['n']} checks, "
              f"slowest {figures['max_s'] * 1000:.0f}ms, failures {figures['failures'][:3]}")
        assert figures["n"] > 10 and figures["failures"] == []
        assert figures["max_s"] < 1.0
        # The unrelated task kept its lease all along: still its first attempt, never lost.
        task = client.get_run(other_id).tasks[0]
        assert (task.state, task.attempts) == ("running", 1), task
        assert client.get_run(res.run_id).state == "running"
        try:
            client.cancel(other_id)
        except grpc.RpcError:
            pass
