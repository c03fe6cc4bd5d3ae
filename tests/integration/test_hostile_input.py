"""Issue 8, items 5 and 7, against a real scheduler process: every bad input gets a clear,
bounded error naming the problem and changes nothing; no request ends or stalls the scheduler.

* names longer than the limit are refused by the client and by the scheduler;
* a long bad value yields its real status code and a short message (not RESOURCE_EXHAUSTED
  because the message overflowed gRPC's 16 KiB metadata limit);
* bytes that do not parse as the request's message type are INVALID_ARGUMENT, for unary and
  streaming RPCs alike;
* a work stream with negative or absurd credits, or a heartbeat with bad capabilities, ends
  with INVALID_ARGUMENT naming the field, and changes nothing;
* a log chunk that cannot be stored neither ends nor stalls the agent's work stream, and
  GetLogs answers a short INTERNAL without the server's paths.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.errors import OutriderError
from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline, SpecError
from outrider.tls import channel_credentials
from outrider.v1 import agent_pb2, common_pb2, control_pb2, control_pb2_grpc
from tests.helpers.raw_agent import RawAgent, Stream, code_of

pytestmark = pytest.mark.timeout(120)

RPC_TIMEOUT = 10
MAX_MESSAGE = 1024  # scheduler.api.status.MAX_MESSAGE: what a client may be sent
GARBAGE = b"\xff\xff\xff\xff\x0f"  # a varint that never ends: no message parses from it


@pytest.fixture
def scheduler(cluster: LocalCluster) -> LocalCluster:
    cluster.start_scheduler()
    return cluster


@pytest.fixture
def channel(cluster: LocalCluster) -> Iterator[grpc.Channel]:
    ca, cert, key = cluster.issue("submitter", "hostile")
    ch = grpc.secure_channel(cluster.address, channel_credentials(ca, cert, key))
    yield ch
    ch.close()


def _error(fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, timeout=RPC_TIMEOUT)  # type: ignore[operator]
        if isinstance(result, Iterator):
            list(result)
    return info.value


def _serving(cluster: LocalCluster) -> bool:
    assert cluster.scheduler is not None and cluster.scheduler.alive()
    with cluster.client("prober") as client:
        stub = health_pb2_grpc.HealthStub(client._channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def _spec(name: str = "p", task: str = "t") -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name=name, tasks=[common_pb2.TaskSpec(name=task, argv=["true"])])


def test_long_names_are_refused_by_the_client_and_the_scheduler(scheduler: LocalCluster,
                                                                channel: grpc.Channel) -> None:
    stub = control_pb2_grpc.ControlServiceStub(channel)
    for n in (300, 10_000):
        for call, req in ((stub.Submit, control_pb2.SubmitRequest(pipeline=_spec(task="t" * n))),
                          (stub.Plan, control_pb2.PlanRequest(pipeline=_spec(task="t" * n)))):
            err = _error(call, req)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert "tasks[0].name" in err.details() and f"{n} characters" in err.details(), err.details()
            assert len(err.details()) <= MAX_MESSAGE
    with pytest.raises(SpecError, match="300 characters"):
        Pipeline("p").task("t" * 300, run="true")
    with scheduler.client() as client:
        assert client.list_runs() == []
    assert _serving(scheduler)


def test_a_long_bad_value_gets_its_real_code_and_a_bounded_message(scheduler: LocalCluster,
                                                                   channel: grpc.Channel) -> None:
    stub = control_pb2_grpc.ControlServiceStub(channel)
    err = _error(stub.Submit, control_pb2.SubmitRequest(pipeline=_spec(name="x y" * 7000)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert len(err.details()) <= MAX_MESSAGE and "pipeline name" in err.details(), err.details()
    many = common_pb2.PipelineSpec(name="p", tasks=[common_pb2.TaskSpec(name=f"bad name {i} " + "x" * 100,
                                                                        argv=["true"]) for i in range(300)])
    err = _error(stub.Submit, control_pb2.SubmitRequest(pipeline=many))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert len(err.details()) <= MAX_MESSAGE and "more problem" in err.details(), err.details()
    err = _error(stub.GetRun, control_pb2.GetRunRequest(run_id="r" * 20_000))
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) <= MAX_MESSAGE, err
    err = _error(stub.GetLogs, control_pb2.GetLogsRequest(run_id="r" * 20_000, task="t"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) <= MAX_MESSAGE, err
    assert _serving(scheduler)


def test_undecodable_requests_are_invalid_argument(scheduler: LocalCluster, channel: grpc.Channel) -> None:
    raw_submit = channel.unary_unary("/outrider.v1.ControlService/Submit")
    err = _error(raw_submit, GARBAGE)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details() == "request is not a valid outrider.v1.SubmitRequest message"
    raw_logs = channel.unary_stream("/outrider.v1.ControlService/GetLogs")
    err = _error(raw_logs, GARBAGE)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "outrider.v1.GetLogsRequest" in err.details()
    raw_upload = channel.stream_unary("/outrider.v1.ArtifactService/Upload")
    err = _error(raw_upload, iter([GARBAGE]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "outrider.v1.UploadChunk" in err.details()
    with RawAgent(scheduler, "garbler") as agent:
        agent.register()
        raw_connect = agent.channel.stream_stream("/outrider.v1.AgentService/Connect")
        good = agent_pb2.AgentMessage(credits=1).SerializeToString()
        err = _error(raw_connect, iter([good, GARBAGE]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "outrider.v1.AgentMessage" in err.details()
        # Still an agent in good standing: it registers and works again.
        agent.register()
    assert _serving(scheduler)
    with scheduler.client() as client:
        assert client.list_runs() == []


def _slots(cluster: LocalCluster, name: str) -> int:
    with cluster.client() as client:
        (info,) = [a for a in client.list_agents() if a.name == name]
    return int(info.capabilities.slots)


def test_bad_work_stream_values_end_the_stream_naming_the_field(scheduler: LocalCluster) -> None:
    with RawAgent(scheduler, "rogue", slots=2) as agent:
        agent.register()
        for credits in (-5, 2**31 - 1):
            s = Stream(agent, credits=credits)
            code = s.wait_for(lambda m: isinstance(m, grpc.StatusCode))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, code
            assert "credits" in s.call.details(), s.call.details()
            s.close()
            agent.register()
        bad_caps = common_pb2.Capabilities(cpu_cores=2, memory_bytes=2**30, slots=-7)
        # The unary heartbeat and the one on the work stream: the same checks as Register's.
        register = code_of(agent.stub.Register, agent_pb2.RegisterRequest(capabilities=bad_caps,
                                                                           client_time=time.time()))
        assert register == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            agent.heartbeat(capabilities=bad_caps)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "capabilities.slots" in (info.value.details() or "")
        s = Stream(agent, credits=1)
        s.send(agent_pb2.AgentMessage(heartbeat=agent_pb2.HeartbeatRequest(client_time=time.time(),
                                                                             capabilities=bad_caps)))
        code = s.wait_for(lambda m: isinstance(m, grpc.StatusCode))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, code
        assert "heartbeat.capabilities.slots" in s.call.details(), s.call.details()
        s.close()
        assert _slots(scheduler, "rogue") == 2
    assert _serving(scheduler)


def test_a_log_that_cannot_be_stored_neither_ends_nor_stalls_the_work_stream(two_agents: LocalCluster) -> None:
    """The log file of one task cannot be made (as with a name too long for the file system):
    its chunks are dropped with a warning, the agent's other tasks go on, GetLogs is INTERNAL."""
    logs_root = two_agents.root / "scheduler" / "logs"
    blocked = Pipeline("blocked")
    blocked.task("noisy", run="sleep 2; for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done",
                 requires={"labels": {"tier": "a"}})
    fine = Pipeline("fine")
    fine.task("chatty", run="sleep 2.5; for i in 1 2 3; do echo ok $i; sleep 0.3; done",
              requires={"labels": {"tier": "a"}})
    with two_agents.client() as client:
        run_blocked = client.submit(blocked).run_id
        (logs_root / run_blocked).write_text("not a directory: no log file can be made under it")
        run_fine = client.submit(fine).run_id
        assert client.wait(run_blocked, timeout=60).state == "succeeded"
        assert client.wait(run_fine, timeout=60).state == "succeeded"
        got = wait_for(lambda: (b"".join(line.data for line in client.logs(run_fine, "chatty"))
                                .count(b"ok ") == 3 or None), 10, "the fine task's logs")
        assert got
        with pytest.raises(OutriderError) as info:
            list(client.logs(run_blocked, "noisy"))
        text = str(info.value)  # the client names the status where it has no class for it
        assert text.startswith("INTERNAL: "), text
        assert str(logs_root) not in text and "Error" not in text and "noisy" in text and len(text) < 300, text
        # A normal pipeline still runs on both agents.
        again = Pipeline("again")
        again.task("x", run="echo hi", requires={"labels": {"tier": "a"}})
        again.task("y", run="echo hi", requires={"labels": {"tier": "b"}})
        assert client.wait(client.submit(again).run_id, timeout=60).state == "succeeded"
    assert two_agents.scheduler is not None
    tail = two_agents.scheduler.tail(400)
    assert tail.count("work stream of a ended") == 0 and tail.count("not stored") == 1, tail
