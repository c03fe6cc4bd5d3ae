"""The unary long-poll (PollTasks), for agents that cannot hold a stream."""
from __future__ import annotations

import grpc
import pytest

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline
from outrider.tls import channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, common_pb2

pytestmark = pytest.mark.timeout(60)


def test_long_poll_gets_work_and_completes_it(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    ca, cert, key = cluster.issue("agent", "poller")
    channel = grpc.secure_channel(cluster.address, channel_credentials(ca, cert, key))
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        caps = common_pb2.Capabilities(cpu_cores=2, memory_bytes=2**30, slots=1, labels={"kind": "poller"})
        stub.Register(agent_pb2.RegisterRequest(capabilities=caps), timeout=10)
        # Nothing to do yet: the poll comes back empty after its wait.
        empty = stub.PollTasks(agent_pb2.PollRequest(free_slots=1, wait_s=0.2), timeout=10)
        assert list(empty.assignments) == []

        p = Pipeline("polled")
        p.task("t", run="true", requires={"labels": {"kind": "poller"}})
        with cluster.client() as client:
            run_id = client.submit(p).run_id
            got = stub.PollTasks(agent_pb2.PollRequest(free_slots=1, wait_s=10), timeout=20)
            (a,) = got.assignments
            assert (a.lease.run_id, a.lease.task, a.lease.epoch) == (run_id, "t", 1)
            done = agent_pb2.Completion(lease=a.lease, outcome="succeeded", exit_code=0)
            # The completion rides on the next poll and is acknowledged in its answer.
            reply = stub.PollTasks(agent_pb2.PollRequest(free_slots=1, wait_s=0.1, completions=[done]), timeout=10)
            assert [(ack.lease.task, ack.code) for ack in reply.acks] == [("t", 0)]
            assert client.wait(run_id, timeout=20).state == "succeeded"
            # A second report of the same attempt is idempotent; a stale epoch is refused.
            again = stub.PollTasks(agent_pb2.PollRequest(completions=[done], wait_s=0), timeout=10)
            assert [ack.code for ack in again.acks] == [0]
            stale = agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id=run_id, task="t", epoch=7),
                                         outcome="succeeded")
            refused = stub.PollTasks(agent_pb2.PollRequest(completions=[stale], wait_s=0), timeout=10)
            assert [ack.code for ack in refused.acks] == [grpc.StatusCode.ABORTED.value[0]]
    finally:
        channel.close()
